"""Early fusion by concatenation (MMS-LLaMA's choice): [audio at 25 fps ; video] per frame."""
from typing import Optional, Tuple

import torch

from espnet_omni_avsr.fusion.abs_fusion import AbsFusion, AudioToVideoRate, check_size
from espnet_omni_avsr.utils.masks import valid_mask


class ConcatFusion(AbsFusion):
    """(B, T_v, audio_channels + video_size): the audio encoder's frames through the 50 -> 25 Hz
    Conv1d (`audio_channels` outputs, default the audio encoder's width: MMS-LLaMA's 1024 + 1024 ->
    2048), next to the video encoder's frame. Positions past a row's video length are zero."""

    def __init__(self, audio_size: int, video_size: int, audio_channels: Optional[int] = None):
        super().__init__()
        self.video_size = check_size("ConcatFusion", "video_size", video_size)
        self.audio = AudioToVideoRate(audio_size, audio_channels or audio_size)

    def output_size(self) -> int:
        return self.audio.output_size() + self.video_size

    def forward(self, audio, audio_lengths, video, video_lengths) -> Tuple[torch.Tensor, torch.Tensor]:
        video_lengths = video_lengths.to(video.device).long()
        a, _ = self.audio(audio, audio_lengths, video_lengths)
        v = video[:, : a.size(1)] * valid_mask(video_lengths, a.size(1))[:, :, None].to(video.dtype)
        return torch.cat([a, v.to(a.dtype)], dim=-1), video_lengths
