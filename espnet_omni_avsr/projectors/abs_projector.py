"""Interface of a projector: maps compressed modality tokens into the LLM's embedding space."""
from abc import ABC, abstractmethod

import torch


class AbsProjector(torch.nn.Module, ABC):
    """forward(xs: (B, T, input_size)) -> (B, T, output_size); lengths do not change."""

    @abstractmethod
    def output_size(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
