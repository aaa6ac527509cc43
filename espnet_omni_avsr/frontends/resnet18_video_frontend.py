"""The AV-HuBERT / auto_avsr lip trunk: a 3-D conv stem and a 2-D ResNet-18 over each frame."""
from typing import Tuple

import torch
from espnet2.asr.encoder.avhubert_encoder import ResEncoder

from espnet_omni_avsr.frontends.abs_video_frontend import AbsVideoFrontend
from espnet_omni_avsr.frontends.mouth_roi_transform import MouthROITransform
from espnet_omni_avsr.utils.trainable import keep_frozen_in_eval, set_trainable

RELU_TYPES = ("prelu", "relu")


def build_lip_trunk(relu_type: str = "prelu") -> ResEncoder:
    """The lip trunk shared by this front end and the AV-HuBERT encoder (randomly initialised):
    (B, 1, T, H, W) normalised frames -> (B, 512, T)."""
    if relu_type not in RELU_TYPES:
        raise ValueError(f"relu_type must be 'prelu' or 'relu', got {relu_type!r}")
    return ResEncoder(relu_type=relu_type, weights=None)


class ResNet18VideoFrontend(AbsVideoFrontend):
    """Mouth-ROI frames -> 512-dim feature per frame (25 fps in, 25 fps out).

    MouthROITransform, then ESPnet's ``ResEncoder`` (espnet2.asr.encoder.avhubert_encoder, which
    needs no fairseq): Conv3d(1, 64, (5, 7, 7), stride (1, 2, 2), padding (2, 3, 3)) + BatchNorm3d
    + PReLU/ReLU + MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)), a 2-D ResNet-18 (64-128-256-512) on
    every frame and a global average pool. Its parameters live under ``resnet.frontend3D.*`` and
    ``resnet.trunk.*``, the names of AV-HuBERT's ``feature_extractor_video.resnet``.

    Only the stem mixes frames in time (5 frames, zero padding), and padded frames are exactly 0
    when they reach it, so in eval mode an utterance gives the same features alone and inside a
    padded batch. Features of padded frames are set to 0. (In training mode BatchNorm statistics
    come from the whole batch, padding included, as in AV-HuBERT.)

    Args:
        crop_size: mouth crop side (88 for 96x96 ROIs).
        relu_type: "prelu" (AV-HuBERT) or "relu".
        frozen: no trainable parameters, and BatchNorm keeps its running statistics when the
            model trains (the crop/time-mask augmentation still follows train/eval mode).
        mean, std, time_mask, time_mask_max_frames, time_mask_stride: see MouthROITransform.

    forward(video, video_lengths):
        video: (B, T, H, W) uint8 (0..255) or float in [0, 1]; video_lengths: (B,).
        returns feats (B, T, 512) and video_lengths.
    """

    def __init__(
        self,
        crop_size: int = 88,
        relu_type: str = "prelu",
        frozen: bool = False,
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
        self.resnet = build_lip_trunk(relu_type)
        self.frozen = frozen
        if frozen:  # BatchNorm keeps its running statistics; the augmentation follows train/eval
            set_trainable(self, False, eval_parts=(self.resnet,))

    def output_size(self) -> int:
        return self.resnet.backend_out  # 512

    def train(self, mode: bool = True) -> "ResNet18VideoFrontend":
        super().train(mode)
        return keep_frozen_in_eval(self)

    def forward(
        self, video: torch.Tensor, video_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        x, video_lengths = self.transform(video, video_lengths)  # (B, T, c, c)
        feats = self.resnet(x.unsqueeze(1))  # (B, 512, T)
        feats = feats.transpose(1, 2)  # (B, T, 512)
        valid = torch.arange(feats.size(1), device=feats.device)[None, :] < video_lengths[:, None]
        return feats * valid[:, :, None], video_lengths
