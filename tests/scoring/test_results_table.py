import json

from espnet_omni_avsr.bin import make_results
import pytest

from espnet_omni_avsr.scoring.results_table import PLOT_NAME, collect_results, parse_condition, write_results

# (model, decode, test set, task, condition) -> (WER, tokens per second or None)
FAKE = {
    ("avsr_small", "greedy", "test", "asr", "clean"): (3.25, 12.5),
    ("avsr_small", "greedy", "test", "asr", "5"): (9.5, 12.5),
    ("avsr_small", "greedy", "test", "asr", "-5"): (41.75, 12.5),
    ("avsr_small", "greedy", "test", "avsr", "clean"): (2.5, 25.0),
    ("avsr_small", "greedy", "test", "avsr", "5"): (4.0, 25.0),
    ("avsr_small", "greedy", "test", "avsr", "-5"): (12.0, 25.0),
    ("avsr_small", "greedy", "test", "vsr", "clean"): (48.0, 12.5),
    ("avsr_small", "greedy", "valid", "avsr_a16v5", "clean"): (7.25, 8.25),
}


def _summary(wer, tok):
    words = 400
    return {
        "scorer": "sclite", "wer": wer, "jiwer_wer": wer, "num_utts": 40, "num_words": words,
        "counts": {"num_utts": 40, "num_words": words, "corr": 380, "sub": 10, "del": 5, "ins": 3, "err": 18,
                   "sent_err": 9},
        "percent": {"num_utts": 40, "num_words": words, "corr": 95.0, "sub": 2.5, "del": 1.2, "ins": 0.8,
                    "err": wer, "sent_err": 22.5},
        "missing_hypotheses": [],
        "llm_tokens": None if tok is None else {"total_tokens": int(tok * 100), "duration_s": 100.0,
                                                "per_second": tok},
    }


def _fake_exp(root, entries=FAKE, with_logs=True):
    exp = root / "exp"
    for (model, dec, dset, task, cond), (wer, tok) in entries.items():
        d = exp / model / f"decode_{dec}" / dset / task / f"snr_{cond}" / "score_wer"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(_summary(wer, tok)))
    if not with_logs:
        return exp
    m = exp / "avsr_small"
    (m / "config.yaml").write_text("model: avsr_llm\n")
    (m / "train.log").write_text(
        "Model summary:\n    Class Name: AVSRLLMModel\n    Total Number of model parameters: 170.12 M\n"
        "    Number of trainable parameters: 4.56 M (2.7%)\n    Size: 18.2 MB\n"
    )
    return exp


def test_parse_condition():
    assert parse_condition("snr_clean") is None
    assert parse_condition("snr_-5") == -5.0 and parse_condition("snr_2.5") == 2.5
    with pytest.raises(ValueError, match="snr_loud"):
        parse_condition("snr_loud")


def test_results_md_and_plot(tmp_path, caplog):
    exp = _fake_exp(tmp_path)
    stray = exp / "avsr_small" / "decode_greedy" / "test" / "asr" / "score_wer"
    stray.mkdir(parents=True)
    (stray / "summary.json").write_text(json.dumps(_summary(1.0, 1.0)))
    written = write_results(exp, tmp_path / "RESULTS.md")
    md = (tmp_path / "RESULTS.md").read_text()
    assert "left out" in caplog.text and written["num_results"] == len(FAKE)
    for key in ("torch", "espnet", "transformers", "date"):
        assert f"- {key}: `" in md
    assert "4.56 M (2.7%)" in md and "170.12 M" in md and str(exp / "avsr_small" / "config.yaml") in md
    assert "## test" in md and "## valid" in md
    assert "| model | decode | task | clean | 5 dB | -5 dB |" in md
    assert "| avsr_small | greedy | asr | 3.25 (12.5) | 9.50 (12.5) | 41.75 (12.5) |" in md
    assert "| avsr_small | greedy | avsr | 2.50 (25.0) | 4.00 (25.0) | 12.00 (25.0) |" in md
    assert "| avsr_small | greedy | vsr | 48.00 (12.5) | - | - |" in md
    assert "| avsr_small | greedy | avsr_a16v5 | 7.25 (8.2) |" in md
    assert "| test: avsr | 2.50 | 4.00 | 12.00 |" in md  # compact task x SNR table
    png = tmp_path / PLOT_NAME
    assert written["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({PLOT_NAME})" in md


def test_no_tokens_no_plot_and_cli(tmp_path, capsys):
    exp = _fake_exp(tmp_path, {("m", "beam15", "test", "asr", "clean"): (5.0, None)}, with_logs=False)
    assert make_results.main(["--exp_dir", str(exp), "--out", str(tmp_path / "out" / "RESULTS.md")]) == 0
    assert json.loads(capsys.readouterr().out.strip())["plot"] is None
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "| m | beam15 | asr | 5.00 (-) |" in md and not (tmp_path / "out" / PLOT_NAME).exists()
    assert "unknown (no train.log)" in md
    assert make_results.main(["--exp_dir", str(tmp_path / "missing")]) == 1


def test_tokens_per_second_from_dump_dir(tmp_path):
    exp = _fake_exp(tmp_path, {("m", "greedy", "test", "avsr", "-5"): (5.0, None)}, with_logs=False)
    (exp / "m" / "decode_greedy" / "test" / "avsr" / "snr_-5" / "llm_tokens").write_text("u1 30\nu2 45\n")
    dump = tmp_path / "dump" / "test_snr-5"
    dump.mkdir(parents=True)
    (dump / "utt2dur").write_text("u1 1.0\nu2 2.0\nu3 9.0\n")
    write_results(exp, tmp_path / "RESULTS.md", dump_dir=tmp_path / "dump")
    assert "| m | greedy | avsr | 5.00 (25.0) |" in (tmp_path / "RESULTS.md").read_text()


def test_collect_groups_by_model(tmp_path):
    models = collect_results(_fake_exp(tmp_path))
    assert list(models) == ["avsr_small"]
    snrs = sorted((r.snr is None, r.snr or 0) for r in models["avsr_small"].results if r.task == "asr")
    assert snrs == [(False, -5.0), (False, 5.0), (True, 0)]


def test_paper_layout_rows_models_columns_task_rates(tmp_path):
    from espnet_omni_avsr.scoring.results_table import paper_column

    assert paper_column("asr_a16")[1] == "ASR@16" and paper_column("avsr_a4v2")[1] == "AVSR(4,2)"
    assert paper_column("vsr")[1] == "VSR" and paper_column("odd-label")[1] == "odd-label"
    entries = {
        ("omni_s", "greedy", "test", "asr_a4", "clean"): (3.0, 12.5),
        ("omni_s", "greedy", "test", "asr_a16", "clean"): (5.5, 3.1),
        ("omni_s", "greedy", "test", "avsr_a4v2", "clean"): (2.75, 25.0),
        ("omni_s", "greedy", "test", "vsr_v5", "clean"): (40.0, 5.0),
        ("omni_s", "greedy", "test", "asr_a4", "0"): (30.0, 12.5),
        ("omni_t", "greedy", "test", "asr_a4", "clean"): (3.5, 12.5),
    }
    write_results(_fake_exp(tmp_path, entries, with_logs=False), tmp_path / "RESULTS.md", plot=False)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| model | ASR@4 | ASR@16 | VSR@5 | AVSR(4,2) |" in md  # tasks in paper order, rates ascending
    assert "| omni_s | 3.00 (12.5) | 5.50 (3.1) | 40.00 (5.0) | 2.75 (25.0) |" in md
    assert "| omni_t | 3.50 (12.5) | - | - | - |" in md


def test_hand_written_sections_survive_a_rewrite(tmp_path):
    from espnet_omni_avsr.scoring.results_table import HAND_WRITTEN

    exp, out = _fake_exp(tmp_path), tmp_path / "RESULTS.md"
    out.write_text(f"old generated table\n\n{HAND_WRITTEN}\n\n## Earlier runs\n| run | WER |\n")
    write_results(exp, out, plot=False)
    md = out.read_text()
    assert "old generated table" not in md and "| avsr_small | greedy | asr |" in md
    assert md.endswith(f"{HAND_WRITTEN}\n\n## Earlier runs\n| run | WER |\n")
    write_results(exp, out, plot=False)  # a second rewrite keeps the tail once
    again = out.read_text()
    assert again.count(HAND_WRITTEN) == 1 and again.endswith("## Earlier runs\n| run | WER |\n")
