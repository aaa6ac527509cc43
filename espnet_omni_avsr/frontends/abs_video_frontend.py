"""Interface of a video front end: mouth-ROI frames in, one feature vector per frame out."""
from abc import ABC, abstractmethod
from typing import Tuple

import torch


class AbsVideoFrontend(torch.nn.Module, ABC):
    """Turns mouth-ROI video into per-frame features.

    forward(video, video_lengths):
        video: (B, T, H, W) uint8 (0..255) or float grayscale frames, zero-padded in time.
        video_lengths: (B,) number of valid frames.
        returns feats (B, T, D) with D == output_size() and the lengths (B,), unchanged: front ends
        keep the 25 fps frame rate.
    """

    @abstractmethod
    def output_size(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def forward(
        self, video: torch.Tensor, video_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
