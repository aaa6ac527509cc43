"""prep/face: similarity transform, mouth-crop matrices, landmark interpolation/smoothing/loading,
and the mediapipe -> iBUG-68 mapping against dlib on a real face photograph."""
import pickle

import numpy as np
import pytest

from espnet_omni_avsr.prep.errors import ItemError
from espnet_omni_avsr.prep.face.align import (
    MOUTH_POINTS, STABLE_POINTS, apply_transform, crop_matrices, load_mean_face, similarity_transform,
)
from espnet_omni_avsr.prep.face.landmarks import (
    detected, find_landmark_file, interpolate_missing, load_landmarks, smooth,
)


def _similarity(scale, angle, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_similarity_transform_recovers_a_known_map():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (6, 2))
    m = _similarity(1.7, 0.3, 12.0, -5.0)
    assert np.allclose(similarity_transform(src, apply_transform(m, src)), m, atol=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((6, 2)), src)


def test_mean_face_is_packaged_and_crop_centres_the_mouth():
    mean_face = load_mean_face()
    assert mean_face.shape == (68, 2)
    # a face that is the mean face moved, rotated and shrunk: its crop puts the mouth centre at 48, 48
    m = _similarity(0.6, -0.2, 40.0, 70.0)
    track = np.stack([apply_transform(m, mean_face)] * 3)
    mats = crop_matrices(track, mean_face, size=96)
    mouth = [apply_transform(mm, pts[list(MOUTH_POINTS)]).mean(axis=0) for mm, pts in zip(mats, track)]
    assert np.allclose(mouth, 48.0, atol=1e-6)
    # and the stable points land where the mean face has them, shifted by the same offset
    shift = 48.0 - mean_face[list(MOUTH_POINTS)].mean(axis=0)
    stable = list(STABLE_POINTS)
    assert np.allclose(apply_transform(mats[0], track[0][stable]), mean_face[stable] + shift, atol=1e-6)


def test_interpolate_and_smooth():
    track = np.zeros((5, 68, 2))
    track[:, :, 0] = np.arange(5)[:, None] * 10.0
    track[[0, 2, 4]] = np.nan
    assert detected(track).tolist() == [False, True, False, True, False]
    filled = interpolate_missing(track)
    assert filled[:, 0, 0].tolist() == [10.0, 10.0, 20.0, 30.0, 30.0]  # ends copy, middle interpolates
    assert np.allclose(smooth(filled, 3)[:, 0, 0], [10.0, 40 / 3, 20.0, 80 / 3, 30.0])
    assert np.array_equal(smooth(filled, 1), filled)
    with pytest.raises(ItemError, match="no face found in any of 2 frames"):
        interpolate_missing(np.full((2, 68, 2), np.nan))


def test_load_precomputed_landmarks(tmp_path):
    track = np.random.default_rng(1).uniform(0, 100, (4, 68, 2))
    (tmp_path / "trainval" / "spk").mkdir(parents=True)
    np.save(tmp_path / "trainval" / "spk" / "00001.npy", track)
    with open(tmp_path / "spk-00002.pkl", "wb") as f:
        pickle.dump([track[0], None, track[2], track[3]], f)
    found = find_landmark_file(str(tmp_path), "/corpus/trainval/spk/00001.mp4", "spk-00001")
    assert np.allclose(load_landmarks(found, 4), track)
    found = find_landmark_file(str(tmp_path), "/corpus/trainval/spk/00002.mp4", "spk-00002")
    loaded = load_landmarks(found, 4)
    assert detected(loaded).tolist() == [True, False, True, True]
    with pytest.raises(ItemError, match="has 4 frames, the video 5"):
        load_landmarks(found, 5)
    with pytest.raises(ItemError, match="no precomputed landmarks for /corpus/test/x/1.mp4"):
        find_landmark_file(str(tmp_path), "/corpus/test/x/1.mp4", "x-1")


def test_mediapipe_mapping_matches_dlib_on_a_real_face():
    """The 468 -> 68 mapping: the points used for alignment agree with dlib's on the astronaut photo."""
    pytest.importorskip("mediapipe")
    pytest.importorskip("dlib")
    skimage_data = pytest.importorskip("skimage.data")
    from espnet_omni_avsr.prep.face.detectors import build_landmarker

    image = skimage_data.astronaut()[None]
    mp_points = build_landmarker("mediapipe")(image)[0]
    dlib_points = build_landmarker("dlib", upsample=0)(image)[0]
    assert np.isfinite(mp_points).all() and np.isfinite(dlib_points).all()
    eye_distance = np.linalg.norm(dlib_points[36] - dlib_points[45])
    used = list(STABLE_POINTS) + list(MOUTH_POINTS)
    err = np.linalg.norm(mp_points[used] - dlib_points[used], axis=1) / eye_distance
    assert err.mean() < 0.04, err  # measured 0.019
    assert err.max() < 0.10, err  # measured 0.057 (the jaw, not used, is off by up to 0.35)
    # the mouth centres, which centre the crop, agree within 3% of the eye distance
    centre_err = np.linalg.norm(mp_points[48:68].mean(0) - dlib_points[48:68].mean(0)) / eye_distance
    assert centre_err < 0.03
