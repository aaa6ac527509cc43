"""The PNG figures of `bin/analyze_sinks`: what a person looks at before reading the numbers."""
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from espnet_omni_avsr.analysis.sinks import RowAnalysis
from espnet_omni_avsr.decoders.prompt import TokenType

_SHORT = {
    TokenType.BOS: "BOS", TokenType.MODALITY_OPEN: "<m>", TokenType.MODALITY_CLOSE: "</m>",
    TokenType.AUDIO: "audio", TokenType.VIDEO: "video", TokenType.INSTRUCTION: "instruction",
    TokenType.TRANSCRIPT: "transcript", TokenType.EOS: "EOS", TokenType.PAD: "pad",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spans(types: Sequence[int]) -> List[Tuple[int, int, str]]:
    """Runs of one token type: [(start, end (exclusive), label)]."""
    out = []
    start = 0
    for i in range(1, len(types) + 1):
        if i == len(types) or types[i] != types[start]:
            out.append((start, i, _SHORT[TokenType(types[start])]))
            start = i
    return out


def _label_spans(ax, types: Sequence[int]) -> None:
    ticks, labels = [], []
    for start, end, label in spans(types):
        ax.axvline(start - 0.5, color="white", lw=0.6, alpha=0.7)
        ticks.append((start + end - 1) / 2)
        labels.append(label)
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)


def attention_map(row: RowAnalysis, path: Path, title: str) -> None:
    """Layer x key position: the attention each position receives (log colour scale), sinks marked."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    received = row.received.clamp_min(1e-4).numpy()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.06 * received.shape[1] + 3), 0.2 * received.shape[0] + 2))
    im = ax.imshow(received, aspect="auto", origin="lower", cmap="magma", norm=LogNorm(vmin=1e-4, vmax=1.0))
    for layer, positions in enumerate(row.sinks):
        ax.scatter(positions, [layer] * len(positions), marker="o", s=14, facecolors="none", edgecolors="cyan")
    bos = [layer for layer, hit in enumerate(row.bos_sink) if hit]
    ax.scatter([row.anchor] * len(bos), bos, marker="s", s=14, facecolors="none", edgecolors="lime")
    _label_spans(ax, row.types)
    ax.set_yticks(range(received.shape[0]))
    ax.set_yticklabels([str(i + 1) for i in range(received.shape[0])], fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(f"{title}\nattention received (mean over heads and queries); "
                 "green square: BOS sink, cyan circle: intermediate sink", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def activation_magnitudes(
    hidden: torch.Tensor, row: RowAnalysis, layer: int, path: Path, title: str, massive_features: Sequence[int]
) -> None:
    """|h| per feature index at hidden state `layer` (1-based): BOS, the intermediate sinks found in
    the next layer, and the median over the other prefix tokens."""
    plt = _pyplot()
    h = hidden[: len(row.types)].float().abs()
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(h[row.anchor].numpy(), lw=0.8, label=f"BOS / anchor (position {row.anchor})")
    sinks = row.sinks[layer] if layer < len(row.sinks) else []
    for p in sinks[:3]:
        ax.plot(h[p].numpy(), lw=0.8, label=f"sink at {p} ({_SHORT[TokenType(row.types[p])]})")
    others = [p for p, t in enumerate(row.types)
              if p != row.anchor and p not in sinks and t not in (TokenType.TRANSCRIPT, TokenType.EOS)]
    if others:
        ax.plot(h[others].median(0).values.numpy(), lw=0.8, color="grey", label="median, other prefix tokens")
    for f in massive_features[:8]:
        ax.annotate(str(f), (f, float(h[:, f].max())), fontsize=7, color="red")
    ax.set_yscale("log")
    ax.set_xlabel("feature index")
    ax.set_ylabel("|hidden state|")
    ax.set_title(f"{title}: hidden state of layer {layer} (red: massive features)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cosine_curves(summary: dict, path: Path, title: str) -> None:
    """Mean cosine similarity to BOS per layer, intermediate sinks vs the other prefix tokens."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    layers = [d for d in summary["layers"] if "cos_to_bos" in d]
    for key, label in (("sink", "intermediate sinks"), ("other", "other prefix tokens")):
        xs = [d["layer"] for d in layers if d["cos_to_bos"][key] is not None]
        ys = [d["cos_to_bos"][key] for d in layers if d["cos_to_bos"][key] is not None]
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set_xlabel("layer (hidden state)")
    ax.set_ylabel("cos(h_BOS, h_t)")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sink_counts(summary: dict, path: Path, title: str, types: Optional[Sequence[str]] = None) -> None:
    """Intermediate sinks per layer, stacked by the token type they fall on."""
    plt = _pyplot()
    layers = summary["layers"]
    types = types or sorted({t for d in layers for t in d["intermediate_sinks_by_type"]})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(layers)
    rows = max(summary["rows"], 1)
    for t in types:
        values = [d["intermediate_sinks_by_type"].get(t, 0) / rows for d in layers]
        ax.bar([d["layer"] for d in layers], values, bottom=bottom, label=t)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xlabel("layer")
    ax.set_ylabel("intermediate sinks per utterance")
    ax.set_title(title, fontsize=9)
    if types:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
