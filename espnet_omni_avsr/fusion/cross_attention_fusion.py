"""Early fusion by cross-attention: each video frame attends to the audio frames of its utterance."""
from typing import Tuple

import torch

from espnet_omni_avsr.fusion.abs_fusion import AbsFusion, AudioToVideoRate, check_size
from espnet_omni_avsr.utils.masks import valid_mask


class CrossAttentionFusion(AbsFusion):
    """(B, T_v, video_size): video + MultiheadAttention(query = video, key = value = audio at 25 fps),
    then LayerNorm. The audio is brought to 25 fps and the video width by the Conv1d; a row's padded
    audio frames are masked as keys. A video frame may read sound from anywhere in its utterance,
    which tolerates audio-visual offsets that frame-by-frame joining does not."""

    def __init__(self, audio_size: int, video_size: int, num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        check_size("CrossAttentionFusion", "video_size", video_size)
        check_size("CrossAttentionFusion", "num_heads", num_heads)
        if video_size % num_heads:
            raise ValueError(f"CrossAttentionFusion: video_size {video_size} is not divisible by num_heads {num_heads}")
        self.video_size = video_size
        self.audio = AudioToVideoRate(audio_size, video_size)
        self.attention = torch.nn.MultiheadAttention(video_size, num_heads, dropout=dropout, batch_first=True)
        self.norm = torch.nn.LayerNorm(video_size)

    def output_size(self) -> int:
        return self.video_size

    def forward(self, audio, audio_lengths, video, video_lengths) -> Tuple[torch.Tensor, torch.Tensor]:
        video_lengths = video_lengths.to(video.device).long()
        a, kept = self.audio(audio, audio_lengths, video_lengths)
        T = a.size(1)
        mask = valid_mask(video_lengths, T)[:, :, None].to(a.dtype)
        v = video[:, :T].to(a.dtype) * mask
        # a row whose audio is empty attends to nothing: let it read its first (zero) frame
        key_padding = ~valid_mask(kept.clamp(min=1), T)
        attended, _ = self.attention(v, a, a, key_padding_mask=key_padding, need_weights=False)
        return self.norm(v + attended) * mask, video_lengths
