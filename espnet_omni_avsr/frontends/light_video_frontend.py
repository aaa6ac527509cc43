"""A light lip front end for CPU runs: half-resolution crop, 3-D conv stem, small 2-D conv stack."""
from typing import Sequence, Tuple

import torch

from espnet_omni_avsr.frontends.abs_video_frontend import AbsVideoFrontend
from espnet_omni_avsr.frontends.mouth_roi_transform import MouthROITransform
from espnet_omni_avsr.utils.trainable import keep_frozen_in_eval, set_trainable


class LightVideoFrontend(AbsVideoFrontend):
    """Mouth-ROI frames -> ``output_size``-dim feature per frame, about 1.3M parameters by default.

    MouthROITransform (crop 88), average-pool by ``downsample`` (88 -> 44), then
    Conv3d(1, stem_channels, (5, 5, 5), stride (1, 2, 2), padding (2, 2, 2)) + BatchNorm3d + ReLU
    (44 -> 22), then per frame one block per entry of ``channels``: Conv2d 3x3 stride 2 + BN +
    ReLU, Conv2d 3x3 + BN + ReLU (22 -> 11 -> 6 -> 3), global average pool, Linear to
    ``output_size``. About 25M multiply-adds per frame (ResNet-18 front end: about 1G).

    Only the stem mixes frames in time (5 frames, zero padding), and padded frames are exactly 0
    when they reach it, so in eval mode an utterance gives the same features alone and inside a
    padded batch. Features of padded frames are set to 0. (In training mode BatchNorm statistics
    come from the whole batch, padding included.)

    Args:
        output_size: feature dimension D.
        crop_size: mouth crop side before downsampling.
        downsample: average-pool factor applied to the crop (1 keeps full resolution).
        stem_channels: channels of the 3-D stem.
        channels: channels of the strided 2-D blocks.
        frozen: no trainable parameters, and BatchNorm keeps its running statistics when the
            model trains (the crop/time-mask augmentation still follows train/eval mode).
        mean, std, time_mask, time_mask_max_frames, time_mask_stride: see MouthROITransform.

    forward(video, video_lengths):
        video: (B, T, H, W) uint8 (0..255) or float in [0, 1]; video_lengths: (B,).
        returns feats (B, T, output_size) and video_lengths.
    """

    def __init__(
        self,
        output_size: int = 256,
        crop_size: int = 88,
        downsample: int = 2,
        stem_channels: int = 32,
        channels: Sequence[int] = (64, 128, 256),
        frozen: bool = False,
        mean: float = 0.421,
        std: float = 0.165,
        time_mask: bool = False,
        time_mask_max_frames: int = 10,
        time_mask_stride: int = 25,
    ):
        super().__init__()
        if output_size <= 0 or stem_channels <= 0:
            raise ValueError(f"output_size and stem_channels must be positive, got {output_size}, {stem_channels}")
        if downsample <= 0 or crop_size % downsample:
            raise ValueError(f"downsample must be a positive divisor of crop_size {crop_size}, got {downsample}")
        channels = [int(c) for c in channels]
        if not channels or min(channels) <= 0:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        self._output_size = output_size
        self.frozen = frozen
        self.transform = MouthROITransform(
            crop_size=crop_size,
            mean=mean,
            std=std,
            time_mask=time_mask,
            time_mask_max_frames=time_mask_max_frames,
            time_mask_stride=time_mask_stride,
        )
        self.pool = torch.nn.AvgPool2d(downsample) if downsample > 1 else torch.nn.Identity()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv3d(1, stem_channels, (5, 5, 5), stride=(1, 2, 2), padding=(2, 2, 2), bias=False),
            torch.nn.BatchNorm3d(stem_channels),
            torch.nn.ReLU(inplace=True),
        )
        layers = []
        in_channels = stem_channels
        for out_channels in channels:
            layers += [
                torch.nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                torch.nn.BatchNorm2d(out_channels),
                torch.nn.ReLU(inplace=True),
                torch.nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(out_channels),
                torch.nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        self.blocks = torch.nn.Sequential(*layers)
        self.proj = torch.nn.Linear(in_channels, output_size)
        if frozen:  # BatchNorm keeps its running statistics; the augmentation follows train/eval
            set_trainable(self, False, eval_parts=(self.stem, self.blocks))

    def output_size(self) -> int:
        return self._output_size

    def train(self, mode: bool = True) -> "LightVideoFrontend":
        super().train(mode)
        return keep_frozen_in_eval(self)

    def forward(
        self, video: torch.Tensor, video_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        x, video_lengths = self.transform(video, video_lengths)  # (B, T, c, c)
        batch_size, num_frames = x.shape[:2]
        x = self.pool(x)  # (B, T, c/k, c/k)
        x = self.stem(x.unsqueeze(1))  # (B, C0, T, c/2k, c/2k)
        x = x.transpose(1, 2).flatten(0, 1)  # (B*T, C0, h, w)
        x = self.blocks(x)  # (B*T, C, h', w')
        x = x.mean(dim=(2, 3)).view(batch_size, num_frames, -1)  # (B, T, C)
        feats = self.proj(x)  # (B, T, D)
        valid = torch.arange(num_frames, device=feats.device)[None, :] < video_lengths.to(feats.device)[:, None]
        return feats * valid[:, :, None], video_lengths
