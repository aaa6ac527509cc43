"""Whisper's log-mel spectrogram computed in torch, batched and padding invariant."""
import json
import os
from typing import Optional, Tuple, Union

import humanfriendly
import torch
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from transformers.audio_utils import mel_filter_bank

# Whisper's feature-extractor defaults; preprocessor_config.json may override them.
_DEFAULTS = {
    "feature_size": 80,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "chunk_length": 30,
}
# WhisperFeatureExtractor(do_normalize=True) divides by sqrt(var + 1e-7).
_NORM_EPS = 1e-7


def _read_preprocessor_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"WhisperLogMelFrontend: model_dir '{model_dir}' has no preprocessor_config.json "
            "(expected a local Hugging Face Whisper folder)"
        )
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    return {key: int(cfg.get(key, default)) for key, default in _DEFAULTS.items()}


class WhisperLogMelFrontend(AbsFrontend):
    """Raw 16 kHz waveform -> Whisper log-mel features.

    Numerically the same as transformers' ``WhisperFeatureExtractor`` (its torch path): centred STFT
    (Hann window 400, hop 160, reflect padding), power spectrum without the last frame, Slaney mel
    filters, log10 with floor 1e-10, clamp at (max - 8), then (x + 4) / 4.

    Two modes:
      * ``pad_to_30s=True``: exact Whisper. Every utterance is padded with zeros to 30 s and gives
        3000 frames; the (max - 8) clamp uses all 3000 frames, as Whisper does. Utterances longer
        than 30 s are an error.
      * ``pad_to_30s=False`` (true length): T_b = S_b // hop frames per utterance. The utterance is
        treated as followed by zeros (so the last frames do not see the STFT's reflect padding), the
        clamp uses the utterance's valid frames only, and padded frames are zero. An utterance
        alone and inside a zero-padded batch gives identical frames. The valid frames equal the
        first T_b frames of the 30-s mode whenever the utterance's loudest frame is a valid one.

    Args:
        fs: sampling rate of the input (int or a string such as "16k"); must equal the
            extractor's sampling rate.
        n_mels: mel bins; None -> 80, or the folder's ``feature_size`` when ``model_dir`` is given.
        pad_to_30s: exact Whisper padding (see above).
        normalize_waveform: zero-mean unit-variance over each utterance's valid samples first
            (the Llama-AVSR recipes layer-normalise the waveform).
        model_dir: local Whisper folder whose preprocessor_config.json gives n_mels, hop, n_fft,
            sampling rate and chunk length.
    """

    def __init__(
        self,
        fs: Union[int, str] = 16000,
        n_mels: Optional[int] = None,
        pad_to_30s: bool = False,
        normalize_waveform: bool = True,
        model_dir: Optional[str] = None,
    ):
        super().__init__()
        cfg = dict(_DEFAULTS) if model_dir is None else _read_preprocessor_config(model_dir)
        if n_mels is not None:
            if model_dir is not None and n_mels != cfg["feature_size"]:
                raise ValueError(
                    f"WhisperLogMelFrontend: n_mels={n_mels} but {model_dir}/preprocessor_config.json "
                    f"has feature_size={cfg['feature_size']}"
                )
            cfg["feature_size"] = n_mels
        if isinstance(fs, str):
            fs = humanfriendly.parse_size(fs)
        if int(fs) != cfg["sampling_rate"]:
            raise ValueError(
                f"WhisperLogMelFrontend: input fs={fs} Hz but Whisper features need "
                f"{cfg['sampling_rate']} Hz; resample the audio first"
            )
        if cfg["feature_size"] < 1:
            raise ValueError(f"WhisperLogMelFrontend: n_mels must be >= 1, got {cfg['feature_size']}")

        self.n_mels = cfg["feature_size"]
        self.sampling_rate = cfg["sampling_rate"]
        self.hop_length = cfg["hop_length"]
        self.n_fft = cfg["n_fft"]
        self.n_samples = cfg["chunk_length"] * cfg["sampling_rate"]  # 480000 for 30 s
        self.n_frames = self.n_samples // self.hop_length  # 3000
        self.pad_to_30s = bool(pad_to_30s)
        self.normalize_waveform = bool(normalize_waveform)

        mel = mel_filter_bank(
            num_frequency_bins=1 + self.n_fft // 2,
            num_mel_filters=self.n_mels,
            min_frequency=0.0,
            max_frequency=8000.0,  # as WhisperFeatureExtractor, whatever the sampling rate
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (n_freq, n_mels), float64
        # Not persistent: derived from the arguments, so they stay out of checkpoints.
        self.register_buffer("mel_filters", torch.from_numpy(mel).float().T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def output_size(self) -> int:
        return self.n_mels

    def _normalize(self, wav: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # wav: (B, S) with zeros outside `valid`; lengths: (B,)
        n = lengths.clamp(min=1).to(wav.dtype).unsqueeze(1)  # (B, 1)
        mean = wav.sum(dim=1, keepdim=True) / n
        var = ((wav - mean) * valid).pow(2).sum(dim=1, keepdim=True) / n
        return ((wav - mean) / torch.sqrt(var + _NORM_EPS)) * valid

    def forward(
        self, input: torch.Tensor, input_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """input: (B, S) waveform, input_lengths: (B,) valid samples.

        Returns feats (B, T, n_mels) and feats_lens (B,) = input_lengths // hop. T is 3000 with
        ``pad_to_30s``, else max(feats_lens).
        """
        if input.dim() != 2:
            raise ValueError(f"WhisperLogMelFrontend: expected a (B, S) waveform, got shape {tuple(input.shape)}")
        lengths = input_lengths.to(device=input.device, dtype=torch.long)
        if (lengths > input.size(1)).any():
            raise ValueError(
                f"WhisperLogMelFrontend: input_lengths {lengths.tolist()} exceed the waveform length {input.size(1)}"
            )
        if self.pad_to_30s and (lengths > self.n_samples).any():
            too_long = lengths.max().item()
            raise ValueError(
                f"WhisperLogMelFrontend(pad_to_30s=True): an utterance has {too_long} samples "
                f"({too_long / self.sampling_rate:.2f} s), longer than Whisper's {self.n_samples} samples "
                f"({self.n_samples / self.sampling_rate:.0f} s); segment it or use pad_to_30s=False"
            )

        wav = input.float()  # (B, S)
        valid = (torch.arange(wav.size(1), device=wav.device)[None, :] < lengths[:, None]).to(wav.dtype)
        wav = wav * valid  # whatever the batch padding held, it is zero now
        if self.normalize_waveform:
            wav = self._normalize(wav, valid, lengths)

        feats_lens = lengths // self.hop_length  # (B,)
        if not self.pad_to_30s and (feats_lens.numel() == 0 or feats_lens.max() == 0):
            return wav.new_zeros(wav.size(0), 0, self.n_mels), feats_lens
        if self.pad_to_30s:
            # exactly Whisper: every utterance zero-padded (or its zero tail cut) to 30 s
            if wav.size(1) >= self.n_samples:
                wav = wav[:, : self.n_samples]
            else:
                wav = torch.nn.functional.pad(wav, (0, self.n_samples - wav.size(1)))
            n_out = self.n_frames
        else:
            # zeros after every utterance, so no valid frame sees the STFT's end reflect padding
            wav = torch.nn.functional.pad(wav, (0, self.n_fft // 2))
            n_out = int(feats_lens.max().item()) if feats_lens.numel() else 0

        stft = torch.stft(
            wav,
            self.n_fft,
            self.hop_length,
            window=self.window.float(),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )  # (B, n_freq, S' // hop + 1)
        power = (stft[..., :n_out].abs() ** 2).contiguous()  # (B, n_freq, T)
        mel = self.mel_filters.float() @ power  # (B, n_mels, T)
        log_spec = torch.clamp(mel, min=1e-10).log10()

        if self.pad_to_30s:
            peak = log_spec.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1), all 3000 frames as Whisper
        else:
            frame_valid = torch.arange(n_out, device=wav.device)[None, :] < feats_lens[:, None]  # (B, T)
            masked = log_spec.masked_fill(~frame_valid[:, None, :], float("-inf"))
            peak = masked.amax(dim=(1, 2), keepdim=True)
            peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # empty utterances
        log_spec = torch.maximum(log_spec, peak - 8.0)
        feats = ((log_spec + 4.0) / 4.0).transpose(1, 2)  # (B, T, n_mels)
        if not self.pad_to_30s:
            feats = feats * frame_valid[:, :, None].to(feats.dtype)
        return feats, feats_lens
