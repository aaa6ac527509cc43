"""The AV Q-Former of MMS-LLaMA: a query budget per second of speech instead of a fixed rate.

A BERT-style Q-Former (randomly initialised, cross-attention to the features in every layer) reads
the fused audio-visual features (25 fps) through N learnable queries, the first N of a pool of
`max_queries`. N follows the utterance's duration and its speech rate r (words per second over the
training set's mean words per second; 1 without a predictor):

    N = max(int(q), floor(T / frame_rate * q * clamp(r, min_rate, max_rate)))

with q = queries_per_second and T the utterance's valid frame count. Before the cross-attention
the valid features are linearly stretched along time to floor(clamp(r) * T) frames, so a fast
speaker's frames are spread over as many positions as a normal speaker's would be.
"""
import math
from typing import Optional, Tuple

import torch
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from espnet_omni_avsr.compression.abs_compressor import AbsCompressor

# Added before each floor, so that a product that is an integer on paper is not truncated to one
# below by float64 rounding (375 / 25 * 3 * 1.4 is 62.99999999999999 in floats, 63 on paper).
# Float64 errors on these magnitudes are ~1e-14; no real fractional part is this close below 1.
_FLOOR_EPS = 1e-9


def _check_lengths(name: str, lengths: torch.Tensor, T: Optional[int] = None) -> torch.Tensor:
    """lengths as a (B,) LongTensor, each >= 1 (and <= T when T is given), else a ValueError."""
    if not torch.is_tensor(lengths) or lengths.dim() != 1:
        raise ValueError(f"{name}: expected a (B,) tensor, got {lengths!r}")
    if lengths.is_floating_point() and not torch.equal(lengths, lengths.floor()):
        raise ValueError(f"{name}: expected integer values, got {lengths.tolist()}")
    lengths = lengths.long()
    if (lengths < 1).any() or (T is not None and (lengths > T).any()):
        upper = T if T is not None else "inf"
        raise ValueError(f"{name}: values {lengths.tolist()} are not within [1, {upper}]")
    return lengths


def resize_valid(xs: torch.Tensor, lengths: torch.Tensor, new_lengths: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of each row's valid frames along time to its new length.

    xs: (B, T, D), lengths: (B,) valid frames per row (1..T), new_lengths: (B,) (>= 1).
    Returns (B, max(new_lengths), D); positions past a row's new length are zero.

    Row b's first lengths[b] frames are resampled to new_lengths[b] frames exactly as
    `torch.nn.functional.interpolate(x.transpose(1, 2), size=new, mode="linear",
    align_corners=False)` would resample that row alone: output frame i reads source position
    (i + 0.5) * L / N - 0.5 (clamped to [0, L - 1]) between its two neighbours. The frames past a
    row's length are never read, so its result does not depend on the batch's padding, which
    interpolating the padded batch as a whole would not give. new == old is the identity.
    """
    if xs.dim() != 3:
        raise ValueError(f"resize_valid: expected xs of shape (B, T, D), got {tuple(xs.shape)}")
    B, T, D = xs.shape
    lengths = _check_lengths("resize_valid: lengths", lengths, T).to(xs.device)
    new_lengths = _check_lengths("resize_valid: new_lengths", new_lengths).to(xs.device)
    if lengths.numel() != B or new_lengths.numel() != B:
        raise ValueError(
            f"resize_valid: lengths {tuple(lengths.shape)} and new_lengths {tuple(new_lengths.shape)} "
            f"must both have the batch size {B}"
        )
    out_T = int(new_lengths.max())
    i = torch.arange(out_T, device=xs.device, dtype=torch.float64)[None, :]  # (1, T')
    scale = lengths.double()[:, None] / new_lengths.double()[:, None]  # (B, 1)
    src = ((i + 0.5) * scale - 0.5).clamp(min=0)  # (B, T')
    last = (lengths - 1)[:, None]
    i0 = torch.minimum(src.floor().long(), last)
    i1 = torch.minimum(i0 + 1, last)
    w = (src - i0.double()).clamp(0, 1).to(xs.dtype)[:, :, None]  # (B, T', 1)
    x0 = torch.gather(xs, 1, i0[:, :, None].expand(B, out_T, D))
    x1 = torch.gather(xs, 1, i1[:, :, None].expand(B, out_T, D))
    ys = x0 * (1 - w) + x1 * w
    valid = torch.arange(out_T, device=xs.device)[None, :] < new_lengths[:, None]
    return ys.masked_fill(~valid[:, :, None], 0.0)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"QFormerCompressor: {name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value, minimum: float, inclusive: bool = True) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        relation = ">=" if inclusive else ">"
        raise ValueError(f"QFormerCompressor: {name} must be a finite number {relation} {minimum}, got {value!r}")


class QFormerCompressor(AbsCompressor):
    """MMS-LLaMA's AV Q-Former: (B, T, input_size) frames -> (B, N_max, hidden_size) query tokens.

    Token count per utterance (`query_counts`), with q = queries_per_second, T its valid frame
    count, r its speech rate (all ones when none is given) and rho = clamp(r, min_rate, max_rate):

        N = max(int(q), floor(T / frame_rate * q * rho))

    computed in float64 in that order of operations (then + 1e-9 before the floor, see
    _FLOOR_EPS). The rate is taken at its tensor's precision: a float32 1.4 is 1.39999998. Queries
    are the first N rows of a pool of `max_queries`, initialised N(0, 0.02) (BLIP-2's own pool
    starts at zeros; here they are random so the queries differ from the start). A count above
    `max_queries` raises a ValueError rather than clamping: a clamped count would hand the LLM
    fewer tokens per second than it was trained with, silently; the message names the count, the
    duration and the rate. At the defaults (3 q/s, pool 120) that is an utterance over 40 s at
    rho = 1, or 20 s at rho = 2.

    Features: each utterance's T valid frames are stretched linearly (`resize_valid`) to
    max(1, floor(rho * T)) frames, the same clamped rate as the count, so with the defaults
    (rho in [1, 2]) features are never shortened and at most doubled.

    The Q-Former is transformers' `Blip2QFormerModel` (BERT layers: query self-attention,
    cross-attention to the features in every layer via cross_attention_frequency=1, feed-forward;
    its key/value projections take `input_size` directly, so no input projection is needed),
    built from a `Blip2QFormerConfig` only, i.e. randomly initialised. Masks, not padding:
    the queries' self-attention mask hides a row's unused queries (keys past its count), the
    cross-attention mask hides frames past the stretched length, so an utterance gives the same
    tokens alone as inside a padded batch. Positions past a row's count are zeroed (the Q-Former
    computes them, they are discarded). Notes on that model: it applies LayerNorm + dropout to the
    query embeddings before the first layer (BERT's embedding LayerNorm), and it casts the
    features to its own parameters' dtype.

    The speech rate only sets integers (counts and lengths): no gradient reaches a rate predictor
    through this module; it is trained on its own target.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: Optional[int] = None,
        queries_per_second: float = 3.0,
        frame_rate: float = 25.0,
        max_queries: int = 120,
        min_rate: float = 1.0,
        max_rate: float = 2.0,
        dropout: float = 0.1,
        rate: Optional[int] = None,
    ):
        """`rate` exists only to refuse it clearly: the count follows the duration, not a rate.

        The task's per-rate compressor builder passes rate=...; this compressor belongs in a
        branch that builds it with input_size and its own keys.
        """
        super().__init__()
        if rate is not None:
            raise ValueError(
                f"QFormerCompressor takes no rate (got rate={rate!r}): its token count is "
                "queries_per_second x duration x speech rate; configure queries_per_second instead"
            )
        _check_int("input_size", input_size, 1)
        _check_int("hidden_size", hidden_size, 1)
        _check_int("num_layers", num_layers, 1)
        _check_int("num_heads", num_heads, 1)
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"QFormerCompressor: hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})"
            )
        if intermediate_size is None:
            intermediate_size = 4 * hidden_size
        _check_int("intermediate_size", intermediate_size, 1)
        _check_number("queries_per_second", queries_per_second, 1.0)
        _check_number("frame_rate", frame_rate, 0.0, inclusive=False)
        _check_int("max_queries", max_queries, 1)
        if max_queries < int(queries_per_second):
            raise ValueError(
                f"QFormerCompressor: max_queries ({max_queries}) is below the minimum count "
                f"int(queries_per_second) = {int(queries_per_second)}"
            )
        _check_number("min_rate", min_rate, 0.0, inclusive=False)
        _check_number("max_rate", max_rate, min_rate)
        _check_number("dropout", dropout, 0.0)
        if dropout >= 1:
            raise ValueError(f"QFormerCompressor: dropout must be in [0, 1), got {dropout!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.queries_per_second = float(queries_per_second)
        self.frame_rate = float(frame_rate)
        self.max_queries = max_queries
        self.min_rate = float(min_rate)
        self.max_rate = float(max_rate)
        config = Blip2QFormerConfig(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            cross_attention_frequency=1,
            encoder_hidden_size=input_size,
            use_qformer_text_input=False,
        )
        self.qformer = Blip2QFormerModel(config)
        self.queries = torch.nn.Parameter(torch.empty(max_queries, hidden_size))
        torch.nn.init.normal_(self.queries, mean=0.0, std=0.02)

    def output_size(self) -> int:
        return self.hidden_size

    def _clamped_rate(self, lengths: torch.Tensor, speech_rate: Optional[torch.Tensor]) -> torch.Tensor:
        """rho = clamp(r, min_rate, max_rate) in float64, (B,); ones (clamped) without a rate."""
        if speech_rate is None:
            rate = torch.ones(lengths.shape, dtype=torch.float64, device=lengths.device)
        else:
            if not torch.is_tensor(speech_rate):
                speech_rate = torch.as_tensor(speech_rate)
            if speech_rate.shape != lengths.shape:
                raise ValueError(
                    f"QFormerCompressor: speech_rate must have shape {tuple(lengths.shape)} (one per "
                    f"utterance), got {tuple(speech_rate.shape)}"
                )
            rate = speech_rate.detach().to(device=lengths.device, dtype=torch.float64)
            if not torch.isfinite(rate).all():
                raise ValueError(f"QFormerCompressor: speech_rate must be finite, got {rate.tolist()}")
        return rate.clamp(self.min_rate, self.max_rate)

    def query_counts(self, lengths: torch.Tensor, speech_rate: Optional[torch.Tensor] = None) -> torch.Tensor:
        """N = max(int(q), floor(T / frame_rate * q * clamp(r, min_rate, max_rate))), (B,) long.

        lengths: (B,) valid frame counts (>= 1); speech_rate: (B,) or None (r = 1). A count above
        max_queries raises a ValueError naming it.
        """
        lengths = _check_lengths("QFormerCompressor: lengths", lengths)
        rho = self._clamped_rate(lengths, speech_rate)
        q = self.queries_per_second
        counts = torch.floor(lengths.double() / self.frame_rate * q * rho + _FLOOR_EPS).long()
        counts = counts.clamp(min=int(q))
        over = counts > self.max_queries
        if over.any():
            b = int(torch.nonzero(over)[0])
            raise ValueError(
                f"QFormerCompressor: utterance {b} needs {int(counts[b])} queries "
                f"({int(lengths[b])} frames = {int(lengths[b]) / self.frame_rate:.2f} s at "
                f"{q:g} queries/s, clamped speech rate {float(rho[b]):.3f}) but max_queries is "
                f"{self.max_queries}; raise max_queries (counts in batch: {counts.tolist()})"
            )
        return counts

    def forward(
        self, xs: torch.Tensor, lengths: torch.Tensor, speech_rate: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """xs: (B, T, input_size), lengths: (B,), speech_rate: (B,) or None.

        Returns tokens (B, N_max, hidden_size), zero past each row's count, and the counts (B,).
        """
        if xs.dim() != 3 or xs.size(2) != self.input_size:
            raise ValueError(
                f"QFormerCompressor: expected xs of shape (B, T, {self.input_size}), got {tuple(xs.shape)}"
            )
        B, T, _ = xs.shape
        lengths = _check_lengths("QFormerCompressor: lengths", lengths, T).to(xs.device)
        if lengths.numel() != B:
            raise ValueError(f"QFormerCompressor: lengths has {lengths.numel()} entries for a batch of {B}")
        counts = self.query_counts(lengths, speech_rate)
        rho = self._clamped_rate(lengths, speech_rate)
        new_lengths = torch.floor(lengths.double() * rho + _FLOOR_EPS).long().clamp(min=1)
        feats = resize_valid(xs, lengths, new_lengths)  # (B, T', D)
        frame_mask = torch.arange(feats.size(1), device=xs.device)[None, :] < new_lengths[:, None]
        n_max = int(counts.max())
        query_mask = torch.arange(n_max, device=xs.device)[None, :] < counts[:, None]  # (B, N_max)
        queries = self.queries[:n_max][None].expand(B, -1, -1)
        out = self.qformer(
            query_embeds=queries,
            attention_mask=query_mask.long(),
            encoder_hidden_states=feats,
            encoder_attention_mask=frame_mask.long(),
        ).last_hidden_state
        return out.masked_fill(~query_mask[:, :, None], 0.0), counts
