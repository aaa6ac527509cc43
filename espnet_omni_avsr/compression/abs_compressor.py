"""Interface of a token compressor: shortens an encoder's output sequence into LLM tokens.

The contract is tokens and their lengths: `forward(xs, lengths) -> (tokens (B, T', D'), lengths (B,))`.
Nothing downstream derives a token count from the configuration; the prompt, the statistics and the
tokens-per-second figures use the lengths returned. A branch keys its compressors by a condition name
(`ModalityBranch`): the fixed-rate compressors here are named by their rate.
"""
from abc import ABC, abstractmethod
from typing import Tuple

import torch


class AbsCompressor(torch.nn.Module, ABC):
    """Compresses (B, T, D) encoder frames to (B, T', D') tokens.

    A compressor must give an utterance the same tokens alone and inside a padded batch. The
    fixed-rate ones (avg_pool, stack) use T' = ceil(T / rate) per utterance, a last partial window
    built from the valid frames only; a compressor whose count follows something else (a query
    budget per second of speech) returns its own lengths.
    """

    @abstractmethod
    def output_size(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def forward(self, xs: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
