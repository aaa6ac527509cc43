"""Early fusion by addition: audio at 25 fps and video, each projected to one width, summed per frame."""
from typing import Optional, Tuple

import torch

from espnet_omni_avsr.fusion.abs_fusion import AbsFusion, AudioToVideoRate, check_size
from espnet_omni_avsr.utils.masks import valid_mask


class AddFusion(AbsFusion):
    """(B, T_v, output_size): the audio's 50 -> 25 Hz Conv1d outputs `output_size` channels
    (default: the video encoder's width); the video gets a Linear to that width unless it already
    has it. Half the width of concatenation for the compressor to read."""

    def __init__(self, audio_size: int, video_size: int, output_size: Optional[int] = None):
        super().__init__()
        check_size("AddFusion", "video_size", video_size)
        self._output_size = output_size or video_size
        self.audio = AudioToVideoRate(audio_size, self._output_size)
        self.video = (
            torch.nn.Identity() if video_size == self._output_size else torch.nn.Linear(video_size, self._output_size)
        )

    def output_size(self) -> int:
        return self._output_size

    def forward(self, audio, audio_lengths, video, video_lengths) -> Tuple[torch.Tensor, torch.Tensor]:
        video_lengths = video_lengths.to(video.device).long()
        a, _ = self.audio(audio, audio_lengths, video_lengths)
        mask = valid_mask(video_lengths, a.size(1))[:, :, None].to(a.dtype)
        v = self.video(video[:, : a.size(1)].to(a.dtype)) * mask
        return a + v, video_lengths
