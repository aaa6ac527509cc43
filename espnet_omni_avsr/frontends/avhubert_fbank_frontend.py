"""AV-HuBERT's audio front end: a batch of waveforms -> stacked log filterbanks at the video's 25 Hz."""
from typing import Tuple

import torch
from espnet2.asr.frontend.abs_frontend import AbsFrontend

from espnet_omni_avsr.frontends.avhubert_fbank import NUM_FILTERS, STACK, avhubert_fbank


class AVHubertFbankFrontend(AbsFrontend):
    """(B, S) waveforms -> (B, T, 104) features: `avhubert_fbank` of each utterance's valid samples.

    An utterance of S_b samples has n_b = 1 + (S_b - 400) // 160 filterbank frames (25 ms windows
    every 10 ms at 16 kHz, the last partial window dropped) and T_b = ceil(n_b / 4) stacked frames,
    one per 40 ms: 25 Hz, the video's rate. Each stacked frame is layer-normalised over its 104
    values, as AV-HuBERT's loader does. Each row is computed from its own samples only, so an
    utterance gives the same frames alone and in a zero-padded batch; frames past T_b are 0.
    T_b can differ from the video's frame count by a frame: whoever reads both streams aligns
    them (`fusion.avhubert_fusion.AVHubertFusion` cuts or zero-pads the audio to the video).

    No parameters. Args:
        fs: sampling rate of the waveform in Hz (AV-HuBERT was trained on 16 kHz).
    """

    def __init__(self, fs: int = 16000):
        super().__init__()
        if isinstance(fs, bool) or not isinstance(fs, int) or fs < 1:
            raise ValueError(f"AVHubertFbankFrontend: fs must be a sampling rate in Hz (an integer >= 1), got {fs!r}")
        self.fs = fs

    def output_size(self) -> int:
        return STACK * NUM_FILTERS

    def forward(self, speech: torch.Tensor, speech_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """speech (B, S), speech_lengths (B,) -> features (B, max T_b, 104) float32, lengths (B,) = T_b."""
        if speech.dim() != 2:
            raise ValueError(f"AVHubertFbankFrontend: expected waveforms (B, S), got shape {tuple(speech.shape)}")
        lengths = speech_lengths.to(torch.long).tolist()
        if len(lengths) != speech.size(0) or any(n < 0 or n > speech.size(1) for n in lengths):
            raise ValueError(f"AVHubertFbankFrontend: lengths {lengths} must lie in [0, {speech.size(1)}] for each "
                             f"of {speech.size(0)} waveforms")
        rows = [avhubert_fbank(speech[b, :n], sample_rate=self.fs) for b, n in enumerate(lengths)]  # (T_b, 104)
        feats = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # zero past each row's T_b
        out_lengths = torch.tensor([r.size(0) for r in rows], dtype=torch.long, device=speech.device)
        return feats, out_lengths
