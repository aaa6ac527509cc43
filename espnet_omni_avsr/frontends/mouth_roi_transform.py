"""Mouth-ROI normalisation as in auto_avsr / Llama-AVSR: scale, crop, time-mask, normalise.

Training: pixels / 255, a random 88x88 crop (one position per utterance), optional adaptive time
masking, then (x - 0.421) / 0.165. Evaluation: the same with a centre crop and no masking.
"""
from typing import Tuple

import torch


class MouthROITransform(torch.nn.Module):
    """(B, T, H, W) uint8 or float frames -> (B, T, crop, crop) normalised float.

    Args:
        crop_size: side of the square crop (88 for 96x96 mouth ROIs).
        mean: pixel mean after scaling to [0, 1].
        std: pixel standard deviation after scaling to [0, 1].
        time_mask: in training mode, black out random runs of frames (auto_avsr's adaptive time
            mask): one mask per started ``time_mask_stride`` valid frames, each of a length
            drawn uniformly from [0, time_mask_max_frames], at a uniform position inside the
            utterance. Masked frames are set to black (0 before normalisation).
        time_mask_max_frames: longest mask in frames (10 = 0.4 s at 25 fps).
        time_mask_stride: valid frames per mask (25 = one mask per second at 25 fps).

    forward(video, video_lengths):
        video: (B, T, H, W); integer dtypes hold 0..255 and are divided by 255, float input must
            already lie in [0, 1] (checked). H, W >= crop_size.
        video_lengths: (B,) valid frames per utterance.
        returns (B, T, crop_size, crop_size) float and the lengths unchanged. Frames at
        t >= length are exactly 0, so an utterance gives the same output alone and padded.

    Random crop positions and masks use torch's global generator (torch.manual_seed).
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
        if crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if time_mask_max_frames < 0:
            raise ValueError(f"time_mask_max_frames must be >= 0, got {time_mask_max_frames}")
        if time_mask_stride <= 0:
            raise ValueError(f"time_mask_stride must be positive, got {time_mask_stride}")
        self.crop_size = crop_size
        self.mean = mean
        self.std = std
        self.time_mask = time_mask
        self.time_mask_max_frames = time_mask_max_frames
        self.time_mask_stride = time_mask_stride

    def extra_repr(self) -> str:
        return (
            f"crop_size={self.crop_size}, mean={self.mean}, std={self.std}, "
            f"time_mask={self.time_mask}, time_mask_max_frames={self.time_mask_max_frames}, "
            f"time_mask_stride={self.time_mask_stride}"
        )

    def crop_offsets(self, height: int, width: int, batch_size: int) -> torch.Tensor:
        """(B, 2) top/left corners: random per utterance in training, the centre otherwise."""
        if self.training:
            top = torch.randint(0, height - self.crop_size + 1, (batch_size,))
            left = torch.randint(0, width - self.crop_size + 1, (batch_size,))
            return torch.stack([top, left], dim=1)
        # round() of the half difference, as torchvision's CenterCrop does
        top, left = int(round((height - self.crop_size) / 2.0)), int(round((width - self.crop_size) / 2.0))
        return torch.tensor([[top, left]]).expand(batch_size, 2)

    def forward(
        self, video: torch.Tensor, video_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if video.dim() != 4:
            raise ValueError(f"video must be (B, T, H, W), got shape {tuple(video.shape)}")
        batch_size, num_frames, height, width = video.shape
        if height < self.crop_size or width < self.crop_size:
            raise ValueError(f"frames of {height}x{width} are smaller than crop_size {self.crop_size}")
        if video_lengths.shape != (batch_size,):
            raise ValueError(
                f"video_lengths must be ({batch_size},), got shape {tuple(video_lengths.shape)}"
            )

        # Crop first: it is cheaper to convert 88x88 than 96x96.
        c = self.crop_size
        if self.training:
            offsets = self.crop_offsets(height, width, batch_size).tolist()
            x = torch.stack([video[b, :, top : top + c, left : left + c] for b, (top, left) in enumerate(offsets)])
        else:
            top, left = self.crop_offsets(height, width, 1)[0].tolist()
            x = video[:, :, top : top + c, left : left + c]

        if video.dtype.is_floating_point:
            if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
                raise ValueError(
                    "float video must be scaled to [0, 1]; pass uint8 frames for 0..255 values"
                )
        elif video.dtype == torch.bool or video.dtype.is_complex:
            raise ValueError(f"video must be an integer or float tensor, got {video.dtype}")
        else:
            x = x.float() / 255.0  # (B, T, c, c)

        valid = torch.arange(num_frames, device=x.device)[None, :] < video_lengths.to(x.device)[:, None]
        if self.training and self.time_mask:
            valid_unmasked = valid & ~self._time_masks(video_lengths, num_frames).to(x.device)
            x = x * valid_unmasked[:, :, None, None]  # masked frames -> black

        x = (x - self.mean) / self.std
        x = x * valid[:, :, None, None]  # padded frames -> exactly 0
        return x, video_lengths

    def _time_masks(self, video_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B, T) bool, True on masked frames; masks lie inside each utterance's valid frames."""
        masks = torch.zeros(len(video_lengths), num_frames, dtype=torch.bool)
        for b, length in enumerate(video_lengths.tolist()):
            num_masks = -(-length // self.time_mask_stride)  # one per started stride
            for _ in range(num_masks):
                span = min(int(torch.randint(0, self.time_mask_max_frames + 1, ())), length)
                if span == 0:
                    continue
                start = int(torch.randint(0, length - span + 1, ()))
                masks[b, start : start + span] = True
        return masks
