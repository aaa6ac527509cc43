"""One input's streams (inference/media.py) with a landmarker that needs no detector: frames without
a face are counted and interpolated, a long clip decoded twice gives the crops a short one gives
from memory, and the audio is what the recipes' loader reads."""
import numpy as np
import pytest

from espnet_omni_avsr.inference.media import load_media, load_video, MediaInput, probe
from espnet_omni_avsr.prep.errors import ItemError
from espnet_omni_avsr.prep.video_prep import build_video_prep
from tests.inference.media_helpers import MeanFaceLandmarker, write_media


@pytest.fixture
def prep(tmp_path):
    return build_video_prep("mediapipe", str(tmp_path / "crops"), save_landmarks=False, landmarker=MeanFaceLandmarker())


def _clip(tmp_path, dark=()):
    rng = np.random.default_rng(0)
    frames = rng.integers(40, 200, (20, 64, 80, 3), dtype=np.uint8)
    frames[list(dark)] = 0
    audio = (0.2 * np.sin(2 * np.pi * 440 * np.arange(38400) / 48000)).astype(np.float32)  # 0.8 s at 48 kHz
    path = str(tmp_path / "clip.webm")
    write_media(path, frames, audio, codec="libvpx", audio_codec="libopus", rate=48000)
    return path


def test_frames_without_a_face_and_both_passes(tmp_path, prep):
    path = _clip(tmp_path, dark=[3, 4, 5, 12])
    media = load_media(path, prep)
    info = media.info["video"]
    assert (info["frames"], info["frames_with_face"], info["frames_without_face"]) == (20, 16, 4)
    assert info["frames_without_face_ranges"] == [[3, 5], [12, 12]]
    assert "face found in 16 of 20 frames, 4 interpolated" in media.notes
    assert media.crops.shape == (20, 96, 96) and info["decoded_twice"] is False
    again = MediaInput(path, 16000, 25.0)
    load_video(path, prep, again, max_cached_bytes=0)  # the long-clip path: decoded a second time
    assert again.info["video"]["decoded_twice"] is True and np.array_equal(again.crops, media.crops)
    # 48 kHz Opus -> 16 kHz, as 16-bit values in [-1, 1]
    assert media.info["audio"]["source_rate"] == 48000 and abs(len(media.speech) / 16000 - 0.8) < 0.03
    assert media.speech.dtype == np.float32 and np.allclose(media.speech * 32768, np.round(media.speech * 32768))
    assert set(media.timing) >= {"probe", "audio", "video_decode", "face_detection", "crop"}


def test_no_face_is_missing_video_not_a_failure(tmp_path, prep):
    path = _clip(tmp_path, dark=range(20))
    media = load_media(path, prep)
    assert media.crops is None and media.available == ["audio"]
    assert media.missing["video"] == f"no face found in any of the 20 frames of {path}"


def test_probe_errors_name_the_file(tmp_path):
    path = tmp_path / "x.avi"
    path.write_bytes(b"RIFF....AVI garbage" * 50)
    with pytest.raises(ItemError, match=r"x\.avi: (does not decode|no audio and no video stream)"):
        probe(str(path))
    with pytest.raises(ItemError, match=r"nothing\.mp4: no such file"):
        probe(str(tmp_path / "nothing.mp4"))
    with pytest.raises(ItemError, match="not a file"):
        probe(str(tmp_path))
