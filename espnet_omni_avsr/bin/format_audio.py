#!/usr/bin/env python3
"""Stage 3: data/<set>/wav.scp -> 16 kHz mono 16-bit wav, dump/<set>/{wav.scp,utt2dur}, length check.

    python -m espnet_omni_avsr.bin.format_audio --data_dir data/train --out_dir dump/train \
        [--nj 4] [--shard K] [--sample_rate 16000] [--max_av_diff 0.12] [--fps 25] \
        [--skip_av_check] [--utt2num_frames FILE]

Resumable: a re-run skips finished shards and items. Exit status: 0 success (also after --shard),
1 a data error (the message names the path), 2 bad arguments.
"""
import argparse
import logging
import sys
from typing import List, Optional

from espnet_omni_avsr.prep.audio_prep import DEFAULT_MAX_AV_DIFF, format_audio
from espnet_omni_avsr.prep.errors import PrepError
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Format the audio of a data directory as 16-bit mono wav at --sample_rate (wav/flac "
                    "read with soundfile, audio inside mp4 with PyAV, polyphase resampling), write "
                    "utt2dur, and reject utterances whose audio and video lengths differ by more than "
                    "--max_av_diff seconds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data_dir", required=True, help="data/<set> (wav.scp)")
    parser.add_argument("--out_dir", required=True, help="dump/<set>")
    parser.add_argument("--nj", type=int, default=1, help="number of shards and worker processes")
    parser.add_argument("--shard", type=int, default=None, metavar="K",
                        help="process only shard K of --nj (1-based) in this process, without merging")
    parser.add_argument("--sample_rate", type=int, default=16000, help="target sample rate in Hz")
    parser.add_argument("--max_av_diff", type=float, default=DEFAULT_MAX_AV_DIFF,
                        help="largest accepted |audio seconds - video frames / fps|: one video frame of "
                             "rounding plus one AAC frame of encoder padding, rounded up to 3 frames")
    parser.add_argument("--fps", type=float, default=25.0, help="video frame rate for the length check")
    parser.add_argument("--skip_av_check", action="store_true",
                        help="format every recording and skip the length check (no video stage needed)")
    parser.add_argument("--utt2num_frames", default=None, metavar="FILE",
                        help="video frame counts for the length check; default <out_dir>/utt2num_frames")
    add_log_level(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        result = format_audio(args.data_dir, args.out_dir, nj=args.nj, shard=args.shard, sample_rate=args.sample_rate,
                           max_av_diff=args.max_av_diff, fps=args.fps, av_check=not args.skip_av_check,
                           utt2num_frames=args.utt2num_frames)
    except PrepError as e:
        logging.error("%s", e)
        return 1
    print(result.summary(args.out_dir, "recordings", args.shard, args.nj))
    return 0


if __name__ == "__main__":
    sys.exit(main())
