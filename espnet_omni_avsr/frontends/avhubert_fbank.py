"""AV-HuBERT's audio input: 26 log mel filterbanks at 100 Hz, 4 frames stacked -> 104 values at 25 Hz.

AV-HuBERT's data loader computes `python_speech_features.logfbank` (25 ms frames every 10 ms,
26 filters, 512-point FFT, pre-emphasis 0.97, no window), stacks 4 consecutive frames (zero-padding
the end to a multiple of 4) and layer-normalises each stacked frame. Here the filterbanks come
from `torchaudio.compliance.kaldi.fbank` with the same frame, filter and FFT settings and a
rectangular window; Kaldi places the mel triangles on continuous frequencies and pre-emphasises
per frame, so the values are close to, not identical with, python_speech_features'.
"""
from typing import Optional

import torch
import torch.nn.functional as F

NUM_FILTERS = 26
STACK = 4


def avhubert_fbank(wave: torch.Tensor, sample_rate: int = 16000, num_frames: Optional[int] = None) -> torch.Tensor:
    """(S,) waveform (any scale) -> (ceil(n / 4), 104) normalised stacked log filterbanks, n = 100 Hz frames.

    num_frames: cut or zero-pad the result to this many 25 Hz frames (the video's), as AV-HuBERT does.
    """
    import torchaudio.compliance.kaldi as kaldi

    if wave.dim() != 1:
        raise ValueError(f"avhubert_fbank: expected a 1-D waveform, got shape {tuple(wave.shape)}")
    if wave.numel() < int(0.025 * sample_rate):
        raise ValueError(f"avhubert_fbank: {wave.numel()} samples is shorter than one 25 ms frame")
    feats = kaldi.fbank(
        wave.float()[None] * 32768.0, sample_frequency=sample_rate, num_mel_bins=NUM_FILTERS,
        frame_length=25.0, frame_shift=10.0, dither=0.0, window_type="rectangular", remove_dc_offset=False,
        preemphasis_coefficient=0.97, low_freq=0.0, high_freq=0.0, use_energy=False,
    )  # (n, 26)
    n = feats.size(0)
    feats = F.pad(feats, (0, 0, 0, -n % STACK)).reshape(-1, STACK * NUM_FILTERS)  # (ceil(n/4), 104)
    feats = F.layer_norm(feats, feats.shape[1:])
    if num_frames is not None:
        feats = F.pad(feats[:num_frames], (0, 0, 0, max(0, num_frames - feats.size(0))))
    return feats
