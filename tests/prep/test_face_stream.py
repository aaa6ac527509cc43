"""The stage 2 face steps as inference uses them: frames streamed and resampled one at a time give
what the in-memory functions give, and landmarkers and crops take iterables."""
import numpy as np
import pytest

from espnet_omni_avsr.prep.face.align import load_mean_face, mouth_crops
from espnet_omni_avsr.prep.face.face_video_prep import (
    iter_rgb_frames, read_rgb_video, resample_frames, stream_resample, video_frame_rate,
)


@pytest.mark.parametrize("src_fps", [1, 10, 12.5, 23.976, 24, 25, 29.97, 30, 50, 59.94, 60, 120])
def test_stream_resample_equals_resample_frames(src_fps):
    for n in list(range(1, 30)) + [241]:
        expected = resample_frames(np.arange(n), src_fps, 25.0)
        assert list(stream_resample(iter(range(n)), src_fps, 25.0)) == list(expected), n


def test_iter_rgb_frames_resamples_a_30_fps_file(tmp_path):
    from tests.inference.media_helpers import write_media

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (31, 32, 48, 3), dtype=np.uint8)
    path = str(tmp_path / "clip.mkv")
    write_media(path, frames, fps=30)
    src, rate = read_rgb_video(path)
    assert rate == video_frame_rate(path) == 30.0 and src.shape == (31, 32, 48, 3)
    streamed = np.stack(list(iter_rgb_frames(path, 25.0)))
    assert np.array_equal(streamed, resample_frames(src, 30.0, 25.0)) and len(streamed) == 25
    assert np.array_equal(np.stack(list(iter_rgb_frames(path))), src)


def test_mouth_crops_from_an_iterable():
    mean_face = load_mean_face()
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (4, 256, 256), dtype=np.uint8)
    track = np.stack([mean_face] * 4)
    crops, mats = mouth_crops(gray, track, mean_face)
    again, _ = mouth_crops(iter(gray), track, mean_face)
    assert np.array_equal(crops, again) and crops.shape == (4, 96, 96)
    with pytest.raises(ValueError, match="3 frames but 4 landmark rows"):
        mouth_crops(iter(gray[:3]), track, mean_face)
    with pytest.raises(ValueError, match="more frames than the 3 landmark rows"):
        mouth_crops(iter(gray), track[:3], mean_face)


def test_mediapipe_on_a_generator_equals_on_an_array():
    pytest.importorskip("mediapipe")
    skimage_data = pytest.importorskip("skimage.data")
    from espnet_omni_avsr.prep.face.detectors import build_landmarker

    frames = np.stack([skimage_data.astronaut(), np.zeros((512, 512, 3), np.uint8)])
    landmarker = build_landmarker("mediapipe")
    a = landmarker(frames)
    b = landmarker(f for f in frames)
    assert a.shape == b.shape == (2, 68, 2) and np.isfinite(a[0]).all() and np.isnan(a[1]).all()
    np.testing.assert_allclose(a[0], b[0])
