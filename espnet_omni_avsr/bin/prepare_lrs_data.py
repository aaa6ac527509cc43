#!/usr/bin/env python3
"""Stage 1: an LRS-layout corpus (LRS3, LRS2, the embedded AVGRID) -> data/<set>/ Kaldi directories.

    python -m espnet_omni_avsr.bin.prepare_lrs_data --root CORPUS --out_dir data \
        [--split_map train=trainval-@valid dev=@valid test=test] [--valid_ids FILE] \
        [--id_list NAME=FILE ...]

Writes <out_dir>/<set>/{wav.scp,video.scp,text,utt2spk,spk2utt,bad_items.tsv}.
Exit status: 0 success, 1 a data error (the message names the path), 2 bad arguments.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

from espnet_omni_avsr.prep.errors import PrepError
from espnet_omni_avsr.prep.lrs_layout import DEFAULT_SPLIT_MAP, prepare_lrs_data, sample_id_list
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Write Kaldi-style data directories from a corpus in the LRS layout "
            "(<root>/<folder>/<speaker>/<utt>.mp4 + .txt [+ .wav/.flac]). Items that cannot be used "
            "(missing transcript or video, audio without video, a .txt without a 'Text:' line, ...) "
            "are listed in <out_dir>/<set>/bad_items.tsv with the reason."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--root", required=True, help="corpus root")
    parser.add_argument("--out_dir", default="data", help="receives one folder per set")
    parser.add_argument(
        "--split_map", nargs="+", default=list(DEFAULT_SPLIT_MAP), metavar="SET=EXPR",
        help="sets to write. EXPR joins terms left to right with + (union), - (difference) and "
             "& (intersection); a term is a folder under --root or @NAME, an id list "
             "(<folder>/<speaker>/<utt> or <speaker>/<utt> a line). LRS3: train=trainval-@valid "
             "dev=@valid test=test; LRS2: train=main&@train dev=main&@val test=main&@test",
    )
    parser.add_argument("--valid_ids", default=None, metavar="FILE",
                        help="the id list @valid (e.g. lrs3-valid.id); default <root>/valid.id")
    parser.add_argument("--id_list", action="append", default=[], metavar="NAME=FILE",
                        help="the id list @NAME (repeatable); default <root>/NAME.id or <root>/NAME.txt")
    parser.add_argument("--draw_valid", nargs=3, default=None, metavar=("FOLDER", "N", "SEED"),
                        help="when the --valid_ids file does not exist, write it first with N usable "
                             "items of FOLDER drawn with SEED (not the papers' list: see local/lrs3/data.sh)")
    add_log_level(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    id_lists = {}
    for entry in args.id_list:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            parser.error(f"--id_list {entry!r}: expected NAME=FILE")
        if name in id_lists:
            parser.error(f"--id_list names {name!r} twice")
        id_lists[name] = path
    if args.valid_ids is not None:
        if "valid" in id_lists:
            parser.error("give the valid list once: --valid_ids or --id_list valid=FILE")
        id_lists["valid"] = args.valid_ids
    try:
        if args.draw_valid is not None:
            if args.valid_ids is None:
                parser.error("--draw_valid needs --valid_ids (the file to write)")
            folder, num, seed = args.draw_valid
            if not os.path.isfile(args.valid_ids):
                if not os.path.isdir(args.root):
                    raise PrepError(f"corpus root {args.root} does not exist (or is not a folder)")
                sample_id_list(args.root, folder, int(num), int(seed), args.valid_ids)
        sets = prepare_lrs_data(args.root, args.out_dir, args.split_map, id_lists)
    except PrepError as e:
        logging.error("%s", e)
        return 1
    for name, data in sets.items():
        print(f"{args.out_dir}/{name}: {len(data.utt2spk)} utterances, {len(data.bad)} bad items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
