"""Audio-guided lip distillation: the video encoder learns to predict the frozen audio encoder's
features of the same utterance, frame by frame (a training aid for a lip encoder trained from scratch).

Paired audio-visual speech needs no transcript for this: the audio encoder (Whisper) already
separates speech sounds, and the part of that information that shows on the lips is what a lip
reader needs. The idea is the one behind AV-HuBERT's pretraining (lip features predict targets
derived from the audio) and cross-modal distillation for lip reading; here the targets are the
continuous audio features themselves, so no clustering step is needed.

Loss: 1 - cosine(head(video_feats_t), norm(audio_feats_t)), averaged over the frames both
modalities have. Audio features are averaged over `audio_frames_per_video_frame` frames to the video
rate (Whisper's 50 Hz -> 25 fps: 2) and standardised per dimension by a BatchNorm without affine
parameters (Whisper's outlier dimensions would otherwise dominate the cosine). Targets carry no
gradient.
"""
from typing import Tuple

import torch

from espnet_omni_avsr.losses.abs_loss_term import AbsLossTerm, LossOutput


class AudioToVideoDistill(AbsLossTerm):
    """`type: av_distill`, conf: `audio_frames_per_video_frame`; needs tasks that use both modalities.

    Args:
        video_size: dimension of the video encoder's features.
        audio_size: dimension of the audio encoder's features.
        audio_frames_per_video_frame: audio feature frames per video frame (integer).
        name: statistics name (default `distill`); weight: its weight in the total loss.

    compute(video_feats (B, T_v, Dv), video_lengths, audio_feats (B, T_a, Da), audio_lengths) -> loss.
    """

    def __init__(
        self,
        video_size: int,
        audio_size: int,
        audio_frames_per_video_frame: int = 2,
        name: str = "distill",
        weight: float = 1.0,
    ):
        super().__init__(name, weight)
        if audio_frames_per_video_frame < 1:
            raise ValueError(f"audio_frames_per_video_frame must be >= 1, got {audio_frames_per_video_frame}")
        self.ratio = int(audio_frames_per_video_frame)
        self.head = torch.nn.Linear(video_size, audio_size)
        self.norm = torch.nn.BatchNorm1d(audio_size, affine=False)

    @classmethod
    def build(cls, parts, name=None, weight=1.0, **conf) -> "AudioToVideoDistill":
        parts.require("av_distill", "audio", "video")
        video, audio = parts.branches["video"], parts.branches["audio"]
        return cls(video.feature_size, audio.feature_size, name=name or "distill", weight=weight, **conf)

    def forward(self, step) -> LossOutput:
        loss = self.compute(*step.features["video"], *step.features["audio"])
        return LossOutput(loss, {self.name: loss.detach()})

    def targets(self, audio_feats: torch.Tensor, audio_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Audio features at the video rate: (B, ceil(T_a / ratio), Da) and lengths (partial last windows
        average their valid frames)."""
        b, t, d = audio_feats.shape
        n = -(-t // self.ratio)
        valid = (torch.arange(n * self.ratio, device=audio_feats.device)[None] < audio_lengths[:, None]).float()
        x = torch.nn.functional.pad(audio_feats.float(), (0, 0, 0, n * self.ratio - t)) * valid[..., None]
        sums = x.view(b, n, self.ratio, d).sum(2)
        counts = valid.view(b, n, self.ratio).sum(2).clamp(min=1.0)
        return sums / counts[..., None], -(-audio_lengths // self.ratio)

    def compute(
        self,
        video_feats: torch.Tensor,
        video_lengths: torch.Tensor,
        audio_feats: torch.Tensor,
        audio_lengths: torch.Tensor,
    ) -> torch.Tensor:
        with torch.no_grad():
            target, target_lengths = self.targets(audio_feats.detach(), audio_lengths.to(audio_feats.device))
        num = min(video_feats.size(1), target.size(1))
        lengths = torch.minimum(video_lengths.to(video_feats.device), target_lengths.to(video_feats.device))
        mask = torch.arange(num, device=video_feats.device)[None] < lengths[:, None]  # (B, T)
        if not mask.any():
            return video_feats.sum() * 0.0
        target = target[:, :num][mask]  # (N, Da)
        with torch.no_grad():
            target = self.norm(target) if target.size(0) > 1 or not self.training else target
        pred = self.head(video_feats[:, :num][mask]).float()
        return (1.0 - torch.nn.functional.cosine_similarity(pred, target, dim=-1)).mean()
