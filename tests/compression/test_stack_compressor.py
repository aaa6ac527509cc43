import pytest
import torch

from espnet_omni_avsr.compression.stack_compressor import StackCompressor


@pytest.mark.parametrize("rate,expected", [(1, 7), (2, 4), (3, 3), (4, 2), (7, 1), (8, 1)])
def test_lengths_on_odd_length(rate, expected):
    compressor = StackCompressor(input_size=3, rate=rate)
    ys, lens = compressor(torch.randn(2, 7, 3), torch.tensor([7, 5]))
    assert lens.tolist() == [expected, -(-5 // rate)]
    assert ys.shape == (2, expected, 3 * rate) and compressor.output_size() == 3 * rate


def test_frame_order_and_partial_window():
    xs = torch.arange(1.0, 15.0).view(1, 7, 2)  # frame t = (2t+1, 2t+2)
    ys, lens = StackCompressor(input_size=2, rate=3)(xs, torch.tensor([7]))
    assert lens.tolist() == [3]
    assert ys[0, 0].tolist() == [1, 2, 3, 4, 5, 6]
    assert ys[0, 2].tolist() == [13, 14, 0, 0, 0, 0]  # frame 7, then zeros
    ys, lens = StackCompressor(input_size=2, rate=4)(xs, torch.tensor([6]))
    assert lens.tolist() == [2]
    assert ys[0, 1].tolist() == [9, 10, 11, 12, 0, 0, 0, 0]  # padding frame 7 not stacked in


def test_padding_invariance_and_zero_padding():
    compressor = StackCompressor(input_size=4, rate=3)
    lengths = [11, 4, 1]
    xs = torch.randn(3, 11, 4)
    xs[1, 4:] = -50.0
    ys, lens = compressor(xs, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone, alone_lens = compressor(xs[i : i + 1, :n], torch.tensor([n]))
        m = alone_lens.item()
        torch.testing.assert_close(ys[i, :m], alone[0])
        assert ys[i, m:].abs().sum() == 0


def test_rate_one_is_identity():
    xs = torch.randn(2, 5, 3)
    ys, lens = StackCompressor(input_size=3, rate=1)(xs, torch.tensor([5, 5]))
    torch.testing.assert_close(ys, xs)
    assert lens.tolist() == [5, 5]


def test_gradients_flow():
    xs = torch.randn(2, 9, 3, requires_grad=True)
    ys, _ = StackCompressor(input_size=3, rate=4)(xs, torch.tensor([9, 6]))
    ys.sum().backward()
    assert xs.grad[1, 6:].abs().sum() == 0 and xs.grad[0].abs().sum() > 0


@pytest.mark.parametrize("rate", [0, -1, 1.5, False, None])
def test_invalid_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        StackCompressor(input_size=3, rate=rate)
