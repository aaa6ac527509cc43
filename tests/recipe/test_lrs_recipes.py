"""Stages 1-5 of egs2/lrs3/avsr1 and egs2/lrs2/avsr1 on fake release trees (real face video, muxed
AAC audio, official text formats and file lists, one of each bad input), in temporary copies of
the recipe directories: split counts, bad items with reasons, the mouth crop centred on the known
mouth, audio/video durations, and the measured SNR of the noisy test sets."""
import os
import subprocess

import numpy as np
import pytest
import soundfile

from espnet_omni_avsr.data.video_io import read_video

pytest.importorskip("mediapipe")
pytest.importorskip("skimage")
from tests.prep.fake_lrs_trees import build_fake_lrs2, build_fake_lrs3, mouth_blob_centre  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNRS = (0, -5)


def _recipe_copy(corpus, work):
    work.mkdir()
    for name in ("run.sh", "avsr.sh", "path.sh", "conf", "local", "db.sh"):
        os.symlink(os.path.realpath(os.path.join(ROOT, "egs2", corpus, "avsr1", name)), work / name)
    return work


def _run(work, env, *args):
    cmd = ["./run.sh", "--stage", "1", "--stop_stage", "5", "--nj", "2", "--snrs", " ".join(map(str, SNRS)),
           *args]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)


def _table(path):
    return dict(line.split(maxsplit=1) for line in path.read_text().splitlines())


def _check_prepared(work, expected):
    for name in ("train", "dev", "test"):
        ids = sorted(_table(work / "dump" / name / "video.scp"))
        assert ids == expected[name], (name, ids)
    data_train = sorted(_table(work / "data" / "train" / "text"))
    for uid in expected["bad"]:  # the bad text file never reaches data/train/text
        assert (uid in data_train) == (expected["bad"][uid] != "no 'Text:' line")
    report = (work / "dump" / "train" / "filter_report.txt").read_text()
    for uid, why in expected["bad"].items():
        line = next((row for row in report.splitlines() if row.startswith(uid)), "")
        assert why in line, (uid, why, report)

    for name in ("train", "dev", "test"):
        frames = {u: int(n) for u, n in _table(work / "dump" / name / "utt2num_frames").items()}
        durations = {u: float(d) for u, d in _table(work / "dump" / name / "utt2dur").items()}
        for uid, path in _table(work / "dump" / name / "video.scp").items():
            # audio (taken from the mp4's AAC stream) and video agree within one frame + AAC padding
            assert abs(durations[uid] - frames[uid] / 25.0) <= 0.12, (uid, durations[uid], frames[uid])
            video = read_video(str(work / path) if not os.path.isabs(path) else path)
            assert video.shape[1:] == (96, 96) and len(video) == frames[uid]
            centre = np.nanmean([mouth_blob_centre(f) for f in video], axis=0)
            assert np.all(np.abs(centre - 48.0) < 4.5), (uid, centre)

    clean = _table(work / "dump" / "test" / "wav.scp")
    for snr in SNRS:
        noisy_dir = work / "dump" / f"test_snr{snr}"
        noisy = _table(noisy_dir / "wav.scp")
        assert sorted(noisy) == expected["test"]
        for uid, path in noisy.items():
            x, _ = soundfile.read(work / clean[uid], dtype="float64")
            y, _ = soundfile.read(work / path, dtype="float64")
            measured = 10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2))
            assert abs(measured - snr) < 0.5, (uid, snr, measured)
        assert "seed" in (noisy_dir / ".done").read_text()
        assert (noisy_dir / "noise_speakers.txt").read_text().split() == \
            (work / "dump" / "noise" / "babble_test_speakers.txt").read_text().split()


def test_lrs3_recipe_preparation(tmp_path):
    expected = build_fake_lrs3(str(tmp_path / "LRS3"))
    work = _recipe_copy("lrs3", tmp_path / "recipe")
    env = dict(os.environ, OMP_NUM_THREADS="1", LRS3=str(tmp_path / "LRS3"))
    proc = _run(work, env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    _check_prepared(work, expected)
    assert "empty speaker folder" in (work / "exp" / "logs" / "stage1.log").read_text()

    # 1759-h variant: pretrain/ joins train (stage 1 only)
    proc = subprocess.run(["./run.sh", "--stage", "1", "--stop_stage", "1",
                           "--local_data_opts", "--with_pretrain true"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = sorted(_table(work / "data" / "train" / "text"))
    assert [u for u in train if u not in expected["bad"]] == expected["train_with_pretrain"]

    # a corpus root that does not exist: a clear message naming it
    env_missing = dict(env, LRS3=str(tmp_path / "nowhere"))
    proc = subprocess.run(["./run.sh", "--stage", "1", "--stop_stage", "1", "--local_data_opts",
                           "--draw_valid true"], cwd=work, env=env_missing, capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"corpus root {tmp_path / 'nowhere'} does not exist" in proc.stderr


def test_lrs2_recipe_preparation(tmp_path):
    expected = build_fake_lrs2(str(tmp_path / "mvlrs_v1"))
    work = _recipe_copy("lrs2", tmp_path / "recipe")
    env = dict(os.environ, OMP_NUM_THREADS="1", LRS2=str(tmp_path / "mvlrs_v1"))
    proc = _run(work, env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    _check_prepared(work, expected)
    assert "empty speaker folder" in (work / "exp" / "logs" / "stage1.log").read_text()
