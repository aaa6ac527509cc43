import logging
import os
import shutil
from pathlib import Path

import pytest

from espnet_omni_avsr.bin import filter_data as cli
from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.prep.audio_prep import format_audio
from espnet_omni_avsr.prep.errors import PrepError
from espnet_omni_avsr.prep.filtering import filter_data
from espnet_omni_avsr.prep.lrs_layout import prepare_lrs_data
from espnet_omni_avsr.prep.video_prep import preprocess_video
from tests.prep.lrs_fake_corpus import AUDIO_BAD, STAGE1_BAD, TRAIN_IDS, TRAIN_KEPT, VIDEO_BAD, build_fake_lrs3

LISTS = ["text", "utt2dur", "utt2num_frames", "utt2spk", "video.scp", "wav.scp"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data/train, dump/train after stages 1-3)."""
    base = tmp_path_factory.mktemp("filter")
    build_fake_lrs3(str(base / "corpus"))
    prepare_lrs_data(str(base / "corpus"), str(base / "data"))
    data, dump = str(base / "data" / "train"), str(base / "dump" / "train")
    preprocess_video(data, dump)
    format_audio(data, dump)
    return data, dump


@pytest.fixture
def dirs(prepared, tmp_path):
    dump = str(tmp_path / "dump")
    shutil.copytree(prepared[1], dump)
    return prepared[0], dump


def snapshot(folder):
    return {n: Path(os.path.join(folder, n)).read_text() for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


def test_drops_bad_items_and_reports(dirs, capsys):
    data, dump = dirs
    assert cli.main(["--dump_dir", dump, "--data_dir", data]) == 0
    out = capsys.readouterr().out
    assert f"kept {len(TRAIN_KEPT)} of {len(TRAIN_IDS)} utterances" in out
    assert ("dropped 4 (3 bad item (video), 1 bad item (audio)); "
            "4 more rejected before listing (4 bad item (prepare))") in out
    assert kaldi_dir.validate_dir(dump) == TRAIN_KEPT
    assert sorted(kaldi_dir.per_utt_files(dump)) == LISTS
    report = Path(os.path.join(dump, "filter_report.txt")).read_text()
    assert f"listed {len(TRAIN_IDS)}, kept {len(TRAIN_KEPT)}, dropped 4; 4 more items were rejected" in report
    assert ("       3  bad item (video)\n       1  bad item (audio)\n"
            "rejected before they were listed, per reason:\n       4  bad item (prepare)\n") in report
    lines = {line.split("\t")[0]: line for line in report.splitlines() if "\t" in line}
    assert sorted(lines) == sorted({**STAGE1_BAD, **VIDEO_BAD, **AUDIO_BAD})
    for table in (STAGE1_BAD, VIDEO_BAD, AUDIO_BAD):
        for uid, words in table.items():
            assert words in lines[uid]
    # the unfiltered lists are kept
    assert len(kaldi_dir.read_table(os.path.join(dump, ".unfiltered", "text"))) == len(TRAIN_IDS)


def test_idempotent_and_limits_apply_to_the_unfiltered_lists(dirs):
    data, dump = dirs
    filter_data(dump, data, max_words=5)
    first = snapshot(dump)
    filter_data(dump, data, max_words=5)
    assert snapshot(dump) == first
    dropped_words = filter_data(dump, data, max_words=5).dropped
    assert dropped_words["aaaa-50002"] == [("too many words", "6 words > --max_words 5")]
    # other limits: computed again from .unfiltered, so aaaa-50002 comes back
    result = filter_data(dump, data, max_chars=26, min_duration=0.5, max_duration=1.5)
    assert "aaaa-50002" not in result.dropped
    assert ("too many characters", "27 characters > --max_chars 26") in result.dropped["aaaa-50003"]
    assert ("too long", "2.00 s > --max_duration 1.5 s") in result.dropped["cccc-50004"]
    result = filter_data(dump, data, min_duration=1.5)
    assert result.kept == [] or all(k == "cccc-50004" for k in result.kept)
    assert result.dropped["aaaa-50001"] == [("too short", "1.00 s < --min_duration 1.5 s")]
    assert filter_data(dump, data).kept == TRAIN_KEPT


def test_missing_from_a_list_without_a_bad_item(dirs):
    data, dump = dirs
    os.remove(os.path.join(dump, "bad_items.tsv"))
    wav = kaldi_dir.read_table(os.path.join(dump, "wav.scp"))
    del wav["aaaa-50001"]
    kaldi_dir.write_table(os.path.join(dump, "wav.scp"), wav)
    result = filter_data(dump)
    assert result.dropped["aaaa-50001"] == [("missing from a list", "missing from wav.scp")]
    assert "bbbb-50003" in result.dropped  # no video, no bad_items.tsv: still dropped
    kaldi_dir.validate_dir(dump)


def test_rerunning_a_stage_restores_the_unfiltered_lists(dirs, prepared):
    data, dump = dirs
    filter_data(dump, data, max_words=5)
    assert "aaaa-50002" not in kaldi_dir.read_table(os.path.join(dump, "utt2num_frames"))
    format_audio(data, dump)  # (everything is formatted again: the copied dump has another path)
    assert "aaaa-50002" in kaldi_dir.read_table(os.path.join(dump, "wav.scp"))
    assert not os.path.exists(os.path.join(dump, ".unfiltered"))
    assert not os.path.exists(os.path.join(dump, "filter_report.txt"))
    assert len(kaldi_dir.read_table(os.path.join(dump, "text"))) == len(TRAIN_IDS)
    assert filter_data(dump, data).kept == TRAIN_KEPT


def test_errors(dirs, tmp_path, caplog):
    data, dump = dirs
    with pytest.raises(PrepError, match="--min_duration 2.0 > --max_duration 1.0"):
        filter_data(dump, data, min_duration=2.0, max_duration=1.0)
    with pytest.raises(PrepError, match="--max_words must be >= 1"):
        filter_data(dump, data, max_words=0)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["--dump_dir", str(tmp_path / "none")]) == 1
    assert any("none does not exist" in m for m in caplog.messages)
    for name in ("utt2dur", "utt2num_frames"):
        os.remove(os.path.join(dump, name))
    with pytest.raises(PrepError, match="neither utt2dur nor utt2num_frames"):
        filter_data(dump, data, min_duration=1.0)
