#!/usr/bin/env python3
"""Unpack a model archive written by espnet_omni_avsr.bin.pack_model.

    python -m espnet_omni_avsr.bin.unpack_model --archive model.tar.gz --dest_dir DIR \
        [--pretrained_dir DIR] [--overwrite]

Members are checked (no absolute paths, '..', links or devices), model.pth is checked against its
sha256, and the pretrained paths of config.yaml become absolute paths under DIR (or
--pretrained_dir). A second run with the same archive does nothing. The result loads with
AVSRRecognizer.from_pretrained(DIR). Prints {"config": ..., "model_file": ...}; exit status 0 on
success, 1 on an error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from espnet_omni_avsr.utils.model_archive import ArchiveError, unpack_model
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", required=True)
    p.add_argument("--dest_dir", required=True)
    p.add_argument("--pretrained_dir", default=None,
                   help="for archives packed with --exclude_pretrained: the folder holding the pretrained folders")
    p.add_argument("--overwrite", action="store_true", help="replace a different model unpacked in --dest_dir")
    add_log_level(p)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        config, model = unpack_model(args.archive, args.dest_dir, pretrained_dir=args.pretrained_dir,
                                     overwrite=args.overwrite)
    except (ArchiveError, OSError, ValueError) as e:
        logging.error("%s", e)
        return 1
    print(json.dumps({"config": str(config), "model_file": str(model)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
