import re

import numpy as np
import pytest
from espnet2.train import dataset as espnet_dataset
from espnet2.train.dataset import DATA_TYPES, ESPnetDataset
from espnet2.train.iterable_dataset import IterableESPnetDataset

from espnet_omni_avsr.data.collate import AVSRCollateFn
from espnet_omni_avsr.data.espnet_video_type import VIDEO_DATA_TYPE, register_video_data_type, video_loader
from espnet_omni_avsr.data.video_io import VideoReadError, write_video


def tiny_frames(num_frames: int, seed: int) -> np.ndarray:
    t = np.arange(num_frames)[:, None, None]
    y = np.arange(16)[None, :, None]
    x = np.arange(16)[None, None, :]
    frames = 120 + 50 * np.sin(x / 3 + t / 2 + seed) + 40 * np.cos(y / 3 - t / 4)
    return frames.clip(0, 255).astype(np.uint8)


@pytest.fixture
def corpus(tmp_path):
    """An scp of tiny mp4 files and a token-id file, as an ESPnet dump directory would hold."""
    lengths = {"utt1": 5, "utt2": 8, "utt3": 3}
    originals = {}
    with open(tmp_path / "video.scp", "w") as scp, open(tmp_path / "text", "w") as text:
        for i, (uid, length) in enumerate(lengths.items()):
            originals[uid] = tiny_frames(length, seed=i)
            write_video(tmp_path / f"{uid}.mp4", originals[uid])
            scp.write(f"{uid} {tmp_path / f'{uid}.mp4'}\n")
            text.write(f"{uid} {' '.join(str(3 + j) for j in range(i + 2))}\n")
    return tmp_path, originals


def test_register_is_idempotent():
    register_video_data_type()
    register_video_data_type()
    assert DATA_TYPES[VIDEO_DATA_TYPE]["func"] is video_loader
    assert DATA_TYPES[VIDEO_DATA_TYPE]["kwargs"] == []
    assert "video" in DATA_TYPES[VIDEO_DATA_TYPE]["help"].lower()
    assert espnet_dataset.DATA_TYPES is DATA_TYPES  # the dict AbsTask's --help lists


def test_register_refuses_a_foreign_entry():
    register_video_data_type()
    ours = DATA_TYPES[VIDEO_DATA_TYPE]
    DATA_TYPES[VIDEO_DATA_TYPE] = dict(func=np.load, kwargs=[], help="someone else's")
    try:
        with pytest.raises(RuntimeError, match="already has a 'video' entry"):
            register_video_data_type()
    finally:
        DATA_TYPES[VIDEO_DATA_TYPE] = ours


def test_espnet_dataset_reads_video(corpus):
    register_video_data_type()
    root, originals = corpus
    dataset = ESPnetDataset(
        [(str(root / "video.scp"), "video", "video"), (str(root / "text"), "text", "text_int")]
    )
    assert list(dataset) == ["utt1", "utt2", "utt3"]
    uid, data = dataset["utt2"]
    assert uid == "utt2" and set(data) == {"video", "text"}
    video = data["video"]
    assert video.shape == (8, 16, 16) and video.dtype == np.int64  # ESPnet widens integer arrays
    assert video.min() >= 0 and video.max() <= 255
    assert np.abs(video - originals["utt2"].astype(np.int64)).mean() < 3  # lossy x264
    np.testing.assert_array_equal(data["text"], [3, 4, 5])

    uttids, batch = AVSRCollateFn()([dataset[k] for k in ["utt1", "utt2", "utt3"]])
    assert uttids == ["utt1", "utt2", "utt3"]
    assert batch["video"].shape == (3, 8, 16, 16) and str(batch["video"].dtype) == "torch.uint8"
    assert batch["video_lengths"].tolist() == [5, 8, 3]
    assert batch["text"][0].tolist() == [3, 4, -1, -1]


def test_iterable_dataset_falls_back_to_the_registered_type(corpus):
    register_video_data_type()
    root, _ = corpus
    dataset = IterableESPnetDataset([(str(root / "video.scp"), "video", "video")])
    shapes = {uid: data["video"].shape for uid, data in dataset}
    assert shapes == {"utt1": (5, 16, 16), "utt2": (8, 16, 16), "utt3": (3, 16, 16)}


def test_dataset_error_names_utterance_and_scp(corpus):
    register_video_data_type()
    root, _ = corpus
    (root / "utt3.mp4").write_bytes(b"not a video at all")
    dataset = ESPnetDataset([(str(root / "video.scp"), "video", "video")])
    scp = re.escape(str(root / "video.scp"))
    with pytest.raises(VideoReadError, match=f"utterance 'utt3' in {scp}: .*utt3.mp4: not a decodable"):
        dataset["utt3"]
