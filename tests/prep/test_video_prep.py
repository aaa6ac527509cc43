import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from espnet_omni_avsr.bin import preprocess_video as cli
from espnet_omni_avsr.data.video_io import read_video, write_video
from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.prep.errors import ItemError, PrepError
from espnet_omni_avsr.prep.lrs_layout import prepare_lrs_data
from espnet_omni_avsr.prep.video_prep import (
    AbsVideoPrep,
    PrecroppedVideoPrep,
    VIDEO_PREP_MODES,
    preprocess_video,
    register_video_prep,
)
from tests.prep.lrs_fake_corpus import NUM_FRAMES, TRAIN_IDS, VIDEO_BAD, build_fake_lrs3, moving_texture


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("video")
    build_fake_lrs3(str(base / "corpus"))
    prepare_lrs_data(str(base / "corpus"), str(base / "data"))
    return str(base / "data" / "train")


def mtimes(folder):
    return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in sorted(os.listdir(folder))}


def test_precropped_stage(data_dir, tmp_path, capsys):
    out = str(tmp_path / "dump")
    assert cli.main(["--data_dir", data_dir, "--out_dir", out, "--nj", "2"]) == 0
    assert "8 of 11 videos kept, 3 bad items (11 processed, 0 reused" in capsys.readouterr().out
    kept = [u for u in TRAIN_IDS if u not in VIDEO_BAD]
    scp = kaldi_dir.read_table(os.path.join(out, "video.scp"))
    assert list(scp) == kept
    source = kaldi_dir.read_table(os.path.join(data_dir, "video.scp"))
    for uid in kept:
        if uid == "aaaa-50004":  # 128x128 -> rewritten
            assert scp[uid] == os.path.join(out, "video", "aaaa-50004.mp4")
            assert read_video(scp[uid]).shape == (NUM_FRAMES, 96, 96)
        else:
            assert scp[uid] == source[uid]
    assert kaldi_dir.read_int_table(os.path.join(out, "utt2num_frames")) == {u: NUM_FRAMES for u in kept}
    bad = kaldi_dir.read_item_records(os.path.join(out, "bad_items.tsv"))
    assert [r.uttid for r in bad] == sorted(VIDEO_BAD)
    for r in bad:
        assert r.stage == "video" and VIDEO_BAD[r.uttid] in r.text and source[r.uttid] in r.text, r
    (note,) = kaldi_dir.read_item_records(os.path.join(out, "notes.tsv"))
    assert note.uttid == "aaaa-50004" and "resized 128x128 -> 96x96" in note.text
    for name in ("text", "utt2spk", "spk2utt"):
        assert Path(os.path.join(out, name)).read_text() == Path(os.path.join(data_dir, name)).read_text()

    # a second run does no work and rewrites no video
    before = mtimes(os.path.join(out, "video"))
    assert cli.main(["--data_dir", data_dir, "--out_dir", out, "--nj", "2"]) == 0
    assert "(0 processed, 11 reused" in capsys.readouterr().out
    assert mtimes(os.path.join(out, "video")) == before
    # another --nj reuses the results too
    run = preprocess_video(data_dir, out, nj=3).run
    assert (run.processed, run.reused) == (0, 11)
    assert sorted(n for n in os.listdir(os.path.join(out, ".work", "video")) if n.endswith(".done")) == [
        "shard.1-of-3.done", "shard.2-of-3.done", "shard.3-of-3.done"]


def test_npy_roi_format_stores_every_kept_video_as_its_decoded_frames(data_dir, tmp_path, capsys):
    out = str(tmp_path / "dump")
    assert cli.main(["--data_dir", data_dir, "--out_dir", out, "--mode_conf", "{roi_format: npy}"]) == 0
    assert "8 of 11 videos kept, 3 bad items" in capsys.readouterr().out
    kept = [u for u in TRAIN_IDS if u not in VIDEO_BAD]
    scp = kaldi_dir.read_table(os.path.join(out, "video.scp"))
    source = kaldi_dir.read_table(os.path.join(data_dir, "video.scp"))
    assert list(scp) == kept
    for uid in kept:
        assert scp[uid] == os.path.join(out, "video", f"{uid}.npy")
        frames = np.load(scp[uid], allow_pickle=False)
        assert frames.dtype == np.uint8 and frames.shape == (NUM_FRAMES, 96, 96)
        if uid != "aaaa-50004":  # unchanged videos: exactly the pixels the loader decodes from the source
            np.testing.assert_array_equal(read_video(scp[uid]), read_video(source[uid]))
    assert not [n for n in os.listdir(os.path.join(out, "video")) if ".tmp" in n]
    (note,) = kaldi_dir.read_item_records(os.path.join(out, "notes.tsv"))
    assert note.uttid == "aaaa-50004" and "resized 128x128 -> 96x96" in note.text
    # the format is part of the resume fingerprint: mp4 again rewrites the lists
    assert cli.main(["--data_dir", data_dir, "--out_dir", out]) == 0
    assert "(11 processed, 0 reused" in capsys.readouterr().out
    assert kaldi_dir.read_table(os.path.join(out, "video.scp"))[kept[0]] == source[kept[0]]
    with pytest.raises(PrepError, match="roi_format must be one of mp4, npy, got 'png'"):
        PrecroppedVideoPrep(str(tmp_path), roi_format="png")


def test_shards_as_separate_jobs_and_interruption(data_dir, tmp_path):
    out = str(tmp_path / "dump")
    first = preprocess_video(data_dir, out, nj=2, shard=1).run
    assert not first.complete and first.processed == 6  # 11 items: 6 + 5
    assert not os.path.exists(os.path.join(out, "video.scp"))  # no merge yet
    work = os.path.join(out, ".work", "video")
    assert os.path.exists(os.path.join(work, "shard.1-of-2.done"))
    # shard 2 is interrupted after two items, in the middle of writing the third line
    second = preprocess_video(data_dir, out, nj=2, shard=2).run
    assert second.processed == 5
    log = os.path.join(work, "shard.2-of-2.jsonl")
    lines = Path(log).read_text().splitlines()
    with open(log, "w") as f:
        f.write("\n".join(lines[:2]) + "\n" + lines[2][:20])
    os.remove(os.path.join(work, "shard.2-of-2.done"))
    last = preprocess_video(data_dir, out, nj=2).run
    assert last.complete and (last.processed, last.reused) == (3, 8)
    assert len(kaldi_dir.read_table(os.path.join(out, "video.scp"))) == 8
    # a deleted output is made again; a changed option redoes everything
    os.remove(os.path.join(out, "video", "aaaa-50004.mp4"))
    assert preprocess_video(data_dir, out, nj=2).run.processed == 1
    assert preprocess_video(data_dir, out, nj=2, mode_conf={"min_frames": 30}).run.processed == 11
    bad = {r.uttid: r.text for r in kaldi_dir.read_item_records(os.path.join(out, "bad_items.tsv"))}
    assert "too short: 25 frames < --min_frames 30" in bad["aaaa-50001"]
    assert json.loads(Path(log).read_text().splitlines()[0])["uid"]  # logs hold one JSON result a line


def check(prep, frames):
    prep.check_mouth(frames, "clip.mp4")


def test_blank_detection(tmp_path):
    prep = PrecroppedVideoPrep(str(tmp_path))
    moving = moving_texture(1)
    check(prep, moving)
    with pytest.raises(ItemError, match=r"no visible mouth \(blank video\): all 25 frames of clip.mp4 are flat"):
        check(prep, np.full_like(moving, 90))
    frozen = np.repeat(moving[:1], 25, axis=0)
    with pytest.raises(ItemError, match=r"no visible mouth \(blank video\): the pixels of clip.mp4 hardly change"):
        check(prep, frozen)
    lost = moving.copy()
    lost[5:10] = 0
    with pytest.raises(ItemError, match=r"no visible mouth in 5 of 25 frames .*first 5, last 9"):
        check(prep, lost)
    lost[6:10] = moving[6:10]  # one flat frame in 25 is tolerated
    check(prep, lost)
    # an x264-encoded still picture stays below the motion threshold
    path = str(tmp_path / "still.mp4")
    write_video(path, frozen)
    with pytest.raises(ItemError, match="hardly change"):
        check(prep, read_video(path))


def test_frame_rate_and_options(tmp_path):
    prep = PrecroppedVideoPrep(str(tmp_path / "v"))
    path = str(tmp_path / "a.mp4")
    write_video(path, moving_texture(2), fps=30)
    from espnet_omni_avsr.prep.sharding import WorkItem

    with pytest.raises(ItemError, match=r"a\.mp4: 30 fps, expected 25"):
        prep(WorkItem("u", path))
    with pytest.raises(PrepError, match="--size must be an even number"):
        PrecroppedVideoPrep(str(tmp_path), size=95)
    with pytest.raises(PrepError, match="max_blank_fraction"):
        PrecroppedVideoPrep(str(tmp_path), max_blank_fraction=2)


def test_mode_registry_and_cli_errors(data_dir, tmp_path, caplog):
    class Other(AbsVideoPrep):
        def process(self, item):
            return {"path": item.path, "num_frames": 1, "note": "", "outputs": []}

    with pytest.raises(ValueError, match="already registered"):
        register_video_prep("precropped", Other)
    with pytest.raises(TypeError):
        register_video_prep("x", object)
    register_video_prep("test_other", Other)
    try:
        assert "test_other" in VIDEO_PREP_MODES
    finally:
        del VIDEO_PREP_MODES["test_other"]
    with caplog.at_level(logging.ERROR):
        assert cli.main(["--data_dir", data_dir, "--out_dir", str(tmp_path / "d"), "--mode_conf", "{nope: 1}"]) == 1
        assert cli.main(["--data_dir", str(tmp_path / "none"), "--out_dir", str(tmp_path / "d")]) == 1
    assert any("bad options" in m and "nope" in m for m in caplog.messages)
    assert any("video.scp: file not found" in m for m in caplog.messages)
    with pytest.raises(SystemExit):
        cli.main(["--data_dir", data_dir, "--out_dir", str(tmp_path / "d"), "--mode_conf", "[1, 2]"])
