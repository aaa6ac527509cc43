#!/usr/bin/env python3
"""Stage 11 (end): RESULTS.md (+ RESULTS.json, RESULTS_wer_vs_tokens.png) from every scored decoding directory.

    python -m espnet_omni_avsr.bin.make_results [--exp_dir exp] [--dump_dir dump] [--out RESULTS.md] [--no_plot]
        [--fresh]

Reads exp/<model_tag>/decode_<inference_tag>/<test_set>/<task>/snr_<clean|X>/score_wer/summary.json
(the convention is in espnet_omni_avsr/scoring/results_table.py) and merges them by model with the
earlier results beside --out (RESULTS.json, or once the tables of a RESULTS.md written without it): a
model found under --exp_dir replaces its earlier rows, the other earlier models are kept and marked
so. --fresh drops every earlier result. Exit status 0 on success, 1 on an error (a malformed
RESULTS.json is one).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from espnet_omni_avsr.scoring.results_table import write_results
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", default="exp", help="the recipe's experiment directory")
    p.add_argument("--dump_dir", default=None,
                   help="dump dir, for tokens per second of summaries that lack them (llm_tokens / utt2dur)")
    p.add_argument("--out", default="RESULTS.md", help="markdown file to write; the plot goes beside it")
    p.add_argument("--no_plot", action="store_true", help="do not draw WER vs tokens per second")
    p.add_argument("--fresh", action="store_true",
                   help="drop the results of earlier runs (RESULTS.json beside --out) instead of keeping the models "
                        "that --exp_dir lacks")
    add_log_level(p)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        written = write_results(args.exp_dir, args.out, plot=not args.no_plot, dump_dir=args.dump_dir,
                                fresh=args.fresh)
    except (OSError, ValueError) as e:
        logging.error("%s", e)
        return 1
    print(json.dumps(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
