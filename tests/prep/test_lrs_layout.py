import logging
import os
import shutil

import pytest

from espnet_omni_avsr.bin import prepare_lrs_data as cli
from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.prep.errors import ItemError, PrepError
from espnet_omni_avsr.prep.lrs_layout import SplitExpr, prepare_lrs_data, read_transcript
from tests.prep.lrs_fake_corpus import DEV_IDS, STAGE1_BAD, TEST_IDS, TRAIN_IDS, TRANSCRIPTS, build_fake_lrs3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lrs3") / "corpus")
    build_fake_lrs3(root)
    return root


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_splits_ids_and_files(corpus, tmp_path, caplog):
    out = str(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        assert cli.main(["--root", corpus, "--out_dir", out]) == 0
    assert sorted(os.listdir(out)) == ["dev", "test", "train"]
    for name, ids in (("train", TRAIN_IDS), ("dev", DEV_IDS), ("test", TEST_IDS)):
        d = os.path.join(out, name)
        assert sorted(os.listdir(d)) == ["bad_items.tsv", "spk2utt", "text", "utt2spk", "video.scp", "wav.scp"]
        assert kaldi_dir.validate_dir(d) == ids  # sorted, consistent, same ids everywhere
    train = os.path.join(out, "train")
    text = kaldi_dir.read_table(os.path.join(train, "text"))
    assert text["aaaa-50001"] == TRANSCRIPTS["aaaa/50001"]
    wav = kaldi_dir.read_table(os.path.join(train, "wav.scp"))
    assert wav["aaaa-50001"] == os.path.join(corpus, "trainval", "aaaa", "50001.wav")
    assert wav["bbbb-50002"].endswith("50002.flac")
    video = kaldi_dir.read_table(os.path.join(train, "video.scp"))
    assert video["bbbb-50002"] == os.path.join(corpus, "trainval", "bbbb", "50002.mp4")
    assert read(os.path.join(train, "spk2utt")).splitlines()[0] == "aaaa aaaa-50001 aaaa-50002 aaaa-50003 aaaa-50004"
    # every stage-1 bad item once, with its reason, the rest kept
    bad = kaldi_dir.read_item_records(os.path.join(train, "bad_items.tsv"))
    assert [r.uttid for r in bad] == sorted(STAGE1_BAD)
    for r in bad:
        assert r.stage == "prepare" and STAGE1_BAD[r.uttid] in r.text, r
    assert read(os.path.join(out, "dev", "bad_items.tsv")) == ""
    assert any("empty speaker folder" in m and os.path.join("trainval", "eeee") in m for m in caplog.messages)


def test_deterministic(corpus, tmp_path):
    prepare_lrs_data(corpus, str(tmp_path / "a"))
    prepare_lrs_data(corpus, str(tmp_path / "b"))
    for name in ("train", "dev", "test"):
        for f in os.listdir(tmp_path / "a" / name):
            assert read(tmp_path / "a" / name / f) == read(tmp_path / "b" / name / f)


def test_missing_root_and_folder(tmp_path, corpus, caplog):
    missing = str(tmp_path / "no_such_corpus")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["--root", missing, "--out_dir", str(tmp_path / "d")]) == 1
    assert any(missing in m and "does not exist" in m for m in caplog.messages)
    with pytest.raises(PrepError, match=r"corpus[/\\]pretrain: no such folder \(named in train=pretrain\+trainval\)"):
        prepare_lrs_data(corpus, str(tmp_path / "d"), ["train=pretrain+trainval"])
    with pytest.raises(PrepError, match="id list @other is not given"):
        prepare_lrs_data(corpus, str(tmp_path / "d"), ["train=trainval-@other"])


def test_valid_ids_option_and_missing_entries(corpus, tmp_path):
    ids = tmp_path / "lrs3-valid.id"
    ids.write_text("trainval/aaaa/50001\ntrainval/zzzz/50009\n")
    out = str(tmp_path / "data")
    assert cli.main(["--root", corpus, "--out_dir", out, "--valid_ids", str(ids),
                     "--split_map", "train=trainval-@valid", "dev=@valid"]) == 0
    assert kaldi_dir.validate_dir(os.path.join(out, "dev")) == ["aaaa-50001"]
    assert "aaaa-50001" not in kaldi_dir.read_table(os.path.join(out, "train", "utt2spk"))
    assert "dddd-50001" in kaldi_dir.read_table(os.path.join(out, "train", "utt2spk"))
    (bad,) = kaldi_dir.read_item_records(os.path.join(out, "dev", "bad_items.tsv"))
    assert bad.uttid == "zzzz-50009" and "listed in" in bad.text and "not found" in bad.text


def test_split_map_syntax():
    expr = SplitExpr.parse("train=pretrain+trainval-@valid")
    assert expr.folders == ["pretrain", "trainval"] and expr.lists == ["valid"] and expr.positive_lists == []
    member = {"valid": False}
    assert expr.selects("trainval", lambda n: member[n])
    assert not expr.selects("test", lambda n: member[n])
    member["valid"] = True
    assert not expr.selects("trainval", lambda n: member[n])
    assert SplitExpr.parse("dev=main&@val").selects("main", lambda n: True)
    assert not SplitExpr.parse("dev=main&@val").selects("pretrain", lambda n: True)
    for bad in ("train", "=trainval", "train=", "train=a/b", "tr ain=x", "train=a--b", "train=@"):
        with pytest.raises(PrepError):
            SplitExpr.parse(bad)
    with pytest.raises(SystemExit):
        cli.main(["--root", "x", "--id_list", "novalue"])


def test_lrs2_style_lists(tmp_path):
    """LRS2: main/<folder>/<utt> split by file lists of '<folder>/<utt>' ids (test.txt has a 2nd column)."""
    root = tmp_path / "lrs2"
    for folder, utt in (("6000000000000000001", "00001"), ("6000000000000000001", "00002"),
                        ("6000000000000000002", "00001")):
        d = root / "main" / folder
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{utt}.mp4").write_bytes(b"not decoded in stage 1")
        (d / f"{utt}.txt").write_text("Text:  HELLO THERE\nConf:  3\n")
    (root / "train.txt").write_text("6000000000000000001/00001\n6000000000000000001/00002\n")
    (root / "test.txt").write_text("6000000000000000002/00001 NF\n6000000000000000009/00001 MV\n")
    out = str(tmp_path / "data")
    sets = prepare_lrs_data(str(root), out, ["train=main&@train", "test=main&@test"])
    assert sorted(sets["train"].utt2spk) == ["6000000000000000001-00001", "6000000000000000001-00002"]
    assert sorted(sets["test"].utt2spk) == ["6000000000000000002-00001"]
    (bad,) = kaldi_dir.read_item_records(os.path.join(out, "test", "bad_items.tsv"))
    assert bad.uttid == "6000000000000000009-00001" and "not found" in bad.text
    assert kaldi_dir.read_table(os.path.join(out, "train", "wav.scp"))["6000000000000000001-00001"].endswith(".mp4")


def test_odd_items(tmp_path):
    root = tmp_path / "c"
    spk = root / "trainval" / "sp01"
    spk.mkdir(parents=True)
    for stem, text in (("u1", "Text:  A B\n"), ("u 2", "Text:  C\n"), ("u3", "Text:   \n"), ("u4", b"Text: \xff\n")):
        (spk / f"{stem}.mp4").write_bytes(b"x")
        if isinstance(text, bytes):
            (spk / f"{stem}.txt").write_bytes(text)
        else:
            (spk / f"{stem}.txt").write_text(text)
    (root / "trainval" / "stray.mp4").write_bytes(b"x")
    (spk / "notes.json").write_text("{}")
    sets = prepare_lrs_data(str(root), str(tmp_path / "data"), ["train=trainval"])
    assert list(sets["train"].utt2spk) == ["sp01-u1"]
    reasons = {r.uttid: r.text for r in sets["train"].bad}
    assert "not usable as a Kaldi id" in reasons[str(spk / "u 2.mp4")]
    assert "empty transcript" in reasons["sp01-u3"]
    assert "not UTF-8" in reasons["sp01-u4"]
    assert "not inside a <speaker>/ folder" in reasons[str(root / "trainval" / "stray.mp4")]


def test_duplicate_ids_and_unsortable_speakers(tmp_path):
    root = tmp_path / "c"
    for folder in ("pretrain", "trainval"):
        d = root / folder / "spk1"
        d.mkdir(parents=True)
        (d / "00001.mp4").write_bytes(b"x")
        (d / "00001.txt").write_text("Text:  A\n")
    sets = prepare_lrs_data(str(root), str(tmp_path / "data"), ["train=pretrain+trainval"])
    assert list(sets["train"].utt2spk) == ["spk1-00001"]
    (bad,) = sets["train"].bad
    assert "duplicate utterance id" in bad.text and "trainval" in bad.text
    for spk in ("a", "a-"):
        d = root / "other" / spk
        d.mkdir(parents=True)
        (d / "1.mp4").write_bytes(b"x")
        (d / "1.txt").write_text("Text:  A\n")
    with pytest.raises(PrepError, match="do not sort with their speakers"):
        prepare_lrs_data(str(root), str(tmp_path / "data2"), ["train=other"])


def test_empty_set_is_an_error_after_writing(tmp_path, corpus):
    root = tmp_path / "c"
    shutil.copytree(os.path.join(corpus, "trainval", "cccc"), root / "trainval" / "cccc")
    for f in (root / "trainval" / "cccc").glob("*.mp4"):
        f.unlink()
    with pytest.raises(PrepError, match=r"set\(s\) \['train'\] have no usable utterance"):
        prepare_lrs_data(str(root), str(tmp_path / "data"), ["train=trainval"])
    assert len(kaldi_dir.read_item_records(str(tmp_path / "data" / "train" / "bad_items.tsv"))) == 6


def test_read_transcript(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("Text:  HELLO   WORLD \nConf:  4\n")
    assert read_transcript(str(path)) == "HELLO WORLD"
    path.write_text("WORD START END\n")
    with pytest.raises(ItemError, match=r"a\.txt has no 'Text:' line"):
        read_transcript(str(path))


def test_sample_id_list_draws_usable_items_reproducibly(tmp_path):
    from espnet_omni_avsr.prep.lrs_layout import sample_id_list
    from tests.prep.lrs_fake_corpus import build_fake_lrs3

    build_fake_lrs3(str(tmp_path / "c"))
    a = sample_id_list(str(tmp_path / "c"), "trainval", 3, 0, str(tmp_path / "a.id"))
    b = sample_id_list(str(tmp_path / "c"), "trainval", 3, 0, str(tmp_path / "b.id"))
    assert a == b and len(set(a)) == 3 and all(k.startswith("trainval/") for k in a)
    assert (tmp_path / "a.id").read_text().split() == a
    # only items with an mp4 and a transcript: cccc/50001 (audio only), bbbb/50004 (no .txt) never
    assert not {"trainval/cccc/50001", "trainval/cccc/50002", "trainval/bbbb/50004"} & set(
        sample_id_list(str(tmp_path / "c"), "trainval", 11, 1, str(tmp_path / "all.id")))
    with pytest.raises(PrepError, match="fewer than the 99"):
        sample_id_list(str(tmp_path / "c"), "trainval", 99, 0, str(tmp_path / "x.id"))
