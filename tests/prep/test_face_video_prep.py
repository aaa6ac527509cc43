"""The stage 2 face modes on real face video (the astronaut photograph moving over time, with a
drawn mouth at a known place): the crop is centred on the mouth, clips without a face or that do
not decode are bad items, and saved landmarks reproduce the crop through --mode landmarks."""
import numpy as np
import pytest

from espnet_omni_avsr.data.video_io import read_video, video_info
from espnet_omni_avsr.prep.errors import ItemError, PrepError
from espnet_omni_avsr.prep.sharding import WorkItem
from espnet_omni_avsr.prep.video_prep import build_video_prep

pytest.importorskip("skimage")
from tests.prep.fake_lrs_trees import mouth_blob_centre, truncate, write_item  # noqa: E402


def _backend(name):
    pytest.importorskip(name)
    return name


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_item(str(root / "face"), seed=7, seconds=1.0)
    write_item(str(root / "wall"), seed=8, seconds=0.6, face=False)
    write_item(str(root / "trunc"), seed=9, seconds=0.6)
    truncate(str(root / "trunc.mp4"))
    return root


def _check_crop(path, frames):
    video = read_video(path)
    num, fps, height, width = video_info(path)
    assert (len(video), fps, height, width) == (frames, 25.0, 96, 96)
    centres = np.array([mouth_blob_centre(f) for f in video])
    assert np.isfinite(centres).all()
    offset = centres.mean(axis=0) - 48.0
    # measured: about (+0.5, -3): the drawn ellipse sits a little above the lip landmarks' centre
    assert np.all(np.abs(offset) < 4.5), offset
    assert np.all(np.abs(centres - 48.0) < 10.0), centres


@pytest.mark.parametrize("mode", ["mediapipe", "dlib"])
def test_face_mode_centres_the_mouth(clips, tmp_path, mode):
    prep = build_video_prep(_backend(mode), str(tmp_path / "video"))
    result = prep(WorkItem("spk-face", str(clips / "face.mp4")))
    assert result["num_frames"] == 25 and result["face_frames"] == 25 and result["note"] == ""
    _check_crop(result["path"], 25)
    track = np.load(tmp_path / "landmarks" / "spk-face.npy")
    assert track.shape == (25, 68, 2) and np.isfinite(track).all()

    # the saved track through --mode landmarks gives the same crop
    again = build_video_prep("landmarks", str(tmp_path / "video2"), landmarks_dir=str(tmp_path / "landmarks"))
    r2 = again(WorkItem("spk-face", str(clips / "face.mp4")))
    a, b = read_video(result["path"]).astype(int), read_video(r2["path"]).astype(int)
    assert np.abs(a - b).mean() < 3.0  # measured 1.5 (x264 noise; a crop 3 px off differs by > 10)


def test_bad_clips_are_item_errors(clips, tmp_path):
    prep = build_video_prep(_backend("mediapipe"), str(tmp_path / "video"))
    with pytest.raises(ItemError, match=r"no face found in any of the 15 frames of .*wall\.mp4"):
        prep(WorkItem("spk-wall", str(clips / "wall.mp4")))
    with pytest.raises(ItemError, match=r"video does not decode: .*trunc\.mp4"):
        prep(WorkItem("spk-trunc", str(clips / "trunc.mp4")))
    with pytest.raises(PrepError, match="landmarks_dir"):
        build_video_prep("landmarks", str(tmp_path / "v"))
    with pytest.raises(PrepError, match="min_face_fraction"):
        build_video_prep("mediapipe", str(tmp_path / "v"), min_face_fraction=2)


def test_missing_faces_are_interpolated_and_noted(clips, tmp_path):
    """Frames whose face the detector missed (here: blanked in a precomputed track) are filled in."""
    prep = build_video_prep(_backend("mediapipe"), str(tmp_path / "video"))
    prep(WorkItem("spk-face", str(clips / "face.mp4")))
    track = np.load(tmp_path / "landmarks" / "spk-face.npy")
    track[10:14] = np.nan
    (tmp_path / "lm").mkdir()
    np.save(tmp_path / "lm" / "spk-face.npy", track)
    partial = build_video_prep("landmarks", str(tmp_path / "v2"), landmarks_dir=str(tmp_path / "lm"))
    result = partial(WorkItem("spk-face", str(clips / "face.mp4")))
    assert result["face_frames"] == 21 and "face found in 21 of 25 frames, 4 interpolated" in result["note"]
    _check_crop(result["path"], 25)
    strict = build_video_prep("landmarks", str(tmp_path / "v3"), landmarks_dir=str(tmp_path / "lm"),
                              min_face_fraction=0.9)
    with pytest.raises(ItemError, match="face found in only 21 of 25 frames"):
        strict(WorkItem("spk-face", str(clips / "face.mp4")))
