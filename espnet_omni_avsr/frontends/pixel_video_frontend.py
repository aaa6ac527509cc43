"""A pixel lip front end for CPU runs: low-resolution mouth pixels, per-utterance normalised, then an MLP.

Before CNN front ends, audio-visual recognisers read lips from a few hundred low-resolution pixels
(or their DCT) of the mouth region with the utterance's mean removed (feature mean normalisation):
the static picture of a speaker (skin, lip colour, lighting) goes away and the motion stays. This
front end does the same and learns one MLP on the result. On a 2-core CPU it learns to read lips
several times faster than a convolutional front end trained from scratch (README, "The lip
encoder"), because the speaker's appearance no longer has to be learnt away.
"""
from typing import Optional, Tuple

import torch

from espnet_omni_avsr.frontends.abs_video_frontend import AbsVideoFrontend
from espnet_omni_avsr.frontends.mouth_roi_transform import MouthROITransform
from espnet_omni_avsr.utils.trainable import set_trainable


class PixelVideoFrontend(AbsVideoFrontend):
    """Mouth-ROI frames -> ``output_size``-dim feature per frame (about 0.2M parameters by default).

    MouthROITransform (crop 88, scaled and normalised), average-pool by ``downsample``
    (88 -> 22: 484 pixels), remove the utterance's mean frame and divide by the utterance's pixel
    standard deviation (valid frames only), then Linear -> LayerNorm -> ReLU -> Linear.

    Frames are independent after the per-utterance statistics, and those use valid frames only, so
    an utterance gives the same features alone and inside a padded batch (also in training mode,
    for a given crop). Features of padded frames are 0.

    Args:
        output_size: feature dimension D.
        crop_size: mouth crop side before pooling.
        downsample: average-pool factor applied to the crop.
        hidden_size: MLP hidden size (default: output_size).
        frozen: no trainable parameters.
        mean, std, time_mask, time_mask_max_frames, time_mask_stride: see MouthROITransform.

    forward(video, video_lengths):
        video: (B, T, H, W) uint8 (0..255) or float in [0, 1]; video_lengths: (B,).
        returns feats (B, T, output_size) and video_lengths.
    """

    def __init__(
        self,
        output_size: int = 256,
        crop_size: int = 88,
        downsample: int = 4,
        hidden_size: Optional[int] = None,
        frozen: bool = False,
        mean: float = 0.421,
        std: float = 0.165,
        time_mask: bool = False,
        time_mask_max_frames: int = 10,
        time_mask_stride: int = 25,
    ):
        super().__init__()
        if output_size <= 0:
            raise ValueError(f"output_size must be positive, got {output_size}")
        if downsample <= 0 or crop_size % downsample:
            raise ValueError(f"downsample must be a positive divisor of crop_size {crop_size}, got {downsample}")
        hidden_size = hidden_size or output_size
        self._output_size = output_size
        self.transform = MouthROITransform(
            crop_size=crop_size,
            mean=mean,
            std=std,
            time_mask=time_mask,
            time_mask_max_frames=time_mask_max_frames,
            time_mask_stride=time_mask_stride,
        )
        self.pool = torch.nn.AvgPool2d(downsample) if downsample > 1 else torch.nn.Identity()
        num_pixels = (crop_size // downsample) ** 2
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(num_pixels, hidden_size),
            torch.nn.LayerNorm(hidden_size),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden_size, output_size),
        )
        if frozen:  # nothing here depends on the mode but the augmentation, which follows it
            set_trainable(self, False, eval_parts=())

    def output_size(self) -> int:
        return self._output_size

    def forward(
        self, video: torch.Tensor, video_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        x, video_lengths = self.transform(video, video_lengths)  # (B, T, c, c), padded frames 0
        x = self.pool(x).flatten(2)  # (B, T, P)
        num_frames = x.shape[1]
        lengths = video_lengths.to(x.device)
        valid = (torch.arange(num_frames, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)[..., None]
        count = lengths.clamp(min=1).to(x.dtype)[:, None, None]  # (B, 1, 1)
        x = (x - x.sum(dim=1, keepdim=True) / count) * valid  # remove the mean frame
        var = x.pow(2).sum(dim=(1, 2), keepdim=True) / (count * x.shape[2])
        x = x / (var.sqrt() + 1e-5)
        return self.mlp(x) * valid, video_lengths
