#!/usr/bin/env python3
"""Stage 2: data/<set>/video.scp -> mouth-ROI videos, dump/<set>/{video.scp,utt2num_frames,...}.

    python -m espnet_omni_avsr.bin.preprocess_video --data_dir data/train --out_dir dump/train \
        --mode precropped|mediapipe|dlib|landmarks [--nj 4] [--shard K] [--size 96] [--fps 25] [--min_frames 5] \
        [--mode_conf '{max_blank_fraction: 0.2}']

Resumable: a re-run skips finished shards and items. Exit status: 0 success (also after --shard),
1 a data error (the message names the path), 2 bad arguments.
"""
import argparse
import logging
import sys
from typing import List, Optional

import yaml

from espnet_omni_avsr.prep.errors import PrepError
from espnet_omni_avsr.prep.video_prep import VIDEO_PREP_MODES, preprocess_video
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Check and normalise the videos of a data directory into 96x96 grayscale 25 fps "
                    "mouth ROIs; rejected videos go to <out_dir>/bad_items.tsv with the reason.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data_dir", required=True, help="data/<set> (video.scp, text, utt2spk, spk2utt)")
    parser.add_argument("--out_dir", required=True, help="dump/<set>")
    parser.add_argument("--mode", default="precropped", choices=sorted(VIDEO_PREP_MODES),
                        help="precropped: the videos are mouth ROIs already (checked, resized if needed); "
                             "mediapipe / dlib: raw face videos -> detected landmarks -> mean-face alignment -> "
                             "mouth crop; landmarks: the same from precomputed landmarks "
                             "(--mode_conf '{landmarks_dir: DIR}')")
    parser.add_argument("--nj", type=int, default=1, help="number of shards and worker processes")
    parser.add_argument("--shard", type=int, default=None, metavar="K",
                        help="process only shard K of --nj (1-based) in this process, without merging; "
                             "a later run without --shard merges")
    parser.add_argument("--size", type=int, default=96, help="side of the square ROI in pixels")
    parser.add_argument("--fps", type=float, default=25.0, help="required frame rate")
    parser.add_argument("--min_frames", type=int, default=5, help="shorter videos are bad items")
    parser.add_argument("--mode_conf", default="{}", metavar="YAML",
                        help="further options of the mode as a YAML mapping, e.g. precropped's "
                             "'{min_motion_std: 1.0, blank_frame_std: 2.0, max_blank_fraction: 0.1, crf: 18}', "
                             "mediapipe/dlib's '{smooth_window: 12, min_face_fraction: 0.0, save_landmarks: true, "
                             "backend_conf: {upsample: 1}}'")
    add_log_level(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        mode_conf = yaml.safe_load(args.mode_conf)
    except yaml.YAMLError as e:
        parser.error(f"--mode_conf is not YAML: {e}")
    if mode_conf is None:
        mode_conf = {}
    if not isinstance(mode_conf, dict):
        parser.error(f"--mode_conf must be a mapping, got {args.mode_conf!r}")
    conf = dict(size=args.size, fps=args.fps, min_frames=args.min_frames, **mode_conf)
    try:
        result = preprocess_video(args.data_dir, args.out_dir, args.mode, args.nj, args.shard, conf)
    except PrepError as e:
        logging.error("%s", e)
        return 1
    print(result.summary(args.out_dir, "videos", args.shard, args.nj))
    return 0


if __name__ == "__main__":
    sys.exit(main())
