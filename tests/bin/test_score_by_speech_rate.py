"""score_by_speech_rate: equal-count rate groups from the references, WER and tokens/s per group."""
from espnet_omni_avsr.bin.score_by_speech_rate import main, rate_groups
from espnet_omni_avsr.names import decode_dir


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}\n" for k, v in rows.items()))


def test_groups_split_by_words_per_second():
    refs = {"a": "one two", "b": "one two three four", "c": "one", "d": "one two three"}
    secs = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert rate_groups(refs, secs, 2) == [["c", "a"], ["d", "b"]]
    assert rate_groups(refs, secs, 1) == [["c", "a", "d", "b"]]


def test_table_per_group(tmp_path, capsys):
    dump, exp = tmp_path / "dump", tmp_path / "exp" / "m"
    refs = {"u1": "A B C", "u2": "A B C D E F", "u3": "A B", "u4": "A B C D E F G H"}
    _write(dump / "test" / "text", refs)
    _write(dump / "test" / "utt2num_frames", {u: 50 for u in refs})  # 2 s each
    out = tmp_path / decode_dir(str(exp), "greedy", "test", "avsr", None)
    _write(out / "text", {"u1": "a b c", "u2": "a b c d e f", "u3": "a x", "u4": "a b c d e f g h"})
    _write(out / "llm_tokens", {"u1": 6, "u2": 6, "u3": 6, "u4": 12})
    assert main(["--exp_dir", str(exp), "--inference_tag", "greedy", "--dump_dir", str(dump),
                 "--out", str(tmp_path / "t.md")]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| test")]
    # slower half: u3 (1 w/s, 1 error in 2 words), u1 (1.5 w/s): 1 / 5 words = 20 %; tokens 12 / 4 s
    assert rows[0].rstrip(" |").split(" | ")[4:8] == ["2", "1.25", "20.00", "3.0"]
    assert rows[1].rstrip(" |").split(" | ")[4:8] == ["2", "3.50", "0.00", "4.5"]
    assert (tmp_path / "t.md").read_text().count("| test") == 2


def test_missing_durations_are_named(tmp_path, capsys):
    dump, exp = tmp_path / "dump", tmp_path / "exp" / "m"
    _write(dump / "test" / "text", {"u1": "A"})
    out = tmp_path / decode_dir(str(exp), "greedy", "test", "avsr", None)
    _write(out / "text", {"u1": "a"})
    assert main(["--exp_dir", str(exp), "--inference_tag", "greedy", "--dump_dir", str(dump)]) == 1
    assert "neither utt2num_frames nor utt2dur" in capsys.readouterr().err
