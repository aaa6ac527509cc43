import pytest
import torch

from espnet_omni_avsr.frontends.abs_video_frontend import AbsVideoFrontend
from espnet_omni_avsr.frontends.resnet18_video_frontend import ResNet18VideoFrontend

# Tiny frames keep the 11M-parameter ResNet-18 fast: 28x28 crops of 32x32 frames.
SIZE, CROP = 32, 28


def randomise_batchnorm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def test_forward_backward_shapes():
    torch.manual_seed(0)
    frontend = ResNet18VideoFrontend(crop_size=CROP, time_mask=True).train()
    assert isinstance(frontend, AbsVideoFrontend) and frontend.output_size() == 512
    video = torch.randint(0, 256, (2, 5, SIZE, SIZE), dtype=torch.uint8)
    lengths = torch.tensor([5, 3])
    feats, out_lengths = frontend(video, lengths)
    assert feats.shape == (2, 5, 512)
    assert out_lengths.tolist() == [5, 3]
    assert feats[1, 3:].eq(0).all()
    feats.sum().backward()
    stem = frontend.resnet.frontend3D[0].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_default_configuration_on_96x96_frames():
    frontend = ResNet18VideoFrontend().eval()
    with torch.no_grad():
        feats, _ = frontend(torch.randint(0, 256, (1, 2, 96, 96), dtype=torch.uint8), torch.tensor([2]))
    assert feats.shape == (1, 2, 512)


def test_padding_invariance_in_eval_mode():
    torch.manual_seed(0)
    frontend = ResNet18VideoFrontend(crop_size=CROP).eval()
    randomise_batchnorm(frontend)
    short = torch.randint(0, 256, (1, 4, SIZE, SIZE), dtype=torch.uint8)
    long = torch.randint(0, 256, (1, 7, SIZE, SIZE), dtype=torch.uint8)
    batch = torch.zeros(2, 7, SIZE, SIZE, dtype=torch.uint8)
    batch[0, :4], batch[1] = short[0], long[0]
    with torch.no_grad():
        alone, _ = frontend(short, torch.tensor([4]))
        padded, _ = frontend(batch, torch.tensor([4, 7]))
        long_alone, _ = frontend(long, torch.tensor([7]))
    torch.testing.assert_close(padded[0, :4], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[1], long_alone[0], rtol=0, atol=1e-5)
    assert padded[0, 4:].eq(0).all()


def test_frozen_has_no_trainable_parameters_and_fixed_batchnorm():
    frontend = ResNet18VideoFrontend(crop_size=CROP, frozen=True)
    assert not any(p.requires_grad for p in frontend.parameters())
    frontend.train()
    assert frontend.transform.training and not frontend.resnet.training
    bn = frontend.resnet.frontend3D[1]
    before = bn.running_mean.clone()
    frontend(torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8), torch.tensor([3]))
    assert torch.equal(bn.running_mean, before)
    trainable = ResNet18VideoFrontend(crop_size=CROP)
    assert all(p.requires_grad for p in trainable.parameters())


def test_invalid_arguments():
    with pytest.raises(ValueError, match="relu_type"):
        ResNet18VideoFrontend(relu_type="swish")
