import json

import pytest

from espnet_omni_avsr.bin import score as score_cli
from espnet_omni_avsr.scoring.sclite import (
    ScoringError,
    find_sclite,
    normalize_text,
    parse_sclite_result,
    sclite_agrees,
    score,
    trn_line,
)

needs_sclite = pytest.mark.skipif(find_sclite() is None, reason="sclite not installed (apt-get install sctk)")

REF = {
    "spk1-u1": "THE CAT SAT ON THE MAT",        # 6 words
    "spk1-u2": "HELLO THERE WORLD",             # 3 words
    "spk2-u3": "DON'T STOP NOW",                # 3 words
}
# u1: CAT -> bat (1 sub), ON deleted (1 del), "now" inserted (1 ins); u2, u3 correct.
HYP = {
    "spk1-u1": "the bat sat the mat now",
    "spk1-u2": "Hello, there world!",
    "spk2-u3": "don’t stop now.",
}


def _write(path, mapping):
    path.write_text("".join(f"{k} {v}\n" for k, v in mapping.items()), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "dump" / "test"
    d.mkdir(parents=True)
    _write(d / "text", REF)
    _write(d / "utt2spk", {u: u.split("-")[0] for u in REF})
    _write(d / "utt2dur", {"spk1-u1": "2.0", "spk1-u2": "1.5", "spk2-u3": "0.5"})
    dec = tmp_path / "exp" / "m" / "decode_greedy" / "test" / "avsr"
    dec.mkdir(parents=True)
    return d, dec


def test_normalize_text():
    assert normalize_text("  Hello,   World!  Don’t  stop... ") == "hello world don't stop"
    assert normalize_text("TWENTY-ONE (approx.)") == "twenty one approx"
    assert normalize_text("$3 + 50%") == "$3 + 50"  # symbols (S*) stay; % is punctuation (Po)
    assert normalize_text("") == ""


def test_trn_format():
    assert trn_line("the cat", "spk1", "spk1-u1") == "the cat\t(spk1-spk1-u1)"
    with pytest.raises(ScoringError, match="parenthesis"):
        trn_line("x", "spk", "bad(id)")


@needs_sclite
def test_known_example_sclite_and_jiwer(data):
    d, dec = data
    _write(dec / "text", HYP)
    _write(dec / "llm_tokens", {"spk1-u1": 50, "spk1-u2": 37, "spk2-u3": 13})
    s = score(d / "text", dec / "text", dec / "score_wer")
    assert s["scorer"] == "sclite"
    assert s["num_words"] == 12 and s["num_utts"] == 3
    c = s["counts"]
    assert (c["sub"], c["del"], c["ins"], c["err"], c["corr"], c["sent_err"]) == (1, 1, 1, 3, 10, 1)
    assert s["wer"] == pytest.approx(100 * 3 / 12, abs=1e-4)
    assert s["jiwer_wer"] == pytest.approx(25.0, abs=1e-4)
    assert s["percent"]["err"] == 25.0 and s["percent"]["sent_err"] == pytest.approx(33.3)
    assert s["missing_hypotheses"] == []
    assert s["llm_tokens"]["per_second"] == pytest.approx(100 / 4.0)
    ref_trn = (dec / "score_wer" / "ref.trn").read_text().splitlines()
    hyp_trn = (dec / "score_wer" / "hyp.trn").read_text().splitlines()
    assert ref_trn[0] == "the cat sat on the mat\t(spk1-spk1-u1)"
    assert hyp_trn[2] == "don't stop now\t(spk2-spk2-u3)"
    assert json.loads((dec / "score_wer" / "summary.json").read_text())["wer"] == s["wer"]
    assert "Sum/Avg" in (dec / "score_wer" / "result.txt").read_text()


@needs_sclite
def test_sclite_may_count_more_edits_than_jiwer(tmp_path, caplog):
    """sclite's weighted alignment (sub 4, ins/del 3) takes 11 edits here where 10 suffice (a
    hypothesis of the open-English recipe at -5 dB): scored with sclite's count and a warning."""
    ref = {"spk1-u1": "ours is a world of nuclear giants and ethical infants"}
    hyp = {"spk1-u1": "i am a stranger who is a lover of the world"}
    s = score(_write(tmp_path / "ref", ref), _write(tmp_path / "hyp", hyp), tmp_path / "out")
    assert s["counts"]["err"] == 11 and s["jiwer_wer"] == pytest.approx(100.0)
    assert s["wer"] == pytest.approx(110.0)
    assert "weighted alignment" in caplog.text


def test_sclite_agrees_rule():
    def c(sub, dele, ins):
        return {"sub": sub, "del": dele, "ins": ins, "err": sub + dele + ins}

    assert sclite_agrees(c(1, 1, 1), c(1, 1, 1))
    assert sclite_agrees(c(2, 3, 6), c(10, 0, 0))  # 11 edits at cost 35 vs 10 edits at cost 40
    assert not sclite_agrees(c(9, 0, 0), c(10, 0, 0))  # fewer edits than the minimum
    assert not sclite_agrees(c(0, 8, 8), c(10, 0, 0))  # cost 48 > 40: not the weighted optimum


@needs_sclite
def test_missing_hypothesis_is_all_deletions(data, caplog):
    d, dec = data
    _write(dec / "text", {k: v for k, v in HYP.items() if k != "spk1-u2"})
    s = score(d / "text", dec / "text", dec / "score_wer")
    assert s["missing_hypotheses"] == ["spk1-u2"]
    assert s["counts"]["del"] == 1 + 3 and s["counts"]["err"] == 6
    assert s["wer"] == pytest.approx(50.0) and s["jiwer_wer"] == pytest.approx(50.0)
    assert "spk1-u2" in caplog.text
    assert "\t(spk1-spk1-u2)" in (dec / "score_wer" / "hyp.trn").read_text().splitlines()


def test_jiwer_fallback_and_missing_sclite(data):
    d, dec = data
    _write(dec / "text", HYP)
    with pytest.raises(ScoringError, match="apt-get install sctk"):
        score(d / "text", dec / "text", dec / "score_wer", sclite="/nonexistent/sclite")
    s = score(d / "text", dec / "text", dec / "score_wer", sclite="/nonexistent/sclite", allow_jiwer_fallback=True)
    assert s["scorer"] == "jiwer" and s["wer"] == pytest.approx(25.0)
    assert (s["counts"]["sub"], s["counts"]["del"], s["counts"]["ins"]) == (1, 1, 1)


def test_bad_inputs(data):
    d, dec = data
    _write(dec / "text", dict(HYP, **{"spk9-u9": "extra"}))
    with pytest.raises(ScoringError, match="spk9-u9"):
        score(d / "text", dec / "text", dec / "score_wer", allow_jiwer_fallback=True)
    (dec / "text").write_text("spk1-u1 a\nspk1-u1 b\n")
    with pytest.raises(ScoringError, match="duplicate"):
        score(d / "text", dec / "text", dec / "score_wer", allow_jiwer_fallback=True)


def test_parse_sclite_result_rejects_other_text():
    with pytest.raises(ScoringError, match="Sum"):
        parse_sclite_result("nothing here")


def test_cli(data, capsys):
    d, dec = data
    _write(dec / "text", HYP)
    args = ["--ref", str(d / "text"), "--hyp", str(dec / "text"), "--out_dir", str(dec / "score_wer")]
    if find_sclite() is None:
        args.append("--allow_jiwer_fallback")
    assert score_cli.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["wer"] == pytest.approx(25.0) and out["llm_tokens_per_second"] is None
    assert score_cli.main(["--ref", str(d / "nope"), "--hyp", str(dec / "text"), "--out_dir", str(dec)]) == 1
