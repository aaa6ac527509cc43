import pytest
import torch

from espnet_omni_avsr.projectors.linear_projector import LinearProjector
from espnet_omni_avsr.projectors.mlp_projector import MLPProjector


@pytest.mark.parametrize("layer_norm", [False, True])
def test_mlp_forward_backward(layer_norm):
    projector = MLPProjector(input_size=12, output_size=8, hidden_size=16, layer_norm=layer_norm)
    assert projector.output_size() == 8
    xs = torch.randn(2, 5, 12, requires_grad=True)
    ys = projector(xs)
    assert ys.shape == (2, 5, 8)
    ys.pow(2).sum().backward()
    assert xs.grad is not None
    assert all(p.grad is not None for p in projector.parameters())
    assert isinstance(projector.norm, torch.nn.LayerNorm) == layer_norm


def test_mlp_is_framewise():
    projector = MLPProjector(input_size=6, output_size=4, hidden_size=8, layer_norm=True)
    xs = torch.randn(1, 5, 6)
    torch.testing.assert_close(projector(xs)[0, :3], projector(xs[:, :3])[0])


def test_mlp_default_hidden_size():
    assert MLPProjector(input_size=4, output_size=3).fc1.out_features == 2048


def test_linear_forward_backward():
    projector = LinearProjector(input_size=12, output_size=8, layer_norm=True)
    xs = torch.randn(2, 5, 12, requires_grad=True)
    ys = projector(xs)
    assert ys.shape == (2, 5, 8) and projector.output_size() == 8
    ys.sum().backward()
    assert projector.linear.weight.grad is not None


@pytest.mark.parametrize("cls", [MLPProjector, LinearProjector])
def test_invalid_arguments(cls):
    with pytest.raises(ValueError, match="input_size"):
        cls(input_size=0, output_size=4)
    with pytest.raises(ValueError, match="output_size"):
        cls(input_size=4, output_size=-1)
    with pytest.raises(ValueError, match="last dim 4"):
        cls(input_size=4, output_size=3)(torch.randn(2, 3, 5))
