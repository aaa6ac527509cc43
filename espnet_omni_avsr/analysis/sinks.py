"""Attention sinks and massive activations in one LLM pass: the measurements, on tensors.

The inputs are one prompt row of an `LLMOutput` (attention weights and hidden states, eager
attention) and its token-type map; `SinkStats` adds rows up over a data set. The rules:

- Received attention of key position k in layer l: the attention weights a[q, k], averaged over
  heads, then over the valid query positions q >= k (the causal mask gives q < k nothing to say).
  Queries are every position of the row: prefix and, when the transcript is teacher-forced,
  transcript and EOS, so the transcript tokens' reading of the prefix counts.
- Sink score: the same average of a[q, k] * n(q), n(q) = q + 1 the number of keys query q sees,
  i.e. the attention received as a multiple of uniform attention (1 = uniform). A key is a sink in
  a layer when its score exceeds `sink_multiple` (default 5). Uniform attention is the reference
  because raw received attention favours early keys, which more queries see and with fewer rivals.
  Sinks at the anchor (BOS, or the first prefix position for tokenizers without BOS) are BOS
  sinks; sinks elsewhere in the prefix are intermediate sinks, reported with their token type.
- Massive activations (Sun et al., "Massive activations in large language models"): in the output
  hidden state of a layer (`LLMOutput.hidden_states[l]`, l = 1 .. L-1), entry (t, d) is massive
  when |h[t, d]| > `massive_abs` and > `massive_rel` x the median |h| of that layer over the row's
  valid positions and features. The paper's rule is 100 and about 1000x for 7B-70B models; small
  LLMs have smaller residual streams, so both are options (defaults 100 and 1000; RESULTS.md
  gives what SmolLM2-135M shows).
- Cosine to BOS: cos(h_anchor, h_t) on hidden state l (the output of layer l, l = 1 .. L-1) for
  prefix positions t other than the anchor, averaged separately over the intermediate sinks and the
  other prefix tokens, where the sinks are those of layer l + 1's attention (the layer that reads
  hidden state l: a sink is made by the keys computed from it).
"""
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from espnet_omni_avsr.decoders.prompt import TokenType
from espnet_omni_avsr.losses.sink_decorrelation import PREFIX_TYPES


@dataclass
class SinkRule:
    """The thresholds of the module docstring."""

    sink_multiple: float = 5.0
    massive_abs: float = 100.0
    massive_rel: float = 1000.0


def received_attention(attn: torch.Tensor, n_valid: int) -> Dict[str, torch.Tensor]:
    """One row, one layer: `attn` (heads, N, N) softmax weights, the first `n_valid` positions
    valid. Returns {"received": (n,), "score": (n,)}: mean over heads and over queries q >= k of
    a[q, k], and of a[q, k] * (q + 1) (attention as a multiple of uniform)."""
    a = attn[:, :n_valid, :n_valid].float().mean(0)  # (q, k)
    a = torch.tril(a)
    n_queries = torch.arange(n_valid, 0, -1, dtype=a.dtype, device=a.device)  # queries q >= k
    visible = torch.arange(1, n_valid + 1, dtype=a.dtype, device=a.device)[:, None]  # n(q) = q + 1
    return {"received": a.sum(0) / n_queries, "score": (a * visible).sum(0) / n_queries}


def massive_entries(hidden: torch.Tensor, n_valid: int, rule: SinkRule):
    """One row, one layer: `hidden` (N, D). Returns the (K, 2) [position, feature] pairs whose
    magnitude passes both thresholds, and their (K,) magnitudes."""
    h = hidden[:n_valid].float().abs()
    median = h.median()
    hit = (h > rule.massive_abs) & (h > rule.massive_rel * median)
    return hit.nonzero(), h[hit]


def anchor_of(types: torch.Tensor) -> int:
    """The anchor position of one row: its first prefix position (BOS when there is one)."""
    prefix = torch.isin(types, torch.tensor([int(t) for t in PREFIX_TYPES], device=types.device))
    if not prefix.any():
        raise ValueError("a prompt row has no prefix position")
    return int(prefix.float().argmax())


@dataclass
class RowAnalysis:
    """What one prompt row shows, layer by layer (lists indexed by layer - 1, layers 1 .. L)."""

    types: List[int]  # token type of each valid position
    anchor: int
    received: torch.Tensor  # (L, n) received attention per layer and key position
    score: torch.Tensor  # (L, n) sink score (multiple of uniform)
    sinks: List[List[int]]  # per layer: intermediate sink positions (prefix, not the anchor)
    bos_sink: List[bool]  # per layer: is the anchor a sink
    massive: List[torch.Tensor]  # per hidden-state layer 1 .. L-1: (K, 2) [position, feature]
    massive_values: List[torch.Tensor]  # the (K,) magnitudes of those entries
    cos_to_bos: torch.Tensor  # (L-1, n) cos(h_anchor, h_t) on hidden states 1 .. L-1


def analyze_row(
    attentions: Sequence[torch.Tensor],
    hidden_states: Sequence[torch.Tensor],
    token_types: torch.Tensor,
    row: int,
    rule: SinkRule,
) -> RowAnalysis:
    """One row of one LLM pass. `attentions`: L tensors (B, heads, N, N); `hidden_states`: L + 1
    tensors (B, N, D) (Hugging Face's convention); `token_types` (B, N). Padding (PAD) must come
    after the valid positions (right padding)."""
    types = token_types[row]
    n_valid = int((types != int(TokenType.PAD)).sum())
    if n_valid == 0 or bool((types[:n_valid] == int(TokenType.PAD)).any()):
        raise ValueError("analyze_row needs a right-padded row with at least one valid position")
    types = types[:n_valid]
    anchor = anchor_of(types)
    prefix = torch.isin(types, torch.tensor([int(t) for t in PREFIX_TYPES], device=types.device))
    per_layer = [received_attention(a[row], n_valid) for a in attentions]
    received = torch.stack([p["received"] for p in per_layer])
    score = torch.stack([p["score"] for p in per_layer])
    is_sink = score > rule.sink_multiple
    others = prefix.clone()
    others[anchor] = False
    sinks = [(is_sink[i] & others).nonzero().flatten().tolist() for i in range(len(per_layer))]
    bos_sink = [bool(is_sink[i, anchor]) for i in range(len(per_layer))]
    inner = hidden_states[1:-1]
    massive = [massive_entries(h[row], n_valid, rule) for h in inner]
    cos = torch.stack([
        torch.nn.functional.cosine_similarity(
            h[row, :n_valid].float(), h[row, anchor].float()[None], dim=-1, eps=1e-6
        )
        for h in inner
    ]) if inner else torch.zeros(0, n_valid)
    return RowAnalysis(
        types=types.tolist(), anchor=anchor, received=received.cpu(), score=score.cpu(), sinks=sinks,
        bos_sink=bos_sink, massive=[m.cpu() for m, _ in massive], massive_values=[v.cpu() for _, v in massive],
        cos_to_bos=cos.cpu(),
    )


class SinkStats:
    """Sums over rows of one (task, condition): what the JSON summary and the plots report."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.rows = 0
        self.bos_sink_rows = [0] * num_layers
        # layer -> token type name -> number of intermediate sinks
        self.sinks_by_type: List[Counter] = [Counter() for _ in range(num_layers)]
        self.rows_with_sink = [0] * num_layers
        # layer -> token type name -> [sum of received attention, positions]
        self.received_by_type: List[Dict[str, List[float]]] = [defaultdict(lambda: [0.0, 0]) for _ in range(num_layers)]
        # hidden-state layer 1 .. L-1 -> feature -> occurrences; feature -> token type -> occurrences
        self.massive_features: List[Counter] = [Counter() for _ in range(num_layers - 1)]
        self.massive_types: List[Dict[int, Counter]] = [defaultdict(Counter) for _ in range(num_layers - 1)]
        self.massive_max: List[Dict[int, float]] = [dict() for _ in range(num_layers - 1)]
        self.cos_sums = {k: [[0.0, 0] for _ in range(num_layers - 1)] for k in ("sink", "other")}

    def add(self, r: RowAnalysis) -> None:
        self.rows += 1
        names = [TokenType(t).name for t in r.types]
        prefix = {int(t) for t in PREFIX_TYPES}
        for i in range(self.num_layers):
            self.bos_sink_rows[i] += r.bos_sink[i]
            self.rows_with_sink[i] += bool(r.sinks[i])
            for p in r.sinks[i]:
                self.sinks_by_type[i][names[p]] += 1
            for p, name in enumerate(names):
                if r.types[p] in prefix or name in ("TRANSCRIPT", "EOS"):
                    total = self.received_by_type[i][name if p != r.anchor else "ANCHOR"]
                    total[0] += float(r.received[i, p])
                    total[1] += 1
        for i, (entries, values) in enumerate(zip(r.massive, r.massive_values)):
            for (pos, feat), value in zip(entries.tolist(), values.tolist()):
                self.massive_features[i][feat] += 1
                self.massive_types[i][feat][names[pos]] += 1
                self.massive_max[i][feat] = max(self.massive_max[i].get(feat, 0.0), value)
        for i in range(self.num_layers - 1):
            # hidden state i + 1 is what layer i + 2's attention reads: its sinks are this state's
            sink_layer = set(r.sinks[i + 1])
            for p, t in enumerate(r.types):
                if t not in prefix or p == r.anchor:
                    continue
                key = "sink" if p in sink_layer else "other"
                self.cos_sums[key][i][0] += float(r.cos_to_bos[i, p])
                self.cos_sums[key][i][1] += 1

    def summary(self) -> dict:
        """The numbers, JSON-ready (layers numbered from 1)."""
        layers = []
        for i in range(self.num_layers):
            layer = {
                "layer": i + 1,
                "bos_sink_fraction": self.bos_sink_rows[i] / max(self.rows, 1),
                "intermediate_sinks": sum(self.sinks_by_type[i].values()),
                "intermediate_sinks_by_type": dict(self.sinks_by_type[i]),
                "rows_with_intermediate_sink": self.rows_with_sink[i],
                "mean_received_attention_by_type": {
                    k: total / n for k, (total, n) in sorted(self.received_by_type[i].items())
                },
            }
            if i < self.num_layers - 1:  # hidden state i + 1 is this layer's output
                layer["massive_activations"] = [
                    {"feature": f, "occurrences": n, "max_magnitude": self.massive_max[i].get(f),
                     "token_types": dict(self.massive_types[i][f])}
                    for f, n in self.massive_features[i].most_common()
                ]
                layer["cos_to_bos"] = {
                    k: (s / n if n else None) for k, (s, n) in ((k, v[i]) for k, v in self.cos_sums.items())
                }
            layers.append(layer)
        features = Counter()
        for c in self.massive_features:
            features.update(c)
        return {
            "rows": self.rows,
            "intermediate_sinks": sum(layer["intermediate_sinks"] for layer in layers),
            "intermediate_sinks_per_row": sum(layer["intermediate_sinks"] for layer in layers) / max(self.rows, 1),
            "intermediate_sinks_by_type": dict(sum((Counter(s) for s in self.sinks_by_type), Counter())),
            "layers_with_intermediate_sinks": [layer["layer"] for layer in layers if layer["intermediate_sinks"]],
            "massive_activations": sum(features.values()),
            "massive_features": [f for f, _ in features.most_common()],
            "layers": layers,
        }
