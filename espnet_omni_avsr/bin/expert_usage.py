#!/usr/bin/env python3
"""Expert usage of a MoME model: how often each routed expert is in a token's top-k, per LLM layer,
for each compression-rate condition and each span of the prompt (audio, video, text tokens).

    python -m espnet_omni_avsr.bin.expert_usage --model exp/<model_tag> (or a packed .tar) \\
        --data dump/test --task avsr [--rates a4v2 a16v5] --output_dir D [--num_utts 100]

The set is decoded greedily, as at inference (no transcripts needed); every position that goes
through the experts is counted: the prompt's, and each generated token's (as text). Writes
D/expert_usage.json (the numbers: per condition and span, its token count and a layer x expert table
of the share of its tokens whose top-k holds the expert; a row sums to k) and one heatmap per
condition, D/expert_usage_<label>.png. Shared experts serve every token and are not shown.
--rates takes condition labels without the task (a4v2, or avsr_a4v2); default: every trained one.

Consistency across granularities (MoME's claim: the same experts serve a token whatever the rate)
goes in the JSON's "consistency" and the log: for each pair of conditions and each span, the total
variation distance between the two conditions' expert distributions (a layer's row divided by k),
averaged over layers (0: the same experts in the same proportions, 1: disjoint experts), next to
the same distance after the second condition's experts are shuffled within each layer (the mean over
PERMUTATIONS seeded shuffles): what two unrelated routings with the same peakedness would give.
A distance well under its shuffled baseline is a consistent routing.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from tqdm import tqdm

from espnet_omni_avsr.adapters.mome import MoME
from espnet_omni_avsr.decoders.prompt import TokenType
from espnet_omni_avsr.names import TASK_MODALITIES, condition_label, data_triples, parse_condition_label
from espnet_omni_avsr.utils.atomic_files import atomic_write_text
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging
from espnet_omni_avsr.utils.rates import conditions as trained_conditions

SPANS = {  # span -> the token types it counts
    "all": tuple(TokenType),
    "audio": (TokenType.AUDIO,),
    "video": (TokenType.VIDEO,),
    "text": (TokenType.INSTRUCTION, TokenType.TRANSCRIPT, TokenType.EOS),
    "other": (TokenType.BOS, TokenType.MODALITY_OPEN, TokenType.MODALITY_CLOSE),
}
PLOTTED = ("all", "audio", "video", "text")
PERMUTATIONS = 200


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a training exp dir (config.yaml + weights) or a packed archive")
    p.add_argument("--data", required=True, help="a dump set dir (wav.scp and/or video.scp)")
    p.add_argument("--task", choices=sorted(TASK_MODALITIES), default=None, help="default: the model's first task")
    p.add_argument("--rates", nargs="+", default=None, help="condition labels, e.g. a4v2 a16v5 (default: all trained)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_utts", type=int, default=None, help="only the first N utterances of the set")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--ngpu", type=int, default=0)
    add_log_level(p)
    return p


def conditions_for(task: str, labels, config: dict) -> List[dict]:
    """[{task, label, rates}] of the requested labels, or every trained condition of `task`."""
    if not labels:
        return trained_conditions(config, [task])
    out = []
    for text in labels:
        name, rates = parse_condition_label(text if text.startswith(f"{task}_") else f"{task}_{text}")
        out.append(dict(task=name, label=condition_label(name, rates), rates=rates))
    return out


def span_tables(usage: Dict[str, torch.Tensor]) -> Dict[str, dict]:
    """MoME.usage() counts -> span -> {"tokens": n, "frequency": (layers, experts) list}."""
    hits, tokens = usage["hits"].double(), usage["tokens"].double()  # (L, types, E), (L, types)
    out = {}
    for span, types in SPANS.items():
        idx = torch.tensor([int(t) for t in types])
        n = tokens[:, idx].sum(1)  # (L,): the same tokens pass every layer
        freq = hits[:, idx].sum(1) / n.clamp(min=1)[:, None]
        out[span] = dict(tokens=int(n[0]), frequency=freq.tolist())
    return out


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over layers of 0.5 * sum_e |p - q| for (layers, experts) distributions (rows sum to 1)."""
    return float(0.5 * np.abs(p - q).sum(1).mean())


def consistency(conditions: Dict[str, dict], top_k: int, seed: int = 0) -> List[dict]:
    """[{a, b, span, tv, tv_shuffled}] for every pair of conditions and every span both have tokens
    in (see the module docstring)."""
    rng = np.random.default_rng(seed)
    labels = list(conditions)
    out = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            for span in PLOTTED:
                sa, sb = conditions[a]["spans"][span], conditions[b]["spans"][span]
                if not (sa["tokens"] and sb["tokens"]):
                    continue
                p, q = np.array(sa["frequency"]) / top_k, np.array(sb["frequency"]) / top_k
                shuffled = [total_variation(p, rng.permuted(q, axis=1)) for _ in range(PERMUTATIONS)]
                out.append(dict(a=a, b=b, span=span, tv=round(total_variation(p, q), 4),
                                tv_shuffled=round(float(np.mean(shuffled)), 4)))
    return out


def plot(label: str, spans: Dict[str, dict], top_k: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    shown = [s for s in PLOTTED if spans[s]["tokens"]]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown) + 1.2, 3.8), squeeze=False, layout="constrained")
    vmax = max(max(max(row) for row in spans[s]["frequency"]) for s in shown) or 1.0
    for i, (ax, span) in enumerate(zip(axes[0], shown)):
        im = ax.imshow(np.array(spans[span]["frequency"]), aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                       origin="lower", interpolation="nearest")
        ax.set_title(f"{span} ({spans[span]['tokens']} tokens)")
        ax.set_xlabel("routed expert")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if i == 0:
            ax.set_ylabel("LLM layer")
    fig.colorbar(im, ax=list(axes[0]), label=f"share of tokens with the expert in their top-{top_k}")
    fig.suptitle(f"{label}: routed-expert activation (shared experts: every token)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _key_file(first_scp: str, n: int, out: Path) -> str:
    with open(first_scp) as f:
        keys = [line.split(maxsplit=1)[0] for line in f if line.strip()][:n]
    path = out / "utt_ids"
    path.write_text("".join(k + "\n" for k in keys))
    return str(path)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    from espnet_omni_avsr.recognizer import AVSRRecognizer
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = AVSRRecognizer.from_pretrained(args.model, device="cuda" if args.ngpu > 0 else "cpu",
                                         task=args.task, max_new_tokens=args.max_new_tokens)
    adapter = rec.model.decoder.adapter
    if not isinstance(adapter, MoME):
        logging.error(f"{args.model}: the model's LLM adapter is {type(adapter).__name__}, not MoME (llm_adapter: mome)")
        return 1
    task = rec.task
    conds = conditions_for(task, args.rates, vars(rec.args))
    triples = data_triples(args.data, TASK_MODALITIES[task])
    key_file = _key_file(triples[0][0], args.num_utts, out) if args.num_utts else None
    with open(key_file or triples[0][0]) as f:
        n_total = sum(1 for line in f if line.strip())
    loader = AVSRLLMTask.build_streaming_iterator(
        triples, preprocess_fn=rec.preprocess, collate_fn=rec.collate, key_file=key_file, dtype="float32",
        batch_size=args.batch_size, num_workers=0, allow_variable_data_keys=True, inference=True,
    )
    totals = {c["label"]: None for c in conds}
    adapter.track_usage()
    n_utt = 0
    with tqdm(total=n_total, desc=f"expert usage {task} x {len(conds)} conditions", unit="utt", file=sys.stderr) as bar:
        for keys, batch in loader:
            for c in conds:
                adapter.reset_usage()
                rec.rates = c["rates"]
                rec.recognize_batch(batch)
                usage = adapter.usage()
                prev = totals[c["label"]]
                totals[c["label"]] = usage if prev is None else {k: prev[k] + usage[k] for k in usage}
            n_utt += len(keys)
            bar.update(len(keys))
    adapter.track_usage(False)
    if n_utt == 0:
        logging.error(f"{args.data}: no utterances")
        return 1

    record = dict(
        model=str(args.model), data=str(args.data), task=task, num_utts=n_utt, placement=adapter.placement,
        tokens=adapter.tokens, num_layers=len(adapter.layers), num_experts=adapter.num_experts,
        top_k=adapter.top_k, parameters=adapter.parameter_counts(), conditions={},
    )
    for c in conds:
        spans = span_tables(totals[c["label"]])
        record["conditions"][c["label"]] = dict(rates=c["rates"], spans=spans)
        plot(c["label"], spans, adapter.top_k, out / f"expert_usage_{c['label']}.png")
    record["consistency"] = consistency(record["conditions"], adapter.top_k)
    for row in record["consistency"]:
        logging.info(f"{row['a']} vs {row['b']}, {row['span']} tokens: total variation {row['tv']:.3f} "
                     f"(experts shuffled: {row['tv_shuffled']:.3f})")
    atomic_write_text(out / "expert_usage.json", json.dumps(record, indent=1) + "\n")
    logging.info(f"expert usage of {n_utt} utterances x {len(conds)} conditions -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
