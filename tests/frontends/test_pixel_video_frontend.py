import pytest
import torch

from espnet_omni_avsr.frontends.abs_video_frontend import AbsVideoFrontend
from espnet_omni_avsr.frontends.pixel_video_frontend import PixelVideoFrontend

SIZE, CROP = 28, 24


def test_default_size_and_shapes():
    frontend = PixelVideoFrontend()
    assert isinstance(frontend, AbsVideoFrontend) and frontend.output_size() == 256
    num_params = sum(p.numel() for p in frontend.parameters())
    assert num_params == (484 * 256 + 256) + 2 * 256 + (256 * 256 + 256)
    with torch.no_grad():
        feats, lengths = frontend.eval()(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8), torch.tensor([3, 2]))
    assert feats.shape == (2, 3, 256) and lengths.tolist() == [3, 2]


def test_forward_backward_and_padding_is_zero():
    torch.manual_seed(0)
    frontend = PixelVideoFrontend(output_size=16, crop_size=CROP, downsample=4, time_mask=True).train()
    video = torch.randint(0, 256, (3, 6, SIZE, SIZE), dtype=torch.uint8)
    feats, _ = frontend(video, torch.tensor([6, 4, 2]))
    assert feats.shape == (3, 6, 16)
    assert feats[1, 4:].eq(0).all() and feats[2, 2:].eq(0).all()
    feats.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in frontend.parameters())


@pytest.mark.parametrize("training", [False, True])
def test_padding_invariance(training):
    """Per-utterance statistics use valid frames only: alone == inside a padded batch."""
    torch.manual_seed(0)
    frontend = PixelVideoFrontend(output_size=32, crop_size=SIZE, downsample=4).train(training)
    short = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8)
    long = torch.randint(0, 256, (1, 8, SIZE, SIZE), dtype=torch.uint8)
    batch = torch.zeros(2, 8, SIZE, SIZE, dtype=torch.uint8)
    batch[0, :3], batch[1] = short[0], long[0]
    with torch.no_grad():
        alone, _ = frontend(short, torch.tensor([3]))
        padded, _ = frontend(batch, torch.tensor([3, 8]))
    torch.testing.assert_close(padded[0, :3], alone[0], atol=1e-5, rtol=1e-5)


def test_static_appearance_is_removed():
    """Adding a fixed picture to every frame (another face, another light) changes nothing; motion does."""
    torch.manual_seed(0)
    frontend = PixelVideoFrontend(output_size=8, crop_size=SIZE, downsample=4).eval()
    motion = torch.rand(1, 5, SIZE, SIZE) * 0.5
    face = torch.rand(1, 1, SIZE, SIZE) * 0.5
    lengths = torch.tensor([5])
    with torch.no_grad():
        plain, _ = frontend(motion, lengths)
        other_face, _ = frontend(motion + face, lengths)
        brighter_motion, _ = frontend(motion * 1.5, lengths)  # gain is normalised away too
        other_motion, _ = frontend(motion.flip(1), lengths)
    torch.testing.assert_close(other_face, plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(brighter_motion, plain, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(other_motion, plain, atol=1e-3)


def test_frozen_and_bad_arguments():
    assert not any(p.requires_grad for p in PixelVideoFrontend(crop_size=CROP, downsample=4, frozen=True).parameters())
    with pytest.raises(ValueError, match="divisor"):
        PixelVideoFrontend(crop_size=88, downsample=3)
    with pytest.raises(ValueError, match="output_size"):
        PixelVideoFrontend(output_size=0)
