import os

import pytest

from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.prep.kaldi_dir import ItemRecord, KaldiDirError


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def make_dir(tmp_path, uids=("s1-a", "s1-b", "s2-a")):
    d = tmp_path / "d"
    d.mkdir(parents=True)
    kaldi_dir.write_table(str(d / "wav.scp"), {u: f"/x/{u}.wav" for u in uids})
    kaldi_dir.write_table(str(d / "text"), {u: f"HELLO {u.upper()}" for u in uids})
    utt2spk = {u: u.split("-")[0] for u in uids}
    kaldi_dir.write_table(str(d / "utt2spk"), utt2spk)
    kaldi_dir.write_spk2utt(str(d / "spk2utt"), utt2spk)
    return str(d)


def test_write_sorts_c_locale_and_reads_back(tmp_path):
    path = str(tmp_path / "text")
    table = {"b-2": "TWO WORDS", "B-1": "UPPER", "a-1": "ONE", "a_1": "UNDERSCORE"}
    kaldi_dir.write_table(path, table)
    lines = read(path).splitlines()
    assert [line.split()[0] for line in lines] == ["B-1", "a-1", "a_1", "b-2"]  # byte order, not locale
    assert kaldi_dir.read_table(path) == table
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_read_errors_name_file_and_line(tmp_path):
    path = str(tmp_path / "wav.scp")
    write(path, "u1 /a.wav\n\nu2 /b.wav\nu1 /c.wav\n")
    with pytest.raises(KaldiDirError, match=r"wav\.scp:4: id 'u1' is duplicated \(first on line 1\)"):
        kaldi_dir.read_table(path)
    write(path, "u1 /a.wav\nu2\n")
    with pytest.raises(KaldiDirError, match=r"wav\.scp:2: expected '<id> <value>', got only 'u2'"):
        kaldi_dir.read_table(path)
    write(path, "u1 1.5\nu2 abc\n")
    with pytest.raises(KaldiDirError, match=r"wav\.scp:2: value 'abc' of 'u2' is not a number"):
        kaldi_dir.read_float_table(path)
    write(path, "u1 3\nu2 4.5\n")
    with pytest.raises(KaldiDirError, match=r"wav\.scp:2: .* not an integer"):
        kaldi_dir.read_int_table(path)
    with pytest.raises(KaldiDirError, match="nope: file not found"):
        kaldi_dir.read_table(str(tmp_path / "nope"))


def test_write_rejects_bad_ids_and_values(tmp_path):
    path = str(tmp_path / "text")
    with pytest.raises(ValueError, match="'a b' is empty or holds whitespace"):
        kaldi_dir.write_table(path, {"a b": "X"})
    with pytest.raises(ValueError, match="line break"):
        kaldi_dir.write_table(path, {"a": "X\nY"})
    with pytest.raises(ValueError, match="the value of 'a' is empty"):
        kaldi_dir.write_table(path, {"a": " "})


def test_sort_consistency():
    kaldi_dir.check_sort_consistency({"spk1-a": "spk1", "spk2-a": "spk2", "spk10-a": "spk10"})
    # speaker "a-" puts its utterances ("a--1") before those of "a" ("a-1") although "a" < "a-"
    with pytest.raises(KaldiDirError, match=r"'a--1' \(speaker 'a-'\) sorts before 'a-1' \(speaker 'a'\)"):
        kaldi_dir.check_sort_consistency({"a-1": "a", "a--1": "a-"})


def test_spk2utt_round_trip_and_errors(tmp_path):
    d = make_dir(tmp_path)
    assert read(os.path.join(d, "spk2utt")) == "s1 s1-a s1-b\ns2 s2-a\n"
    assert kaldi_dir.read_spk2utt(os.path.join(d, "spk2utt")) == {"s1": ["s1-a", "s1-b"], "s2": ["s2-a"]}
    write(os.path.join(d, "spk2utt"), "s1 s1-a s1-b\ns2 s1-b\n")
    with pytest.raises(KaldiDirError, match=r"spk2utt:2: utterance 's1-b' is listed under speakers 's1' and 's2'"):
        kaldi_dir.read_spk2utt(os.path.join(d, "spk2utt"))


def test_item_records(tmp_path):
    path = str(tmp_path / "bad_items.tsv")
    kaldi_dir.write_item_records(path, [ItemRecord("u2", "video", "blank\tvideo\nreally"),
                                        ItemRecord("/corpus/x y.mp4", "prepare", "no id")])
    assert read(path) == "/corpus/x y.mp4\tprepare\tno id\nu2\tvideo\tblank video really\n"
    kaldi_dir.replace_stage_records(path, "audio", [ItemRecord("u1", "audio", "short")])
    kaldi_dir.replace_stage_records(path, "video", [])
    assert kaldi_dir.read_item_records(path) == [ItemRecord("/corpus/x y.mp4", "prepare", "no id"),
                                                 ItemRecord("u1", "audio", "short")]
    write(path, "u1\taudio\n")
    with pytest.raises(KaldiDirError, match=r"bad_items\.tsv:1: expected"):
        kaldi_dir.read_item_records(path)
    assert kaldi_dir.read_item_records(str(tmp_path / "none.tsv")) == []
    kaldi_dir.write_item_records(path, [])
    assert read(path) == ""


def test_fix_dir_keeps_the_intersection(tmp_path):
    d = make_dir(tmp_path)
    assert kaldi_dir.validate_dir(d) == ["s1-a", "s1-b", "s2-a"]
    kaldi_dir.write_table(os.path.join(d, "wav.scp"), {"s1-a": "/x/a.wav", "s2-a": "/x/c.wav"})
    kaldi_dir.write_table(os.path.join(d, "utt2dur"), {"s1-a": 1.0, "s1-b": 2.0})
    with pytest.raises(KaldiDirError, match="utt2dur: its ids differ from text's|wav.scp: its ids differ"):
        kaldi_dir.validate_dir(d)
    dropped = kaldi_dir.fix_dir(d)
    assert dropped == {"s1-b": ["wav.scp"], "s2-a": ["utt2dur"]}
    assert kaldi_dir.validate_dir(d) == ["s1-a"]
    assert read(os.path.join(d, "spk2utt")) == "s1 s1-a\n"
    assert kaldi_dir.fix_dir(d) == {}


def test_validate_dir_names_unsorted_file_and_bad_spk2utt(tmp_path):
    d = make_dir(tmp_path)
    write(os.path.join(d, "text"), "s1-b X\ns1-a Y\ns2-a Z\n")
    with pytest.raises(KaldiDirError, match=r"text:2: not sorted"):
        kaldi_dir.validate_dir(d)
    d2 = make_dir(tmp_path / "other")
    write(os.path.join(d2, "spk2utt"), "s1 s1-a\ns2 s2-a\n")
    with pytest.raises(KaldiDirError, match="spk2utt: does not match utt2spk"):
        kaldi_dir.validate_dir(d2)


def test_restore_unfiltered(tmp_path):
    d = make_dir(tmp_path)
    saved = os.path.join(d, kaldi_dir.UNFILTERED)
    os.makedirs(saved)
    write(os.path.join(saved, "text"), "s1-a ORIGINAL\n")
    write(os.path.join(d, kaldi_dir.FILTER_REPORT), "report\n")
    assert kaldi_dir.restore_unfiltered(d)
    assert read(os.path.join(d, "text")) == "s1-a ORIGINAL\n"
    assert not os.path.exists(saved) and not os.path.exists(os.path.join(d, kaldi_dir.FILTER_REPORT))
    assert not kaldi_dir.restore_unfiltered(d)
