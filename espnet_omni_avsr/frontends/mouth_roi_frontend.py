"""Mouth-ROI frames, cropped and normalised, for encoders that hold their own lip trunk (AV-HuBERT)."""
from typing import Tuple

import torch

from espnet_omni_avsr.frontends.abs_video_frontend import AbsVideoFrontend
from espnet_omni_avsr.frontends.mouth_roi_transform import MouthROITransform


class MouthROIFrontend(AbsVideoFrontend):
    """MouthROITransform, then each frame flattened: (B, T, H, W) -> (B, T, crop_size ** 2).

    No parameters. It exists so that the crop and time-mask augmentation follow train/eval mode
    while the encoder behind it (AVHubertEncoder, which holds the ResNet trunk) is frozen and kept
    in eval mode. Padded frames are exactly 0. Args: see MouthROITransform.
    """

    def __init__(
        self,
        crop_size: int = 88,
        mean: float = 0.421,
        std: float = 0.165,
        time_mask: bool = False,
        time_mask_max_frames: int = 10,
        time_mask_stride: int = 25,
    ):
        super().__init__()
        self.transform = MouthROITransform(
            crop_size=crop_size,
            mean=mean,
            std=std,
            time_mask=time_mask,
            time_mask_max_frames=time_mask_max_frames,
            time_mask_stride=time_mask_stride,
        )

    def output_size(self) -> int:
        return self.transform.crop_size ** 2

    def forward(self, video: torch.Tensor, video_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x, video_lengths = self.transform(video, video_lengths)  # (B, T, c, c)
        return x.flatten(2), video_lengths  # (B, T, c * c)
