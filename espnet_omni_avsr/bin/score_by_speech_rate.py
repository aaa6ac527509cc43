#!/usr/bin/env python3
"""WER and LLM tokens per second of decoded sets, split by the utterances' speech rate.

    python -m espnet_omni_avsr.bin.score_by_speech_rate --exp_dir exp/mms_small --inference_tag greedy \
        --dump_dir dump [--groups 2] [--out exp/mms_small/speech_rate_wer.md]

An utterance's speech rate is its reference word count over its duration (video frames / 25 from
`utt2num_frames`, else `utt2dur`). Within each test set the utterances are cut into `--groups`
equal-count groups by rate (2: slower and faster half), the same cut for every decoding of that set
(its noisy copies included), so the rows compare like with like. WER is jiwer's on the texts
normalised as stage 11's scoring does (`scoring/sclite.py`); tokens per second is the LLM input
tokens (`llm_tokens`) over the seconds of each group. Prints a Markdown table (and writes it to
`--out`). A model whose LLM reads a fixed number of tokens per second shows the same tokens/s in
every group; MMS-LLaMA's speech-rate-aware Q-Former gives the faster group more.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List

import jiwer

from espnet_omni_avsr.names import find_decode_dirs, snr_dir
from espnet_omni_avsr.scoring.sclite import ScoringError, normalize_text, read_text

FPS = 25.0


def durations(set_dir: Path) -> Dict[str, float]:
    """utt -> seconds: video frames / 25 when the set has utt2num_frames, else utt2dur."""
    frames, dur = set_dir / "utt2num_frames", set_dir / "utt2dur"
    if frames.is_file():
        return {u: int(v) / FPS for u, v in read_text(frames, allow_empty=False).items()}
    if dur.is_file():
        return {u: float(v) for u, v in read_text(dur, allow_empty=False).items()}
    raise ScoringError(f"{set_dir}: neither utt2num_frames nor utt2dur: no durations for speech rates")


def rate_groups(refs: Dict[str, str], secs: Dict[str, float], groups: int) -> List[List[str]]:
    """The utterances in `groups` equal-count groups by words per second, slowest first."""
    rated = sorted((len(normalize_text(t).split()) / secs[u], u) for u, t in refs.items() if secs.get(u, 0) > 0)
    n = len(rated)
    return [[u for _, u in rated[g * n // groups:(g + 1) * n // groups]] for g in range(groups)]


def score_group(utts: List[str], refs, hyps, secs, tokens) -> dict:
    ref = [normalize_text(refs[u]) for u in utts]
    hyp = [normalize_text(hyps.get(u, "")) for u in utts]
    words = sum(len(r.split()) for r in ref)
    seconds = sum(secs[u] for u in utts)
    out = dict(utts=len(utts), words=words, wps=words / seconds, wer=100 * jiwer.wer(ref, hyp))
    if tokens:
        out["tokens_per_second"] = sum(int(tokens[u]) for u in utts) / seconds
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True, help="a model's exp dir")
    p.add_argument("--inference_tag", required=True)
    p.add_argument("--dump_dir", required=True)
    p.add_argument("--groups", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the table here")
    args = p.parse_args(argv)
    if args.groups < 1:
        p.error("--groups must be >= 1")
    found = find_decode_dirs(args.exp_dir, args.inference_tag)
    if not found:
        print(f"no decoding directories under {args.exp_dir}/decode_{args.inference_tag}", file=sys.stderr)
        return 1
    cuts = {}
    lines = ["| set | task | SNR | group | utts | words/s | WER (%) | LLM tokens/s |", "|---|---|---|---|---|---|---|---|"]
    try:
        for path, d in found:
            clean_dir = Path(args.dump_dir) / d.test_set
            if d.test_set not in cuts:
                secs = durations(clean_dir)
                refs = read_text(clean_dir / "text")
                cuts[d.test_set] = (secs, refs, rate_groups(refs, secs, args.groups))
            secs, refs, groups = cuts[d.test_set]
            hyp_file = Path(path) / "text"
            if not hyp_file.is_file():
                print(f"skipping {path}: no hypotheses (text)", file=sys.stderr)
                continue
            hyps = read_text(hyp_file)
            tok_file = Path(path) / "llm_tokens"
            tokens = read_text(tok_file, allow_empty=False) if tok_file.is_file() else {}
            for g, utts in enumerate(groups):
                s = score_group(utts, refs, hyps, secs, tokens)
                name = "all" if args.groups == 1 else f"{g + 1}/{args.groups} (slowest first)" if g == 0 else f"{g + 1}/{args.groups}"
                tps = f"{s['tokens_per_second']:.1f}" if "tokens_per_second" in s else "-"
                lines.append(f"| {d.test_set} | {d.label} | {snr_dir(d.snr)[4:]} | {name} | {s['utts']} | "
                             f"{s['wps']:.2f} | {s['wer']:.2f} | {tps} |")
    except ScoringError as e:
        print(f"score_by_speech_rate: {e}", file=sys.stderr)
        return 1
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
