import pytest
import torch

from espnet_omni_avsr.frontends.mouth_roi_transform import MouthROITransform

MEAN, STD = 0.421, 0.165


def coordinate_video(batch: int, frames: int, size: int) -> torch.Tensor:
    """(B, T, size, size) uint8 whose pixel (i, j) holds i * size + j: a crop reveals its corner."""
    grid = torch.arange(size * size, dtype=torch.uint8).view(size, size)
    return grid.expand(batch, frames, size, size).clone()


def corner(out: torch.Tensor, size: int) -> tuple:
    """(top, left) of the crop that produced ``out`` (C, c, c) from coordinate_video."""
    value = int(round(float(out[0, 0, 0]) * STD * 255 + MEAN * 255))
    return divmod(value, size)


def test_normalisation_values():
    transform = MouthROITransform(crop_size=4).eval()
    video = torch.tensor([0, 255, 100], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 2, 6, 6)
    out, lengths = transform(video, torch.tensor([2, 2, 2]))
    assert out.shape == (3, 2, 4, 4) and out.dtype == torch.float32
    expected = (torch.tensor([0.0, 1.0, 100 / 255]) - MEAN) / STD
    torch.testing.assert_close(out[:, :, 0, 0], expected[:, None].expand(3, 2), rtol=0, atol=1e-6)
    assert lengths.tolist() == [2, 2, 2]
    # float input in [0, 1] is taken as already scaled
    out_float, _ = transform(video.float() / 255, torch.tensor([2, 2, 2]))
    torch.testing.assert_close(out_float, out, rtol=0, atol=1e-6)


def test_custom_mean_std():
    transform = MouthROITransform(crop_size=2, mean=0.5, std=0.25).eval()
    out, _ = transform(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), torch.tensor([1]))
    assert torch.allclose(out, torch.full_like(out, 2.0))


def test_centre_crop_position():
    transform = MouthROITransform(crop_size=8).eval()
    out, _ = transform(coordinate_video(2, 3, 12), torch.tensor([3, 3]))
    assert out.shape == (2, 3, 8, 8)
    assert corner(out[0], 12) == (2, 2) and corner(out[1], 12) == (2, 2)
    # odd margins round like torchvision's CenterCrop: (11 - 8) / 2 = 1.5 -> 2
    out, _ = MouthROITransform(crop_size=8).eval()(coordinate_video(1, 1, 11), torch.tensor([1]))
    assert corner(out[0], 11) == (2, 2)


def test_random_crop_per_utterance_in_training():
    torch.manual_seed(0)
    transform = MouthROITransform(crop_size=8).train()
    out, _ = transform(coordinate_video(32, 3, 12), torch.full((32,), 3))
    corners = set()
    for b in range(32):
        top, left = corner(out[b], 12)
        assert 0 <= top <= 4 and 0 <= left <= 4
        # one position for all frames of the utterance
        assert all(corner(out[b, t : t + 1], 12) == (top, left) for t in range(3))
        corners.add((top, left))
    assert len(corners) > 5


def test_padded_frames_are_zero_and_batch_invariant():
    transform = MouthROITransform(crop_size=8).eval()
    torch.manual_seed(0)
    short = torch.randint(0, 256, (1, 3, 10, 10), dtype=torch.uint8)
    batch = torch.randint(0, 256, (2, 6, 10, 10), dtype=torch.uint8)
    batch[0, :3] = short[0]
    out, _ = transform(batch, torch.tensor([3, 6]))
    assert out[0, 3:].eq(0).all() and not out[1].eq(0).all()
    alone, _ = transform(short, torch.tensor([3]))
    torch.testing.assert_close(out[0, :3], alone[0], rtol=0, atol=0)


def test_time_mask_only_in_training_and_inside_utterance():
    torch.manual_seed(0)
    black = -MEAN / STD
    transform = MouthROITransform(crop_size=4, time_mask=True, time_mask_max_frames=4, time_mask_stride=10)
    video = torch.full((8, 40, 4, 4), 200, dtype=torch.uint8)
    lengths = torch.tensor([40, 30, 20, 10, 5, 40, 40, 40])

    out, _ = transform.eval()(video, lengths)
    assert not torch.isclose(out, torch.tensor(black)).any()

    out, _ = transform.train()(video, lengths)
    frame_values = out[:, :, 0, 0]
    masked = torch.isclose(frame_values, torch.tensor(black))
    padded = torch.arange(40)[None, :] >= lengths[:, None]
    assert not (masked & padded).any()
    assert frame_values[padded].eq(0).all()
    assert masked.any()
    for b, length in enumerate(lengths.tolist()):
        # at most ceil(length / 10) masks of at most 4 frames
        assert int(masked[b].sum()) <= -(-length // 10) * 4


def test_time_mask_off_by_default():
    transform = MouthROITransform(crop_size=4).train()
    out, _ = transform(torch.full((2, 50, 4, 4), 200, dtype=torch.uint8), torch.tensor([50, 50]))
    assert torch.allclose(out, torch.full_like(out, (200 / 255 - MEAN) / STD))


def test_invalid_input_and_arguments():
    transform = MouthROITransform(crop_size=8)
    with pytest.raises(ValueError, match="smaller than crop_size"):
        transform(torch.zeros(1, 2, 6, 6, dtype=torch.uint8), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"\(B, T, H, W\)"):
        transform(torch.zeros(2, 8, 8, dtype=torch.uint8), torch.tensor([2]))
    with pytest.raises(ValueError, match="video_lengths"):
        transform(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\]"):
        transform(torch.full((1, 2, 8, 8), 200.0), torch.tensor([2]))
    with pytest.raises(ValueError, match="crop_size"):
        MouthROITransform(crop_size=0)
    with pytest.raises(ValueError, match="std"):
        MouthROITransform(std=0.0)
