"""Attention sinks and massive activations of a trained model, per task and compression rate.

    python -m espnet_omni_avsr.bin.analyze_sinks --model exp/multitask_small --data dump/test \\
        --output_dir exp/multitask_small/sinks [--task avsr asr] [--rates a16v5] [--num_utts 100]

Runs the model teacher-forced on the first --num_utts utterances of the dump dir (prefix + the
reference transcript, or the prefix alone with --prefix_only) with the LLM's eager attention (sdpa /
flash models are switched for the analysis only), and writes, per condition, under
<output_dir>/<label>/ (label as in the decode dirs, e.g. avsr_a4v2):
  summary.json        per layer: BOS-sink fraction, intermediate sinks by token type, mean attention
                      received by token type, massive features (occurrences, largest |h|, token
                      types), cosine to BOS of sinks and of the other prefix tokens
  attention_map.png   layer x position attention received, for the first utterance, spans labelled
  activations.png     |h| per feature index of BOS, the sinks and the other prefix tokens
  cos_to_bos.png      mean cosine to BOS per layer, sinks vs other prefix tokens
  sink_counts.png     intermediate sinks per utterance and layer, by token type
and <output_dir>/summary.json + summary.md over every condition. The rules (what counts as a sink,
as a massive activation) are in espnet_omni_avsr/analysis/sinks.py; their thresholds are options.
A batch that fails is reported with its utterance ids and skipped.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from espnet_omni_avsr.analysis import sink_plots
from espnet_omni_avsr.analysis.sinks import RowAnalysis, SinkRule, SinkStats, analyze_row
from espnet_omni_avsr.names import TASK_MODALITIES, TEXT, condition_label, data_triples, parse_conditions
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a training exp dir (config.yaml + weights) or a packed .tar")
    p.add_argument("--data", required=True, help="a dump set dir (wav.scp / video.scp / text)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--task", nargs="+", choices=sorted(TASK_MODALITIES), default=None,
                   help="default: every task the model was trained on")
    p.add_argument("--rates", nargs="+", default=None, metavar="CONDITION",
                   help="conditions to analyse, as in condition labels: a16v5, a4 (a task reads the "
                        "modalities it uses); default: every trained rate combination")
    p.add_argument("--num_utts", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--prefix_only", action="store_true",
                   help="run the prompt prefix alone (no teacher-forced transcript queries)")
    p.add_argument("--sink_multiple", type=float, default=SinkRule.sink_multiple,
                   help="a sink receives more than this multiple of uniform attention")
    p.add_argument("--massive_abs", type=float, default=SinkRule.massive_abs)
    p.add_argument("--massive_rel", type=float, default=SinkRule.massive_rel,
                   help="a massive activation is above massive_abs and massive_rel x the layer's median |h|")
    p.add_argument("--device", default="cpu")
    add_log_level(p)
    return p


def parse_rates(texts: Optional[List[str]]) -> Optional[List[Dict[str, int]]]:
    """["a16v5", "a4"] -> [{"audio": 16, "video": 5}, {"audio": 4}] (`names.parse_conditions`)."""
    if not texts:
        return None
    try:
        return [parse_conditions(t) for t in texts]
    except ValueError as e:
        raise SystemExit(f"--rates {e}") from e


def use_eager_attention(decoder) -> None:
    """Attention weights need the eager implementation; switch an sdpa / flash model for the analysis."""
    if decoder.attn_implementation == "eager":
        return
    logging.info(f"switching the LLM from {decoder.attn_implementation} to eager attention for the analysis")
    decoder.base_model.set_attn_implementation("eager")
    decoder.attn_implementation = "eager"


def wanted_conditions(model, tasks: Optional[List[str]], rates: Optional[List[Dict[str, int]]]) -> List[dict]:
    """[{task, conditions, label}] for the tasks and rate combinations asked for (every trained one
    by default); an untrained rate is refused by the model's branches."""
    import itertools

    out, seen = [], set()
    for task in tasks or model.tasks:
        mods = TASK_MODALITIES[task]
        combos = ([dict(zip(mods, c)) for c in itertools.product(*(model.conditions(m) for m in mods))]
                  if rates is None else [{m: r[m] for m in mods if m in r} for r in rates])
        for combo in combos:
            missing = [m for m in mods if m not in combo]
            if missing:
                raise SystemExit(f"--rates: task {task} reads {list(mods)}; no rate given for {missing}")
            conditions = {}
            for m in mods:
                try:
                    conditions[m] = model.branches[m].check_condition(combo[m])
                except ValueError as e:
                    raise SystemExit(f"--rates: {m} {e}") from e
            label = condition_label(task, {m: int(c) if str(c).isdigit() else c for m, c in conditions.items()})
            if label not in seen:
                seen.add(label)
                out.append(dict(task=task, conditions=conditions, label=label))
    return out


class ConditionRun:
    """Sums of one condition, and its first row kept for the figures."""

    def __init__(self, task: str, conditions: dict, label: str, num_layers: int):
        self.task, self.conditions, self.label = task, conditions, label
        self.stats = SinkStats(num_layers)
        self.example: Optional[RowAnalysis] = None
        self.example_hidden: Optional[List[torch.Tensor]] = None
        self.example_key: Optional[str] = None


@torch.no_grad()
def run_batch(model, run: ConditionRun, keys, batch, rule: SinkRule, prefix_only: bool) -> None:
    tokens = model.modality_tokens([run.task], batch, run.conditions)
    text = None if prefix_only else batch.get(TEXT.data_name)
    lengths = None if text is None else batch.get(f"{TEXT.data_name}_lengths")
    prompt = model.prompt.build(
        model.decoder.embed, run.task, tokens, text, lengths, padding_side="right", conditions=run.conditions
    )
    out = model.decoder(prompt, output_hidden_states=True, output_attentions=True)
    for row, key in enumerate(keys):
        analysis = analyze_row(out.attentions, out.hidden_states, prompt.token_types, row, rule)
        run.stats.add(analysis)
        if run.example is None:
            run.example, run.example_key = analysis, key
            run.example_hidden = [h[row].float().cpu() for h in out.hidden_states[1:-1]]


def write_condition(run: ConditionRun, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = run.stats.summary()
    summary.update(task=run.task, conditions=run.conditions, label=run.label, example=run.example_key)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if run.example is None:
        return summary
    title = f"{run.label}, {run.example_key}"
    sink_plots.attention_map(run.example, out_dir / "attention_map.png", title)
    layers = [d for d in summary["layers"] if "massive_activations" in d]
    if layers:
        busiest = max(layers, key=lambda d: (sum(m["occurrences"] for m in d["massive_activations"]), -d["layer"]))
        layer = busiest["layer"] if busiest["massive_activations"] else layers[len(layers) // 2]["layer"]
        features = [m["feature"] for m in summary["layers"][layer - 1].get("massive_activations", [])]
        sink_plots.activation_magnitudes(
            run.example_hidden[layer - 1], run.example, layer, out_dir / "activations.png", title, features
        )
        sink_plots.cosine_curves(summary, out_dir / "cos_to_bos.png", run.label)
    sink_plots.sink_counts(summary, out_dir / "sink_counts.png", run.label)
    return summary


def ranges(numbers: List[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> "1-3, 5, 7-8"."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def markdown(summaries: List[dict], rule: SinkRule, args) -> str:
    lines = [
        f"# Attention sinks and massive activations: {args.model} on {args.data}",
        "",
        f"{summaries[0]['rows'] if summaries else 0} utterances per condition; "
        f"{'prefix only' if args.prefix_only else 'prefix + teacher-forced transcript'}; "
        f"sink: > {rule.sink_multiple:g}x uniform attention; massive: |h| > {rule.massive_abs:g} "
        f"and > {rule.massive_rel:g}x the layer's median.",
        "",
        "| condition | BOS sink (share of layers x utts) | intermediate sinks / utt | on token types | in layers "
        "| massive activations / utt | massive features |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        rows = max(s["rows"], 1)
        bos = sum(d["bos_sink_fraction"] for d in s["layers"]) / max(len(s["layers"]), 1)
        types = ", ".join(f"{k} {v}" for k, v in sorted(s["intermediate_sinks_by_type"].items(), key=lambda kv: -kv[1]))
        layers = ranges(s["layers_with_intermediate_sinks"]) or "-"
        feats = ", ".join(map(str, s["massive_features"][:6])) or "-"
        lines.append(f"| {s['label']} | {bos:.2f} | {s['intermediate_sinks_per_row']:.2f} | {types or '-'} | "
                     f"{layers} | {s['massive_activations'] / rows:.1f} | {feats} |")
    lines += ["", "Figures per condition: `<label>/attention_map.png`, `activations.png`, `cos_to_bos.png`, "
              "`sink_counts.png`; numbers in `<label>/summary.json`.", ""]
    return "\n".join(lines)


def analyze(args) -> List[dict]:
    from espnet_omni_avsr.recognizer import AVSRRecognizer
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    rule = SinkRule(args.sink_multiple, args.massive_abs, args.massive_rel)
    rec = AVSRRecognizer.from_pretrained(args.model, device=args.device)
    model = rec.model
    use_eager_attention(model.decoder)
    runs = [ConditionRun(c["task"], c["conditions"], c["label"], model.decoder.num_layers)
            for c in wanted_conditions(model, args.task, parse_rates(args.rates))]
    out_dir = Path(args.output_dir)
    summaries = []
    for run in runs:
        mods = list(TASK_MODALITIES[run.task])
        triples = data_triples(args.data, mods, text=not args.prefix_only)
        for path, _, _ in triples:
            if not Path(path).is_file():
                raise SystemExit(f"{args.data}: no {Path(path).name} for task {run.task}")
        loader = AVSRLLMTask.build_streaming_iterator(
            triples, preprocess_fn=rec.preprocess, collate_fn=rec.collate, dtype="float32",
            batch_size=args.batch_size, num_workers=0, allow_variable_data_keys=True, inference=True,
        )
        done, skipped = 0, []
        bar = tqdm(total=args.num_utts, desc=f"sinks {run.label}", unit="utt", file=sys.stderr)
        for keys, batch in loader:
            keys = list(keys)[: args.num_utts - done]
            batch = {k: v[: len(keys)].to(args.device) for k, v in batch.items()}
            try:
                run_batch(model, run, keys, batch, rule, args.prefix_only)
            except (RuntimeError, ValueError) as e:
                logging.error(f"{run.label}: skipped utterances {keys}: {type(e).__name__}: {e}")
                skipped += keys
            done += len(keys)
            bar.update(len(keys))
            if done >= args.num_utts:
                break
        bar.close()
        summary = write_condition(run, out_dir / run.label)
        summary["skipped"] = skipped
        summaries.append(summary)
        logging.info(f"{run.label}: {summary['rows']} utterances, {summary['intermediate_sinks_per_row']:.2f} "
                     f"intermediate sinks and {summary['massive_activations']} massive activations "
                     f"-> {out_dir / run.label}")
    (out_dir / "summary.json").write_text(json.dumps(
        {"model": str(args.model), "data": str(args.data), "rule": vars(rule), "conditions": summaries}, indent=1))
    (out_dir / "summary.md").write_text(markdown(summaries, rule, args))
    return summaries


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    if args.num_utts < 1:
        raise SystemExit("--num_utts must be at least 1")
    analyze(args)


if __name__ == "__main__":
    main()
