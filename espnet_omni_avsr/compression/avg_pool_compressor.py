"""Average pooling of `rate` adjacent frames (the papers' AvgPool1d(k) compression)."""
from typing import Tuple

import torch

from espnet_omni_avsr.compression.abs_compressor import AbsCompressor


def check_rate_and_size(name: str, input_size: int, rate: int) -> None:
    """Clear ValueErrors for the arguments every fixed-rate compressor takes."""
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise ValueError(f"{name}: rate must be an integer >= 1, got {rate!r}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"{name}: input_size must be an integer >= 1, got {input_size!r}")


def window_frames(
    name: str, xs: torch.Tensor, lengths: torch.Tensor, input_size: int, rate: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zeroes frames past each length and groups them in windows of `rate`.

    xs: (B, T, D), lengths: (B,). Returns windows (B, T', rate, D), frame mask (B, T', rate, 1)
    and the new lengths ceil(lengths / rate); T' = ceil(T / rate).
    """
    if xs.dim() != 3 or xs.size(2) != input_size:
        raise ValueError(f"{name}: expected xs of shape (B, T, {input_size}), got {tuple(xs.shape)}")
    B, T, D = xs.shape
    lengths = lengths.to(device=xs.device, dtype=torch.long)
    if (lengths > T).any() or (lengths < 0).any():
        raise ValueError(f"{name}: lengths {lengths.tolist()} are not within [0, {T}]")
    valid = (torch.arange(T, device=xs.device)[None, :] < lengths[:, None]).to(xs.dtype)  # (B, T)
    xs = xs * valid[:, :, None]
    n_win = -(-T // rate)
    pad = n_win * rate - T
    xs = torch.nn.functional.pad(xs, (0, 0, 0, pad))  # (B, T' * rate, D)
    valid = torch.nn.functional.pad(valid, (0, pad))  # (B, T' * rate)
    out_lens = (lengths + rate - 1) // rate  # ceil
    return xs.view(B, n_win, rate, D), valid.view(B, n_win, rate, 1), out_lens


class AvgPoolCompressor(AbsCompressor):
    """Mean of each window of `rate` frames: (B, T, D) -> (B, ceil(T / rate), D).

    A last, partial window averages only its valid frames; output positions past
    ceil(length / rate) are zero. rate 1 is the identity (padded frames zeroed).
    """

    def __init__(self, input_size: int = 1024, rate: int = 4):
        super().__init__()
        check_rate_and_size("AvgPoolCompressor", input_size, rate)
        self.input_size = input_size
        self.rate = rate

    def output_size(self) -> int:
        return self.input_size

    def forward(self, xs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """xs: (B, T, D), lengths: (B,) -> (B, ceil(T / rate), D), ceil(lengths / rate)."""
        windows, valid, out_lens = window_frames("AvgPoolCompressor", xs, lengths, self.input_size, self.rate)
        count = valid.sum(dim=2)  # (B, T', 1) valid frames per window
        ys = windows.sum(dim=2) / count.clamp(min=1)  # (B, T', D); empty windows stay zero
        return ys, out_lens
