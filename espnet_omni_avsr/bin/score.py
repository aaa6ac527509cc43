#!/usr/bin/env python3
"""Stage 11: WER of a decoding directory with sclite, cross-checked with jiwer.

    python -m espnet_omni_avsr.bin.score --ref dump/test/text --hyp <decode_dir>/text \
        --out_dir <decode_dir>/score_wer [--utt2spk dump/test/utt2spk] \
        [--llm_tokens <decode_dir>/llm_tokens --utt2dur dump/test/utt2dur] \
        [--allow_jiwer_fallback] [--sclite PATH] [--wer_tolerance 0.05]

Writes ref.trn, hyp.trn, result.txt (sclite -o all) and summary.json into --out_dir and prints the
summary's main figures as one JSON line. Normalisation and conventions:
espnet_omni_avsr/scoring/sclite.py. Exit status 0 on success, 1 on a scoring error (logged).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from espnet_omni_avsr.scoring.sclite import ScoringError, score
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", required=True, help="reference Kaldi text (uttid TRANSCRIPT)")
    p.add_argument("--hyp", required=True, help="hypothesis Kaldi text written by decoding")
    p.add_argument("--out_dir", required=True, help="where ref.trn, hyp.trn, result.txt, summary.json go")
    p.add_argument("--utt2spk", default=None, help="default: utt2spk beside --ref")
    p.add_argument("--llm_tokens", default=None, help="default: llm_tokens beside --hyp, if present")
    p.add_argument("--utt2dur", default=None, help="default: utt2dur beside --ref, if present")
    p.add_argument("--sclite", default=None, help="sclite executable (default: PATH, then /usr/lib/sctk/bin)")
    p.add_argument("--allow_jiwer_fallback", action="store_true",
                   help="score with jiwer alone when sclite is not installed (otherwise an error)")
    p.add_argument("--wer_tolerance", type=float, default=0.05,
                   help="largest allowed difference between sclite's printed WER and its exact count, in points")
    add_log_level(p)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        s = score(args.ref, args.hyp, args.out_dir, utt2spk=args.utt2spk, sclite=args.sclite,
                  allow_jiwer_fallback=args.allow_jiwer_fallback, wer_tolerance=args.wer_tolerance,
                  llm_tokens=args.llm_tokens, utt2dur=args.utt2dur)
    except (ScoringError, OSError, ValueError) as e:
        logging.error("%s", e)
        return 1
    tok = s["llm_tokens"]["per_second"] if s["llm_tokens"] else None
    print(json.dumps({"wer": s["wer"], "num_words": s["num_words"], "missing": len(s["missing_hypotheses"]),
                      "scorer": s["scorer"], "llm_tokens_per_second": tok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
