"""The speech-rate predictor of MMS-LLaMA: audio-encoder frames -> the utterance's speaking rate.

The rate is relative: words per second divided by the training set's mean words per second
(``mean_wps``), so 1.0 is an average speaker; ``rate * mean_wps`` is words per second.

Architecture (the published system's, plus two choices it does not state, marked *):

* input: the audio encoder's output (Whisper: 50 Hz), already cut by the caller to the video's
  span (``cut_to_video``: ``min(audio frames, 2 * video frames)``), then subsampled ``[::subsample]``
  (4: 12.5 Hz) here;
* ``Linear(input_size -> hidden_size)``; * fixed sinusoidal positions added to the frames
  (``positional="sinusoidal"``; ``"none"`` leaves them out: a Transformer without positions is blind
  to frame order, and only the encoder's own positional content would be left to tell time by);
* a learnable rate token prepended;
* ``torch.nn.TransformerEncoder``: ``num_layers`` pre-norm layers (``hidden_size``, ``num_heads``,
  FFN ``ffn_size``), padded frames masked out of attention (key padding mask), * a final LayerNorm
  (the usual end of a pre-norm stack);
* ``Linear(hidden_size -> 1)`` and ReLU, read at the rate token. It starts at weight 0 and bias 1.0
  (the mean of the relative labels): training starts from the constant predictor, not in the dead
  half of the ReLU, and Adam's first steps (every weight moved by about lr at once) cannot throw all
  outputs below zero, where the ReLU passes no gradient and training stops for good.

An utterance gives the same rate alone and inside a padded batch (in eval mode).

Checkpoints (``save_predictor`` / ``load_predictor``) hold only tensors and plain Python types,
readable with ``torch.load(..., weights_only=True)``::

    {"format": "espnet_omni_avsr.speech_rate/1",
     "kwargs": the constructor's arguments, "state_dict": the weights,
     "mean_wps": float, "meta": {...}  (e.g. the encoder it was trained on, its dev error)}
"""
import math
import os
from typing import Any, Dict, Optional, Tuple

import torch

from espnet_omni_avsr.utils.masks import valid_mask
from espnet_omni_avsr.utils.trainable import keep_frozen_in_eval, set_trainable

CHECKPOINT_FORMAT = "espnet_omni_avsr.speech_rate/1"
_KEYS = ("format", "kwargs", "state_dict", "mean_wps", "meta")
POSITIONAL = ("sinusoidal", "none")


class SpeechRateCheckpointError(ValueError):
    """A file that is not a speech-rate predictor checkpoint; the message names the path."""


def cut_to_video(
    feats: torch.Tensor, lengths: torch.Tensor, video_lengths: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cut 50 Hz audio-encoder frames to the video's span: ``min(lengths, 2 * video_lengths)`` frames.

    Args:
        feats: (B, T, D) encoder frames (50 Hz; 25 fps video gives 2 audio frames per video frame).
        lengths: (B,) valid audio frames.
        video_lengths: (B,) video frames.

    Returns:
        feats (B, T', D) with T' = max of the new lengths and every frame past its length zero, and
        the new lengths (B,).
    """
    if feats.dim() != 3:
        raise ValueError(f"cut_to_video: expected feats (B, T, D), got shape {tuple(feats.shape)}")
    lengths = lengths.to(device=feats.device, dtype=torch.long)
    video_lengths = video_lengths.to(device=feats.device, dtype=torch.long)
    if lengths.shape != (feats.size(0),) or video_lengths.shape != (feats.size(0),):
        raise ValueError(f"cut_to_video: lengths {tuple(lengths.shape)} and video_lengths "
                         f"{tuple(video_lengths.shape)} must both be ({feats.size(0)},)")
    new = torch.minimum(lengths, 2 * video_lengths).clamp(min=0)
    t_out = int(new.max().item()) if new.numel() else 0
    out = feats[:, :t_out] * valid_mask(new, t_out)[:, :, None].to(feats.dtype)
    return out, new


def subsample_frames(
    feats: torch.Tensor, lengths: torch.Tensor, subsample: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``feats[:, ::subsample]`` and its lengths, ``ceil(lengths / subsample)`` (frames 0, s, 2s, ...)."""
    lengths = lengths.to(device=feats.device, dtype=torch.long)
    if subsample == 1:
        return feats, lengths
    return feats[:, ::subsample], (lengths + subsample - 1) // subsample


def _sinusoids(length: int, dim: int, device, dtype) -> torch.Tensor:
    """(length, dim) fixed sinusoidal positions (sin on the first half of the channels, cos on the rest)."""
    half = dim // 2
    inv = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half - 1, 1))
    angle = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    pe = torch.cat([angle.sin(), angle.cos()], dim=1)
    if pe.size(1) < dim:  # odd dim
        pe = torch.nn.functional.pad(pe, (0, dim - pe.size(1)))
    return pe.to(dtype)


class SpeechRatePredictor(torch.nn.Module):
    """Audio-encoder frames -> relative speaking rate (B,); see the module docstring.

    Args:
        input_size: the encoder's output size (Whisper's d_model).
        hidden_size, num_layers, num_heads, ffn_size: the Transformer (256, 2, 4, 1024 as published).
        subsample: keep every ``subsample``-th input frame (4: 50 Hz -> 12.5 Hz).
        dropout: in the Transformer layers.
        positional: "sinusoidal" (fixed positions added to the frames) or "none".
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_size: int = 1024,
        subsample: int = 4,
        dropout: float = 0.1,
        positional: str = "sinusoidal",
    ):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                            ("num_heads", num_heads), ("ffn_size", ffn_size), ("subsample", subsample)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SpeechRatePredictor: {name} must be a positive integer, got {value!r}")
        if hidden_size % num_heads:
            raise ValueError(f"SpeechRatePredictor: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if positional not in POSITIONAL:
            raise ValueError(f"SpeechRatePredictor: positional must be one of {POSITIONAL}, got {positional!r}")
        self.kwargs: Dict[str, Any] = dict(
            input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
            ffn_size=ffn_size, subsample=subsample, dropout=float(dropout), positional=positional,
        )
        self.input_size = input_size
        self.subsample = subsample
        self.positional = positional
        self.proj = torch.nn.Linear(input_size, hidden_size)
        self.rate_token = torch.nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(
            d_model=hidden_size, nhead=num_heads, dim_feedforward=ffn_size, dropout=dropout,
            batch_first=True, norm_first=True,
        )
        self.encoder = torch.nn.TransformerEncoder(
            layer, num_layers=num_layers, norm=torch.nn.LayerNorm(hidden_size), enable_nested_tensor=False,
        )
        self.head = torch.nn.Linear(hidden_size, 1)
        with torch.no_grad():  # starts as the constant predictor (the mean relative rate, 1.0)
            self.head.weight.zero_()
            self.head.bias.fill_(1.0)

    def train(self, mode: bool = True) -> "SpeechRatePredictor":
        super().train(mode)
        return keep_frozen_in_eval(self)  # frozen (load_predictor): stays in eval inside a training model

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """feats: (B, T, input_size) audio-encoder frames, already cut to the video's span by the
        caller (``cut_to_video``); lengths: (B,) valid frames. Returns the relative rate (B,) >= 0."""
        if feats.dim() != 3 or feats.size(2) != self.input_size:
            raise ValueError(f"SpeechRatePredictor: expected feats (B, T, {self.input_size}), got {tuple(feats.shape)}")
        lengths = lengths.to(device=feats.device, dtype=torch.long)
        if lengths.shape != (feats.size(0),):
            raise ValueError(f"SpeechRatePredictor: lengths {tuple(lengths.shape)} must be ({feats.size(0)},)")
        if (lengths > feats.size(1)).any() or (lengths < 0).any():
            raise ValueError(f"SpeechRatePredictor: lengths {lengths.tolist()} outside [0, {feats.size(1)}]")
        return self.forward_subsampled(*subsample_frames(feats, lengths, self.subsample))

    def forward_subsampled(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """As ``forward`` on frames already subsampled (``subsample_frames``): what a trainer that
        caches the 12.5 Hz frames calls."""
        lengths = lengths.to(device=feats.device, dtype=torch.long)
        x = self.proj(feats.to(self.proj.weight.dtype))  # (B, T, H)
        valid = valid_mask(lengths, x.size(1))  # (B, T)
        if self.positional == "sinusoidal":
            x = x + _sinusoids(x.size(1), x.size(2), x.device, x.dtype)[None]
        x = x * valid[:, :, None].to(x.dtype)
        x = torch.cat([self.rate_token.expand(x.size(0), -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + T, H)
        pad = torch.cat([valid.new_zeros(x.size(0), 1), ~valid], dim=1)  # True = ignored; the token never is
        h = self.encoder(x, src_key_padding_mask=pad)
        return torch.relu(self.head(h[:, 0])).squeeze(-1)


# --------------------------------------------------------------------------- checkpoints


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless `value` is made of what weights_only loading accepts and JSON can show."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"save_predictor: {where} has a non-string key {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"save_predictor: {where} is a {type(value).__name__}; store only plain types "
                    "(str, int, float, bool, None, lists, dicts)")


def save_predictor(path: str, model: SpeechRatePredictor, mean_wps: float, meta: Optional[dict] = None) -> None:
    """Write ``model``'s checkpoint (module docstring) to ``path``, atomically.

    Args:
        mean_wps: the training set's mean words per second (rate * mean_wps = words per second).
        meta: plain types only, e.g. {"encoder": ..., "valid_mae_wps": ...}.
    """
    mean_wps = float(mean_wps)
    if not math.isfinite(mean_wps) or mean_wps <= 0:
        raise ValueError(f"save_predictor: mean_wps must be a positive number, got {mean_wps}")
    meta = {} if meta is None else dict(meta)
    _check_plain(meta, "meta")
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "kwargs": dict(model.kwargs),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "mean_wps": mean_wps,
        "meta": meta,
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_predictor(path: str, map_location="cpu") -> Tuple[SpeechRatePredictor, float, dict]:
    """Read a checkpoint written by ``save_predictor``.

    Returns:
        (the predictor, frozen: eval mode, requires_grad False, and kept in eval by its train();
        mean_wps; meta).

    Raises:
        FileNotFoundError: no file at ``path``.
        SpeechRateCheckpointError: the file is not such a checkpoint (the message names ``path``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"speech-rate predictor checkpoint {path}: file not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for non-checkpoints
        raise SpeechRateCheckpointError(
            f"{path}: not a speech-rate predictor checkpoint (torch.load failed: {type(e).__name__}: {e})"
        ) from e
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise SpeechRateCheckpointError(
            f"{path}: not a speech-rate predictor checkpoint (expected format {CHECKPOINT_FORMAT!r}, found "
            f"{found!r}); write one with espnet_omni_avsr.bin.train_speech_rate"
        )
    missing = [k for k in _KEYS if k not in checkpoint]
    if missing:
        raise SpeechRateCheckpointError(f"{path}: speech-rate predictor checkpoint without {missing}")
    try:
        model = SpeechRatePredictor(**checkpoint["kwargs"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise SpeechRateCheckpointError(f"{path}: its predictor cannot be rebuilt: {e}") from e
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    set_trainable(model, False)  # requires_grad False, eval now and kept in eval
    return model, float(checkpoint["mean_wps"]), dict(checkpoint["meta"])
