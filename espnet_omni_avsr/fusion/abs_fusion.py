"""Interface of an early audio-visual fusion: two encoders' streams -> one stream at the video rate.

MMS-LLaMA fuses before compressing: the audio encoder's 50 Hz frames are brought to the video's
25 fps by a learnable Conv1d (kernel 2, stride 2) and aligned to the video's frame count, then joined
frame by frame with the video encoder's features. The fused stream is one block of the prompt (the
model's `audiovisual` stream, `models/fused_branch.py`), compressed and projected like a modality.
A fusion may also hold the encoder and read the two front ends' features (`avhubert_fusion.py`:
AV-HuBERT's audio-visual mode fuses the streams itself).

The contract: `forward(audio, audio_lengths, video, video_lengths) -> (fused (B, T_video, D), lengths)`
with `lengths == video_lengths`; `output_size()` is D. An utterance gives the same fused frames alone
and inside a padded batch.
"""
from abc import ABC, abstractmethod
from typing import Tuple

import torch

from espnet_omni_avsr.utils.masks import valid_mask

INPUTS = ("audio", "video")  # the modalities a fusion reads, in the order of its arguments


def check_size(name: str, what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: {what} must be an integer >= 1, got {value!r}")
    return value


class AudioToVideoRate(torch.nn.Module):
    """Audio encoder frames (50 Hz) -> one frame per video frame (25 fps).

    Conv1d(kernel 2, stride 2) over each utterance's valid frames: frames past an utterance's length
    are zeroed first, and an odd last frame has no partner and is dropped, so a row keeps
    floor(audio_length / 2) frames. Each row is then aligned to its video frame count: cut when the
    audio is longer, zero-padded at the end when it is shorter (a clip whose sound ends before its
    picture; the frames after the sound carry no audio). Whisper on the true clip length gives
    2 frames per video frame up to rounding, so the cut or pad is a frame or two.
    """

    def __init__(self, input_size: int, output_size: int):
        super().__init__()
        check_size("AudioToVideoRate", "input_size", input_size)
        check_size("AudioToVideoRate", "output_size", output_size)
        self.input_size = input_size
        self._output_size = output_size
        self.conv = torch.nn.Conv1d(input_size, output_size, kernel_size=2, stride=2)

    def output_size(self) -> int:
        return self._output_size

    def forward(
        self, audio: torch.Tensor, audio_lengths: torch.Tensor, video_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """audio (B, T_a, D_a), audio_lengths (B,), video_lengths (B,) -> (B, max(video_lengths),
        output_size) and the rows' audio frames before padding, min(floor(audio_length / 2), video_length)."""
        if audio.dim() != 3 or audio.size(2) != self.input_size:
            raise ValueError(f"AudioToVideoRate: expected audio of shape (B, T, {self.input_size}), got {tuple(audio.shape)}")
        audio_lengths = audio_lengths.to(audio.device).long()
        video_lengths = video_lengths.to(audio.device).long()
        if (audio_lengths > audio.size(1)).any() or (audio_lengths < 0).any():
            raise ValueError(f"AudioToVideoRate: audio lengths {audio_lengths.tolist()} not within [0, {audio.size(1)}]")
        x = audio * valid_mask(audio_lengths, audio.size(1))[:, :, None].to(audio.dtype)
        if x.size(1) < 2:  # too short for one window: nothing but padding
            x = torch.nn.functional.pad(x, (0, 0, 0, 2 - x.size(1)))
        y = self.conv(x.transpose(1, 2).to(self.conv.weight.dtype)).transpose(1, 2)  # (B, floor(T_a / 2), C)
        kept = torch.minimum(audio_lengths // 2, video_lengths)
        T_v = int(video_lengths.max()) if video_lengths.numel() else 0
        if y.size(1) < T_v:
            y = torch.nn.functional.pad(y, (0, 0, 0, T_v - y.size(1)))
        y = y[:, :T_v] * valid_mask(kept, T_v)[:, :, None].to(y.dtype)
        return y, kept


class AbsFusion(torch.nn.Module, ABC):
    """Joins audio and video encoder streams frame by frame at the video rate (see the module docstring)."""

    inputs = INPUTS

    @abstractmethod
    def output_size(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def forward(
        self, audio: torch.Tensor, audio_lengths: torch.Tensor, video: torch.Tensor, video_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
