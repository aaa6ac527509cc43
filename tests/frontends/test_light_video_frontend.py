import pytest
import torch

from espnet_omni_avsr.frontends.abs_video_frontend import AbsVideoFrontend
from espnet_omni_avsr.frontends.light_video_frontend import LightVideoFrontend

SIZE, CROP = 28, 24


def randomise_batchnorm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def test_default_size_and_shapes():
    frontend = LightVideoFrontend()
    assert isinstance(frontend, AbsVideoFrontend) and frontend.output_size() == 256
    num_params = sum(p.numel() for p in frontend.parameters())
    assert 1_000_000 < num_params < 3_000_000
    with torch.no_grad():
        feats, lengths = frontend.eval()(torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8), torch.tensor([3, 2]))
    assert feats.shape == (2, 3, 256) and lengths.tolist() == [3, 2]


def test_forward_backward():
    torch.manual_seed(0)
    frontend = LightVideoFrontend(output_size=16, crop_size=CROP, time_mask=True).train()
    video = torch.randint(0, 256, (3, 6, SIZE, SIZE), dtype=torch.uint8)
    feats, _ = frontend(video, torch.tensor([6, 4, 2]))
    assert feats.shape == (3, 6, 16)
    assert feats[1, 4:].eq(0).all() and feats[2, 2:].eq(0).all()
    feats.pow(2).sum().backward()
    assert all(p.grad is not None for p in frontend.parameters())
    assert frontend.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("downsample", [1, 2])
def test_padding_invariance_in_eval_mode(downsample):
    torch.manual_seed(0)
    frontend = LightVideoFrontend(output_size=32, crop_size=CROP, downsample=downsample).eval()
    randomise_batchnorm(frontend)
    short = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8)
    long = torch.randint(0, 256, (1, 8, SIZE, SIZE), dtype=torch.uint8)
    batch = torch.zeros(2, 8, SIZE, SIZE, dtype=torch.uint8)
    batch[0, :3], batch[1] = short[0], long[0]
    with torch.no_grad():
        alone, _ = frontend(short, torch.tensor([3]))
        padded, _ = frontend(batch, torch.tensor([3, 8]))
        long_alone, _ = frontend(long, torch.tensor([8]))
    torch.testing.assert_close(padded[0, :3], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[1], long_alone[0], rtol=0, atol=1e-5)
    assert padded[0, 3:].eq(0).all()


def test_frozen_has_no_trainable_parameters_and_fixed_batchnorm():
    frontend = LightVideoFrontend(crop_size=CROP, frozen=True)
    assert not any(p.requires_grad for p in frontend.parameters())
    frontend.train()
    assert frontend.transform.training and not frontend.stem.training and not frontend.blocks.training
    before = frontend.stem[1].running_mean.clone()
    frontend(torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8), torch.tensor([3]))
    assert torch.equal(frontend.stem[1].running_mean, before)
    assert all(p.requires_grad for p in LightVideoFrontend(crop_size=CROP).parameters())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="divisor"):
        LightVideoFrontend(crop_size=88, downsample=3)
    with pytest.raises(ValueError, match="channels"):
        LightVideoFrontend(channels=())
    with pytest.raises(ValueError, match="positive"):
        LightVideoFrontend(output_size=0)
