"""Interface of a token compressor: shortens an encoder's output sequence by an integer rate."""
from abc import ABC, abstractmethod
from typing import Tuple

import torch


class AbsCompressor(torch.nn.Module, ABC):
    """Compresses (B, T, D) encoder frames to (B, T', D') tokens.

    Every compressor uses the same length rule: T' = ceil(T / rate) for each utterance; a last,
    partial window is built from the valid frames only, so an utterance gives the same tokens alone
    and inside a padded batch.
    """

    rate: int

    @abstractmethod
    def output_size(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def forward(self, xs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
