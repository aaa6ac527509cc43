"""Concatenation of `rate` adjacent frames (the papers' "stack" compression)."""
from typing import Tuple

import torch

from espnet_omni_avsr.compression.abs_compressor import AbsCompressor
from espnet_omni_avsr.compression.avg_pool_compressor import check_rate_and_size, window_frames


class StackCompressor(AbsCompressor):
    """Frames t*rate .. t*rate+rate-1 concatenated: (B, T, D) -> (B, ceil(T / rate), D * rate).

    The projector that follows does the projection. A last, partial window holds its valid frames
    followed by zeros; output positions past ceil(length / rate) are zero. rate 1 is the identity
    (padded frames zeroed).
    """

    def __init__(self, input_size: int = 1024, rate: int = 4):
        super().__init__()
        check_rate_and_size("StackCompressor", input_size, rate)
        self.input_size = input_size
        self.rate = rate

    def output_size(self) -> int:
        return self.input_size * self.rate

    def forward(self, xs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """xs: (B, T, D), lengths: (B,) -> (B, ceil(T / rate), D * rate), ceil(lengths / rate)."""
        windows, _, out_lens = window_frames("StackCompressor", xs, lengths, self.input_size, self.rate)
        B, n_win, rate, D = windows.shape
        return windows.reshape(B, n_win, rate * D), out_lens
