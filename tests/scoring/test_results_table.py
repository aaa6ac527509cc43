import json
from pathlib import Path

from espnet_omni_avsr.bin import make_results
import pytest

from espnet_omni_avsr.scoring import results_table as rt
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


# ---- merging with the results of earlier runs (RESULTS.json) ----------------------------------------

# egs2/avgrid/avsr1/RESULTS.md as committed before RESULTS.json existed (the migration's input)
COMMITTED_MD = Path(__file__).resolve().parent / "data" / "results_md_without_record.md"
MODEL_B = {("omni_b", "greedy", "test", "asr", "clean"): (6.5, 12.5),
           ("omni_b", "greedy", "test", "asr", "5"): (11.0, 12.5)}
A_ASR_ROW = "| avsr_small | greedy | asr | 3.25 (12.5) | 9.50 (12.5) | 41.75 (12.5) |"


def _run(tmp_path, monkeypatch, name, entries, with_logs=False, **kw):
    """write_results of a fake exp dir tmp_path/<name>/exp into tmp_path/RESULTS.md, the environment's
    date and git commit being <name>."""
    monkeypatch.setattr(rt, "environment", lambda: {"date": f"{name} date", "git commit": f"{name}-commit"})
    exp = _fake_exp(tmp_path / name, entries, with_logs=with_logs)
    written = write_results(exp, tmp_path / "RESULTS.md", **kw)
    return written, (tmp_path / "RESULTS.md").read_text(), json.loads((tmp_path / "RESULTS.json").read_text())


def _model_line(md, tag):
    return next(line for line in md.splitlines() if line.startswith(f"- **{tag}**"))


def test_second_run_keeps_the_models_it_did_not_measure(tmp_path, monkeypatch):
    plotted = []
    plot = rt.plot_wer_vs_tokens
    monkeypatch.setattr(rt, "plot_wer_vs_tokens", lambda results, png: plotted.append(results) or plot(results, png))
    _run(tmp_path, monkeypatch, "run1", FAKE, with_logs=True)
    written, md, record = _run(tmp_path, monkeypatch, "run2", MODEL_B)
    assert written["measured_models"] == ["omni_b"] and written["kept_models"] == ["avsr_small"]
    assert written["num_results"] == len(FAKE) + len(MODEL_B)
    assert written["results_json"] == str(tmp_path / "RESULTS.json")
    assert A_ASR_ROW in md and "| avsr_small | greedy | avsr_a16v5 | 7.25 (8.2) |" in md and "## valid" in md
    assert "| omni_b | greedy | asr | 6.50 (12.5) | 11.00 (12.5) | - |" in md
    assert "- date: `run2 date`" in md and "- git commit: `run2-commit`" in md  # this run's environment
    assert "- avsr_small: date `run1 date`, git commit `run1-commit`" in md  # the kept model's own
    assert _model_line(md, "omni_b").endswith("; measured in this run")
    assert _model_line(md, "avsr_small").endswith(
        "4.56 M (2.7%) of 170.12 M (from `" + str(tmp_path / "run1" / "exp" / "avsr_small" / "train.log")
        + "`); kept from an earlier run (date `run1 date`, git commit `run1-commit`)")
    # the plot draws the kept model's points too
    assert {r.model for r in plotted[-1]} == {"avsr_small", "omni_b"} and (tmp_path / PLOT_NAME).is_file()
    # the record: this run's environment, each model with the environment of the run that measured it
    assert record["environment"]["date"] == "run2 date"
    models = {m["tag"]: m for m in record["models"]}
    assert models["avsr_small"]["kept"] and models["avsr_small"]["environment"]["date"] == "run1 date"
    assert not models["omni_b"]["kept"] and models["omni_b"]["environment"]["date"] == "run2 date"
    asr = next(r for r in models["avsr_small"]["results"] if r["task"] == "asr" and r["snr"] == -5)
    assert asr["wer"] == 41.75 and asr["tokens_per_second"] == 12.5 and asr["counts"]["sent_err"] == 9
    assert asr["percent"]["ins"] == 0.8 and asr["scorer"] == "sclite" and asr["missing_hypotheses"] == []
    assert asr["summary_json"].endswith("snr_-5/score_wer/summary.json")
    # a third run of B: A stays kept with its own (run1) environment
    _, md, _ = _run(tmp_path, monkeypatch, "run3", MODEL_B)
    assert A_ASR_ROW in md and "kept from an earlier run (date `run1 date`" in _model_line(md, "avsr_small")
    assert "- date: `run3 date`" in md


def test_record_rebuilds_the_objects(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, "run1", FAKE, with_logs=True, plot=False)
    env, models = rt.load_record(tmp_path / "RESULTS.json")
    original = collect_results(tmp_path / "run1" / "exp")["avsr_small"]
    m = models["avsr_small"]
    assert env["date"] == "run1 date" and m.environment == env and not m.kept
    assert (m.config, m.trainable, m.total, m.source) == (original.config, original.trainable, original.total,
                                                          original.source)
    by_key = {(r.test_set, r.task, r.snr): r for r in original.results}
    assert len(m.results) == len(by_key)
    for r in m.results:
        o = by_key[(r.test_set, r.task, r.snr)]
        assert (r.model, r.inference, r.wer, r.tokens_per_second, r.path) == (o.model, o.inference, o.wer,
                                                                            o.tokens_per_second, o.path)
        assert r.summary["counts"] == o.summary["counts"] and r.summary["percent"] == o.summary["percent"]
    assert rt.ModelInfo.from_dict(m.to_dict()).to_dict() == m.to_dict()
    # the markdown rendered from the record equals the one rendered from exp/
    assert rt.render_markdown(models, env, None) == rt.render_markdown({"avsr_small": original}, env, None)


def test_redecoding_a_model_replaces_all_its_rows(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, "run1", {**FAKE, **MODEL_B}, plot=False)
    again = {("avsr_small", "greedy", "test", "asr", "clean"): (2.0, 12.5),
             ("avsr_small", "greedy", "test", "avsr", "clean"): (1.5, 25.0)}
    written, md, record = _run(tmp_path, monkeypatch, "run2", again, plot=False)
    assert written["replaced_models"] == ["avsr_small"] and written["kept_models"] == ["omni_b"]
    assert "| avsr_small | greedy | asr | 2.00 (12.5) | - |" in md
    assert "| avsr_small | greedy | avsr | 1.50 (25.0) | - |" in md
    assert A_ASR_ROW not in md and "| avsr_small | greedy | vsr |" not in md and "## valid" not in md  # gone
    assert "| omni_b | greedy | asr | 6.50 (12.5) | 11.00 (12.5) |" in md
    assert _model_line(md, "avsr_small").endswith("; measured in this run")
    a = next(m for m in record["models"] if m["tag"] == "avsr_small")
    assert len(a["results"]) == 2 and a["environment"]["date"] == "run2 date"


def test_fresh_drops_earlier_results(tmp_path, monkeypatch, capsys):
    _run(tmp_path, monkeypatch, "run1", FAKE, plot=False)
    exp = _fake_exp(tmp_path / "run2", MODEL_B, with_logs=False)
    assert make_results.main(["--exp_dir", str(exp), "--out", str(tmp_path / "RESULTS.md"), "--fresh",
                              "--no_plot"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["kept_models"] == []
    md, record = (tmp_path / "RESULTS.md").read_text(), json.loads((tmp_path / "RESULTS.json").read_text())
    assert "avsr_small" not in md and [m["tag"] for m in record["models"]] == ["omni_b"]
    assert "kept from an earlier run" not in md and "Models kept from earlier runs" not in md


@pytest.mark.parametrize("break_it, message", [
    (lambda text: text[:-20], "not valid JSON"),
    (lambda text: json.dumps([1, 2]), "not a results record"),
    (lambda text: text.replace('"wer": 3.25', '"wrong": 3.25'),
     r"models\[0\] \(avsr_small\)\.results\[\d+\]: missing field 'wer'"),
    (lambda text: text.replace('"wer": 3.25', '"wer": "3.25"'), r"\.wer: expected int or float, got '3.25'"),
    (lambda text: text.replace('"snr": null,', "", 1), r"results\[0\]: missing field 'snr'"),
])
def test_malformed_record_is_an_error_naming_the_file(tmp_path, monkeypatch, caplog, break_it, message):
    _run(tmp_path, monkeypatch, "run1", FAKE, plot=False)
    record, out = tmp_path / "RESULTS.json", tmp_path / "RESULTS.md"
    record.write_text(break_it(record.read_text()))
    before = out.read_text()
    exp = _fake_exp(tmp_path / "run2", MODEL_B, with_logs=False)
    with pytest.raises(ValueError, match=message) as e:
        write_results(exp, out, plot=False)
    assert str(record) in str(e.value) and "--fresh" in str(e.value)
    assert out.read_text() == before  # nothing dropped, nothing written
    assert make_results.main(["--exp_dir", str(exp), "--out", str(out), "--no_plot"]) == 1
    assert str(record) in caplog.text


def test_migration_from_a_results_md_without_record_keeps_every_row(tmp_path, monkeypatch):
    """The committed RESULTS.md (no RESULTS.json): its generated tables are read back into records."""
    original = COMMITTED_MD.read_text(encoding="utf-8")
    (tmp_path / "RESULTS.md").write_text(original, encoding="utf-8")
    generated, tail = original.split(rt.HAND_WRITTEN)
    new = {("new_small", "greedy", "test", "asr_a4", "clean"): (3.0, 12.6)}
    written, md, record = _run(tmp_path, monkeypatch, "run2", new, plot=False)
    old_models = ["multitask_small", "omni_s_small", "omni_st_small", "omni_t_small"]
    assert written["kept_models"] == old_models and written["measured_models"] == ["new_small"]
    table_lines = [line for line in generated.splitlines() if line.startswith("|")]
    assert len(table_lines) > 100
    assert [line for line in table_lines if line not in md.splitlines()] == []  # every row, as it was
    assert "| new_small | greedy | asr_a4 | 3.00 (12.6) | - | - | - | - |" in md
    for line in generated.splitlines():
        if line.startswith("- **"):
            assert _model_line(md, line[4:line.index("**", 4)]) == (
                line + "; kept from an earlier run (date `2026-11-23 04:43:41 UTC`, git commit `1504272`); "
                + rt.MIGRATED)
    assert md.endswith(rt.HAND_WRITTEN + tail)
    models = {m["tag"]: m for m in record["models"]}
    assert sum(len(models[t]["results"]) for t in old_models) == 35
    assert models["omni_t_small"]["environment"]["torch"] == "2.13.0+cpu" and models["omni_t_small"]["kept"]
    row = next(r for r in models["multitask_small"]["results"] if r["task"] == "avsr_a4v2" and r["snr"] == -5)
    assert (row["wer"], row["tokens_per_second"], row["counts"], row["percent"]["ins"], row["scorer"],
            row["num_missing_hypotheses"], row["missing_hypotheses"], row["summary_json"]) == (
        25.5, 25.3, {"num_utts": 100, "num_words": 600}, 1.3, "sclite", 0, None, None)
    # the next rewrite reads RESULTS.json and writes the same file
    write_results(tmp_path / "run2" / "exp", tmp_path / "RESULTS.md", plot=False)  # environment still run2's
    assert (tmp_path / "RESULTS.md").read_text() == md and json.loads((tmp_path / "RESULTS.json").read_text()) == record


def test_migration_refuses_tables_it_cannot_read_back(tmp_path, monkeypatch):
    text = COMMITTED_MD.read_text(encoding="utf-8")
    row = "| omni_s_small | greedy | asr_a16 | clean | 100 | 600 | 89.5 | 9.3 | 1.2 | 0.2 | 10.7 | 48.0 | 0 | sclite |\n"
    assert row in text
    out = tmp_path / "RESULTS.md"
    out.write_text(text.replace(row, ""), encoding="utf-8")
    with pytest.raises(ValueError, match=r"RESULTS\.md: 1 decoded sets of the WER table are not in the sclite table"
                                         r".*--fresh"):
        _run(tmp_path, monkeypatch, "run2", MODEL_B, plot=False)
    assert out.read_text() == text.replace(row, "") and not (tmp_path / "RESULTS.json").exists()
    out.write_text(text.replace("| 3.33 (12.6) | 10.67 (3.3) |", "| 3.33 (12.6) | 10.70 (3.3) |"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"re-rendered .* differ"):  # the papers' table disagrees with the rows
        _run(tmp_path, monkeypatch, "run3", MODEL_B, plot=False)
