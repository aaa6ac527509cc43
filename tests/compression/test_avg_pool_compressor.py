import pytest
import torch

from espnet_omni_avsr.compression.avg_pool_compressor import AvgPoolCompressor


@pytest.mark.parametrize("rate,expected", [(1, 7), (2, 4), (3, 3), (4, 2), (7, 1), (8, 1)])
def test_lengths_on_odd_length(rate, expected):
    compressor = AvgPoolCompressor(input_size=3, rate=rate)
    ys, lens = compressor(torch.randn(2, 7, 3), torch.tensor([7, 5]))
    assert lens.tolist() == [expected, -(-5 // rate)]
    assert ys.shape == (2, expected, 3) and compressor.output_size() == 3


def test_partial_window_averages_valid_frames_only():
    xs = torch.arange(1.0, 8.0).view(1, 7, 1)  # frames 1..7
    ys, lens = AvgPoolCompressor(input_size=1, rate=3)(xs, torch.tensor([7]))
    assert lens.tolist() == [3]
    assert ys.flatten().tolist() == [2.0, 5.0, 7.0]  # last window = frame 7 alone
    ys, lens = AvgPoolCompressor(input_size=1, rate=4)(xs, torch.tensor([6]))
    assert lens.tolist() == [2]
    assert ys.flatten().tolist() == [2.5, 5.5]  # frame 7 is padding, not averaged in


def test_padding_invariance_and_zero_padding():
    compressor = AvgPoolCompressor(input_size=4, rate=4)
    lengths = [13, 5, 1]
    xs = torch.randn(3, 13, 4)
    xs[1, 5:] = 100.0  # junk in the padding
    ys, lens = compressor(xs, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone, alone_lens = compressor(xs[i : i + 1, :n], torch.tensor([n]))
        m = alone_lens.item()
        torch.testing.assert_close(ys[i, :m], alone[0])
        assert ys[i, m:].abs().sum() == 0


def test_rate_one_is_identity():
    xs = torch.randn(2, 5, 3)
    ys, lens = AvgPoolCompressor(input_size=3, rate=1)(xs, torch.tensor([5, 5]))
    torch.testing.assert_close(ys, xs)
    assert lens.tolist() == [5, 5]


def test_gradients_flow():
    xs = torch.randn(2, 9, 3, requires_grad=True)
    ys, _ = AvgPoolCompressor(input_size=3, rate=2)(xs, torch.tensor([9, 4]))
    ys.sum().backward()
    assert xs.grad[1, 4:].abs().sum() == 0 and xs.grad[0].abs().sum() > 0


@pytest.mark.parametrize("rate", [0, -2, 2.5, True, "4"])
def test_invalid_rate(rate):
    with pytest.raises(ValueError, match="rate"):
        AvgPoolCompressor(input_size=3, rate=rate)


def test_invalid_input():
    compressor = AvgPoolCompressor(input_size=3, rate=2)
    with pytest.raises(ValueError, match="input_size"):
        AvgPoolCompressor(input_size=0, rate=2)
    with pytest.raises(ValueError, match=r"\(B, T, 3\)"):
        compressor(torch.randn(1, 4, 5), torch.tensor([4]))
    with pytest.raises(ValueError, match="lengths"):
        compressor(torch.randn(1, 4, 3), torch.tensor([5]))
