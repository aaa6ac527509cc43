#!/usr/bin/env python3
"""Stage 5: drop bad items and out-of-range utterances from dump/<set>, in place, with a report.

    python -m espnet_omni_avsr.bin.filter_data --dump_dir dump/train [--data_dir data/train] \
        [--min_duration S] [--max_duration S] [--max_words N] [--max_chars N] [--fps 25]

Idempotent: the unfiltered lists are kept in dump/<set>/.unfiltered/ and every run filters from
them. Writes dump/<set>/filter_report.txt. Exit status: 0 success, 1 a data error, 2 bad arguments.
"""
import argparse
import logging
import sys
from typing import List, Optional

from espnet_omni_avsr.prep.errors import PrepError
from espnet_omni_avsr.prep.filtering import filter_data, summary
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Keep the utterances of a dump directory that no stage rejected (bad_items.tsv of "
                    "--data_dir and --dump_dir), that are in every list, and that meet the limits; "
                    "a limit left out is not applied.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dump_dir", required=True, help="dump/<set>, filtered in place")
    parser.add_argument("--data_dir", default=None, help="data/<set>, whose bad_items.tsv is reported too")
    parser.add_argument("--min_duration", type=float, default=None, help="seconds (utt2dur)")
    parser.add_argument("--max_duration", type=float, default=None, help="seconds (utt2dur)")
    parser.add_argument("--max_words", type=int, default=None, help="words of the transcript")
    parser.add_argument("--max_chars", type=int, default=None, help="characters of the transcript, spaces included")
    parser.add_argument("--fps", type=float, default=25.0,
                        help="video frame rate, for durations from utt2num_frames when there is no utt2dur")
    add_log_level(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        result = filter_data(args.dump_dir, args.data_dir, min_duration=args.min_duration,
                             max_duration=args.max_duration, max_words=args.max_words,
                             max_chars=args.max_chars, fps=args.fps)
    except PrepError as e:
        logging.error("%s", e)
        return 1
    print(summary(args.dump_dir, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
