import logging
import os
import shutil

import numpy as np
import pytest
import soundfile

from espnet_omni_avsr.bin import format_audio as cli
from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.prep.audio_prep import AudioFormatter, av_mismatch, format_audio, resample
from espnet_omni_avsr.prep.errors import ItemError
from espnet_omni_avsr.prep.lrs_layout import prepare_lrs_data
from espnet_omni_avsr.prep.sharding import WorkItem
from espnet_omni_avsr.prep.video_prep import preprocess_video
from tests.prep.lrs_fake_corpus import (
    AUDIO_BAD,
    TRAIN_IDS,
    VIDEO_BAD,
    build_fake_lrs3,
    moving_texture,
    tone,
    write_av_mp4,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(data/train, dump/train after stage 2)."""
    base = tmp_path_factory.mktemp("audio")
    build_fake_lrs3(str(base / "corpus"))
    prepare_lrs_data(str(base / "corpus"), str(base / "data"))
    preprocess_video(str(base / "data" / "train"), str(base / "dump" / "train"))
    return str(base / "data" / "train"), str(base / "dump" / "train")


def copy_dump(prepared, tmp_path):
    out = str(tmp_path / "dump")
    shutil.copytree(prepared[1], out)
    return prepared[0], out


def test_format_stage(prepared, tmp_path, capsys):
    data, out = copy_dump(prepared, tmp_path)
    assert cli.main(["--data_dir", data, "--out_dir", out, "--nj", "2"]) == 0
    assert "7 of 8 recordings kept, 1 bad items (8 processed, 0 reused" in capsys.readouterr().out
    formatted = [u for u in TRAIN_IDS if u not in VIDEO_BAD]  # rejected videos are skipped
    scp = kaldi_dir.read_table(os.path.join(out, "wav.scp"))
    assert list(scp) == formatted
    source = kaldi_dir.read_table(os.path.join(data, "wav.scp"))
    for uid in formatted:
        converted = uid in ("aaaa-50003", "bbbb-50002")  # 22.05 kHz wav, stereo flac
        assert scp[uid] == (os.path.join(out, "wav", f"{uid}.wav") if converted else source[uid])
        info = soundfile.info(scp[uid])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    dur = kaldi_dir.read_float_table(os.path.join(out, "utt2dur"))
    assert dur["cccc-50004"] == 2.0 and all(abs(d - 1.0) < 1e-3 for u, d in dur.items() if u != "cccc-50004")
    bad = [r for r in kaldi_dir.read_item_records(os.path.join(out, "bad_items.tsv")) if r.stage == "audio"]
    assert [r.uttid for r in bad] == sorted(AUDIO_BAD)
    assert "audio 2.000 s, video 1.000 s (25 frames at 25 fps), difference 1.000 s > 0.12 s" in bad[0].text
    assert {r.uttid for r in kaldi_dir.read_item_records(os.path.join(out, "bad_items.tsv"))} >= set(VIDEO_BAD)
    notes = {r.uttid: r.text for r in kaldi_dir.read_item_records(os.path.join(out, "notes.tsv")) if r.stage == "audio"}
    assert "resampled 22050 -> 16000 Hz" in notes["aaaa-50003"]
    assert "mixed 2 channels to mono" in notes["bbbb-50002"]
    # resumable: nothing is done again, nothing rewritten
    before = {n: os.stat(os.path.join(out, "wav", n)).st_mtime_ns for n in os.listdir(os.path.join(out, "wav"))}
    result = format_audio(data, out, nj=2)
    assert (result.run.processed, result.run.reused) == (0, 8)
    assert {n: os.stat(os.path.join(out, "wav", n)).st_mtime_ns for n in os.listdir(os.path.join(out, "wav"))} == before
    # a wider tolerance accepts the mismatch without formatting again
    result = format_audio(data, out, nj=2, max_av_diff=1.5)
    assert result.run.processed == 0 and "cccc-50004" in result.kept


def test_resampling_and_mixdown(tmp_path):
    t = np.arange(22050) / 22050
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    y = resample(sine, 22050, 16000)
    assert len(y) == 16000
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 440) <= 1
    assert np.max(np.abs(y[1000:-1000] - 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)[1000:-1000])) < 0.01
    stereo = tmp_path / "s.wav"
    left, right = 0.4 * np.ones(800), -0.2 * np.ones(800)
    soundfile.write(str(stereo), np.stack([left, right], 1), 16000, subtype="PCM_16")
    result = AudioFormatter(str(tmp_path / "wav"))(WorkItem("s", str(stereo)))
    mono, rate = soundfile.read(result["path"])
    assert rate == 16000 and mono.ndim == 1 and np.allclose(mono, 0.1, atol=1e-3)
    assert result["note"].startswith("mixed 2 channels to mono")


def test_audio_inside_mp4(tmp_path):
    """LRS3 ships no wav: wav.scp points at the mp4 and the AAC stream is decoded."""
    root = tmp_path / "corpus"
    spk = root / "test" / "tttt"
    spk.mkdir(parents=True)
    write_av_mp4(str(spk / "00001.mp4"), moving_texture(1), tone(1))
    (spk / "00001.txt").write_text("Text:  HELLO\n")
    prepare_lrs_data(str(root), str(tmp_path / "data"), ["test=test"])
    data, out = str(tmp_path / "data" / "test"), str(tmp_path / "dump")
    assert kaldi_dir.read_table(os.path.join(data, "wav.scp"))["tttt-00001"].endswith("00001.mp4")
    preprocess_video(data, out)
    result = format_audio(data, out)
    assert result.kept == ["tttt-00001"] and result.bad == []
    path = kaldi_dir.read_table(os.path.join(out, "wav.scp"))["tttt-00001"]
    info = soundfile.info(path)
    assert (info.samplerate, info.channels) == (16000, 1) and abs(info.frames / 16000 - 1.0) < 0.12


def test_bad_audio_is_reported(tmp_path):
    fmt = AudioFormatter(str(tmp_path / "wav"))
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(ItemError, match=r"junk\.flac: not a readable audio file"):
        fmt(WorkItem("j", str(junk)))
    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(1600), 16000, subtype="PCM_16")
    with pytest.raises(ItemError, match=r"silent\.wav: the audio is all zeros"):
        fmt(WorkItem("s", str(silent)))
    video_only = tmp_path / "v.mp4"
    from espnet_omni_avsr.data.video_io import write_video

    write_video(str(video_only), moving_texture(1))
    with pytest.raises(ItemError, match=r"v\.mp4: no audio stream"):
        fmt(WorkItem("v", str(video_only)))
    with pytest.raises(ItemError, match=r"gone\.wav: audio file not found"):
        fmt(WorkItem("g", str(tmp_path / "gone.wav")))
    assert av_mismatch(1.05, 25, 25.0, 0.12) is None
    assert "difference 0.200 s > 0.12 s" in av_mismatch(1.2, 25, 25.0, 0.12)


def test_needs_stage_2_unless_skipped(prepared, tmp_path, caplog):
    data = prepared[0]
    out = str(tmp_path / "dump")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["--data_dir", data, "--out_dir", out]) == 1
    assert any("utt2num_frames not found" in m and "stage 2" in m for m in caplog.messages)
    assert cli.main(["--data_dir", data, "--out_dir", out, "--skip_av_check"]) == 0
    assert len(kaldi_dir.read_table(os.path.join(out, "wav.scp"))) == len(TRAIN_IDS)
