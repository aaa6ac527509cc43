"""Long clips: the cut rule, and a 75-s input cut at pauses, decoded as a batch and joined, with the
video following the audio's cuts (a stub recognizer that reads the words back from both streams),
then the same input through a tiny real model."""
import numpy as np
import pytest

from espnet_omni_avsr.inference.segments import audio_energy, cut_segments, join_texts, motion_energy
from espnet_omni_avsr.inference.transcriber import Transcriber
from espnet_omni_avsr.prep.video_prep import build_video_prep
from tests.inference.media_helpers import (
    MeanFaceLandmarker, StubRecognizer, render_tone_clip, tone_utterances, write_media,
)


def test_short_clip_is_one_segment():
    assert cut_segments(749, 749) == [(0, 749)]
    assert cut_segments(10, 749, np.ones(10)) == [(0, 10)]


def test_cut_at_the_quietest_window_before_the_limit():
    energy = np.ones(2000)
    energy[680:690] = 0.0  # a pause inside the search span [749 - 125, 749)
    energy[100:200] = 0.0  # quieter stretches outside it do not count
    segments = cut_segments(2000, 749, energy, search=125, window=5)
    assert segments[0] == (0, 687)  # the latest all-quiet window [685, 690), cut at its centre
    assert all(b - a <= 749 for a, b in segments)
    assert [a for a, _ in segments[1:]] == [b for _, b in segments[:-1]] and segments[-1][1] == 2000
    # flat energy: the latest window, just before the limit
    assert cut_segments(1000, 749, None, search=125)[0] == (0, 746)


def test_energies():
    speech = np.zeros(640 * 3, np.float32)
    speech[640:1280] = 0.5
    assert np.allclose(audio_energy(speech, 640), [0, 0.25, 0])
    assert audio_energy(speech, 640, 5).shape == (5,)
    crops = np.zeros((3, 4, 4), np.uint8)
    crops[2] = 10
    assert np.allclose(motion_energy(crops), [0, 0, 10])
    assert join_texts(["a b", "", " c "]) == "a b c"


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """75 s of tone utterances at 30 fps (the pipeline resamples to 25), 64x64 frames, AAC audio."""
    utts, pauses, seconds = tone_utterances(75.0, seed=3)
    audio, frames = render_tone_clip(utts, seconds, fps=30.0)
    path = str(tmp_path_factory.mktemp("long") / "long.mp4")
    write_media(path, frames, audio, fps=30)
    return path, utts, pauses


def _face_prep(tmp_path):
    return build_video_prep("mediapipe", str(tmp_path / "crops"), save_landmarks=False, landmarker=MeanFaceLandmarker())


@pytest.mark.parametrize("task", ["avsr", "vsr"])
def test_75s_input_is_cut_at_pauses_and_joined(long_clip, tmp_path, task):
    path, utts, pauses = long_clip
    stub = StubRecognizer()
    tr = Transcriber(stub, _face_prep(tmp_path), task=task, batch_size=8)
    (record, prepared), = list(tr.run([path]))
    assert record["ok"], record
    segments = record["segments"]
    assert len(segments) == 3
    assert all(s["end"] - s["start"] < 30.0 for s in segments)
    assert segments[0]["start"] == 0 and abs(segments[-1]["end"] - 75.0) < 0.1
    assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:]))
    # every cut lies in a pause between utterances (for VSR: where the mouth is still)
    for cut in [s["end"] for s in segments[:-1]]:
        assert any(a < cut < b for a, b in pauses), (cut, pauses)
    # each segment's words, read from audio and video, are the spoken ones, in order
    truth = [f"w{w}" for words in utts for w in words]
    assert record["text"] == " ".join(truth)
    assert "?" not in record["text"]
    assert all(s["text"] for s in segments)
    # the segments were decoded as one batch of 3, longest first
    assert len(stub.calls) == 1 and stub.calls[0][0] == task and len(stub.calls[0][1]) == 3
    assert record["video"]["source_fps"] == 30.0 and record["video"]["frames"] == 75 * 25
    assert "resampled 30 -> 25 fps" in record["notes"]


def test_long_input_on_a_tiny_model(long_clip, tmp_path, multitask_exp):
    """The end-to-end path on random weights: it runs, cuts, and gives one record with one text."""
    from espnet_omni_avsr.recognizer import AVSRRecognizer

    path, _, pauses = long_clip
    rec = AVSRRecognizer.from_pretrained(multitask_exp, max_new_tokens=3)
    assert rec.input_limit_seconds() == 30.0  # tiny Whisper: 1500 positions x stride 2 x 10 ms
    tr = Transcriber(rec, _face_prep(tmp_path), batch_size=4)
    (record, _), = list(tr.run([path]))
    assert record["ok"], record
    assert record["task"] == "avsr" and record["condition"] == "avsr_a4v2"
    assert len(record["segments"]) == 3 and all(s["max_new_tokens"] == 3 for s in record["segments"])
    assert record["llm_input_tokens"] > 0 and record["timing"]["decode"] > 0
