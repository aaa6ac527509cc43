import numpy as np
import pytest
import torch

from espnet_omni_avsr.data.collate import AVSRCollateFn


def item(num_samples: int, num_frames: int, num_tokens: int, size=(6, 6), dtype=np.int64, fill: int = 7):
    return {
        "speech": np.ones(num_samples, dtype=np.float32),
        "video": np.full((num_frames, *size), fill, dtype=dtype),
        "text": np.arange(1, num_tokens + 1, dtype=np.int64),
    }


def test_pads_and_adds_lengths():
    data = [("a", item(10, 3, 2)), ("b", item(16, 5, 4, fill=255))]
    uttids, batch = AVSRCollateFn()(data)
    assert uttids == ["a", "b"]
    assert list(batch) == ["speech", "speech_lengths", "video", "video_lengths", "text", "text_lengths"]

    assert batch["speech"].dtype == torch.float32 and batch["speech"].shape == (2, 16)
    assert batch["speech"][0, 10:].eq(0).all() and batch["speech"][0, :10].eq(1).all()
    assert batch["speech_lengths"].tolist() == [10, 16]

    video = batch["video"]
    assert video.dtype == torch.uint8 and video.shape == (2, 5, 6, 6)  # int64 in, uint8 out
    assert video[0, :3].eq(7).all() and video[0, 3:].eq(0).all() and video[1].eq(255).all()
    assert batch["video_lengths"].dtype == torch.long and batch["video_lengths"].tolist() == [3, 5]

    assert batch["text"].tolist() == [[1, 2, -1, -1], [1, 2, 3, 4]]
    assert batch["text_lengths"].tolist() == [2, 4]


def test_uint8_and_float_video_keep_their_dtype():
    _, batch = AVSRCollateFn()([("a", item(4, 2, 1, dtype=np.uint8)), ("b", item(4, 3, 1, dtype=np.uint8))])
    assert batch["video"].dtype == torch.uint8 and batch["video"][0, 2].eq(0).all()
    data = [("a", item(4, 2, 1, dtype=np.float32)), ("b", item(4, 3, 1, dtype=np.float32))]
    _, batch = AVSRCollateFn(float_pad_value=-5.0)(data)
    assert batch["video"].dtype == torch.float32 and batch["video"][0, 2].eq(0).all()  # video pads 0
    assert batch["speech"].shape == (2, 4)


def test_frame_size_mismatch_names_utterances_and_sizes():
    data = [("spk1_a", item(4, 2, 1)), ("spk1_b", item(4, 2, 1, size=(8, 6))), ("spk2_c", item(4, 2, 1))]
    with pytest.raises(ValueError, match=r"6x6: spk1_a, spk2_c; 8x6: spk1_b"):
        AVSRCollateFn()(data)


def test_bad_video_values_and_shapes():
    with pytest.raises(ValueError, match=r"'b' holds values in \[300, 300\]"):
        AVSRCollateFn()([("a", item(4, 2, 1)), ("b", item(4, 2, 1, fill=300))])
    bad = item(4, 2, 1)
    bad["video"] = np.zeros((2, 36), dtype=np.int64)
    with pytest.raises(ValueError, match=r"'b' must be \(T, H, W\)"):
        AVSRCollateFn()([("a", item(4, 2, 1)), ("b", bad)])
    missing = item(4, 2, 1)
    del missing["video"]
    with pytest.raises(ValueError, match=r"utterance 'b' has no \['video'\]"):
        AVSRCollateFn()([("a", item(4, 2, 1)), ("b", missing)])


def test_not_sequence_and_video_only():
    data = [("a", {"video": np.zeros((2, 4, 4), np.int64)}), ("b", {"video": np.zeros((3, 4, 4), np.int64)})]
    _, batch = AVSRCollateFn(not_sequence=["video"])(data)
    assert list(batch) == ["video"]
    _, batch = AVSRCollateFn()(data)
    assert list(batch) == ["video", "video_lengths"]
    with pytest.raises(TypeError, match="sequence of key names"):
        AVSRCollateFn(video_keys="video")
