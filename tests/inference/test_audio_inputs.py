"""Audio files as inputs (.wav, .flac, .mp3, .ogg, .m4a at any rate and channel count): resampled to
16 kHz mono as a video's sound is, never given to the face pipeline, decoded as ASR; a forced VSR or
AVSR fails them by name while the other inputs go on; folders and list files pick them up."""
import json

import numpy as np
import pytest

from espnet_omni_avsr.bin import transcribe
from espnet_omni_avsr.inference.media import load_media
from espnet_omni_avsr.inference.transcriber import Transcriber
from espnet_omni_avsr.prep.audio_prep import to_pcm16
from espnet_omni_avsr.prep.face.detectors import AbsFaceLandmarker
from espnet_omni_avsr.prep.video_prep import build_video_prep
from tests.inference.media_helpers import (RATE, MeanFaceLandmarker, StubRecognizer, render_tone_clip, write_audio,
                                           write_media)


class NoFaceLandmarker(AbsFaceLandmarker):
    """Fails the test when any frame reaches the face pipeline."""

    def __call__(self, frames):
        raise AssertionError("the face pipeline ran on an audio file")


def _tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * (300 + 100 * c) * t) for c in range(channels)], axis=1)


@pytest.mark.parametrize("ext,rate,channels", [(".wav", 8000, 2), (".flac", 44100, 1), (".mp3", 44100, 2),
                                               (".ogg", 48000, 2), (".m4a", 22050, 1), (".WAV", 11025, 6)])
def test_audio_files_at_any_rate_and_channel_count(tmp_path, ext, rate, channels):
    path = str(tmp_path / f"speech{ext}")
    write_audio(path, _tone(0.6, rate, channels), rate)
    prep = build_video_prep("mediapipe", str(tmp_path / "crops"), save_landmarks=False, landmarker=NoFaceLandmarker())
    media = load_media(path, prep)
    assert media.available == ["audio"] and media.crops is None and "video" not in media.info
    assert media.missing["video"] == f"{path} is an audio file ({ext.lower()}): it has no video"
    assert media.info["audio"]["source_rate"] == rate and media.info["audio"]["channels"] == channels
    assert media.speech.dtype == np.float32 and media.speech.ndim == 1
    assert abs(len(media.speech) / 16000 - 0.6) < 0.01
    assert f"resampled {rate} -> 16000 Hz" in media.notes
    assert (f"mixed {channels} channels to mono" in media.notes) == (channels > 1)


def test_a_wav_reads_as_the_recipes_audio_step(tmp_path):
    """Lossless: exactly the 16-bit samples through to_pcm16 (channel mean, polyphase resampling)."""
    path = str(tmp_path / "stereo.wav")
    audio = np.round(_tone(0.5, 44100, 2) * 32767) / 32768.0  # what the 16-bit file holds
    write_audio(path, audio * 32768.0 / 32767, 44100)
    pcm, _ = to_pcm16(audio, 44100, 16000, path)
    assert np.array_equal(load_media(path, None).speech, pcm.astype(np.float32) / 32768.0)


def test_a_picture_stream_in_an_audio_file_is_not_read(tmp_path):
    """An .m4a (or .mp3) may carry a cover picture FFmpeg shows as a video stream: not a face video."""
    path = str(tmp_path / "cover.m4a")
    frames = np.full((10, 64, 64, 3), 128, np.uint8)
    write_media(path, frames, 0.3 * np.sin(np.arange(16000) / 5.0))
    prep = build_video_prep("mediapipe", str(tmp_path / "crops"), save_landmarks=False, landmarker=NoFaceLandmarker())
    media = load_media(path, prep)
    assert media.available == ["audio"] and "is an audio file (.m4a)" in media.missing["video"]


@pytest.fixture
def tone_inputs(tmp_path):
    """The same tone-language utterance as a face video (.mp4) and as an audio file (.flac, 2 channels
    at 44.1 kHz)."""
    words = [[1, 4, 7]]
    audio, frames = render_tone_clip(words, 2.4)
    video = str(tmp_path / "face.mp4")
    write_media(video, frames, audio)
    sound = str(tmp_path / "speech.flac")
    t44 = np.interp(np.arange(int(len(audio) * 44100 / RATE)) * RATE / 44100, np.arange(len(audio)), audio)
    write_audio(sound, np.stack([t44, t44], axis=1), 44100)
    return video, sound, " ".join(f"w{w}" for w in words[0])


def test_audio_files_decode_as_asr_and_a_forced_video_task_fails_them(tmp_path, tone_inputs):
    video, sound, text = tone_inputs
    prep = build_video_prep("mediapipe", str(tmp_path / "crops"), save_landmarks=False, landmarker=MeanFaceLandmarker())
    rec = StubRecognizer()
    records = [r for r, _ in Transcriber(rec, prep).run([sound, video])]
    assert [r["task"] for r in records] == ["asr", "avsr"] and [r["text"] for r in records] == [text, text]
    assert records[0]["video"] is None and "is an audio file (.flac)" in records[0]["missing"]["video"]
    assert "resampled 44100 -> 16000 Hz" in records[0]["notes"] and "mixed 2 channels to mono" in records[0]["notes"]
    for task in ("vsr", "avsr"):
        records = [r for r, _ in Transcriber(rec, prep, task=task).run([sound, video, str(tmp_path / "gone.wav")])]
        assert [r["ok"] for r in records] == [False, True, False]
        assert records[0]["error"] == (f"--task {task} needs video: {sound} is an audio file (.flac): it "
                                       "has no video; audio files are asr inputs (no --task, or --task asr)")
        assert records[1]["task"] == task and records[1]["text"] == text
        assert "no such file" in records[2]["error"]  # a missing audio file is named as missing


def test_cli_on_audio_files_folders_and_lists(tmp_path, multitask_exp, monkeypatch, capsys):
    folder = tmp_path / "recordings"
    (folder / "sub").mkdir(parents=True)
    write_audio(str(folder / "a.wav"), _tone(0.5, 8000, 1), 8000)
    write_audio(str(folder / "sub" / "b.FLAC"), _tone(0.5, 32000, 2), 32000)
    (folder / "notes.txt").write_text("not an input")
    write_audio(str(tmp_path / "c.mp3"), _tone(0.5, 44100, 2), 44100)
    (tmp_path / "list.txt").write_text("# recordings\nc.mp3\n")
    assert transcribe.expand_inputs([str(folder), str(tmp_path / "list.txt")]) == [
        str(folder / "a.wav"), str(folder / "sub" / "b.FLAC"), str(tmp_path / "c.mp3")]

    def no_face_prep(*args, **kwargs):
        raise AssertionError("the face pipeline was built for audio files only")

    monkeypatch.setattr(transcribe, "build_face_prep", no_face_prep)
    out = tmp_path / "out"
    code = transcribe.main(["--model", str(multitask_exp), str(folder), str(tmp_path / "list.txt"),
                            "--output_dir", str(out), "--max_new_tokens", "2"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(folder / "a.wav"), str(folder / "sub" / "b.FLAC"),
                                                       str(tmp_path / "c.mp3")]
    for name in ("a", "b", "c"):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["ok"] and record["task"] == "asr" and record["condition"] == "asr_a4"
        assert record["video"] is None and "face_detection" not in record["timing"]
    code = transcribe.main(["--model", str(multitask_exp), str(folder / "a.wav"), "--task", "vsr",
                            "--output_dir", str(out)])
    assert code == 1
    assert "--task vsr needs video" in json.loads((out / "a.json").read_text())["error"]
