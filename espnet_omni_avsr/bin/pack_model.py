#!/usr/bin/env python3
"""Stage 12: pack a trained model into one archive.

    python -m espnet_omni_avsr.bin.pack_model --config exp/<tag>/config.yaml \
        --model_file exp/<tag>/model.pth --out exp/<tag>/packed/<tag>.tar[.gz] \
        [--base_dir .] [--exclude_pretrained] [--force] [--exp_dir exp/<tag>]

The archive holds config.yaml (the values of model_dir, tokenizer_dir, checkpoint and
token CTC vocab rewritten to pretrained/<name>), model.pth, meta.yaml and those pretrained folders
and files, so that the frozen weights left out of model.pth come back from inside the archive;
espnet_omni_avsr.bin.unpack_model extracts it. Layout and the list of keys (SOURCE_KEYS):
espnet_omni_avsr/utils/model_archive.py. Exit status 0 on success, 1 on an error.

meta.yaml also records, when the exp dir (default: the config's folder) has them, the validation
loss of each condition label (from checkpoint.pth, for the epoch packed or else the last one) and
the WERs of the scored decodings per test set and SNR (stage 11's summary.json files): what
transcribe's --token_budget and --rates auto choose a condition by.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from espnet_omni_avsr.utils.model_archive import ArchiveError, pack_model
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config.yaml")
    p.add_argument("--model_file", required=True, help="trained weights (.pth; a symlink is followed)")
    p.add_argument("--out", required=True, help="archive: .tar, .tar.gz or .tgz")
    p.add_argument("--base_dir", default=".",
                   help="directory the config's relative paths are relative to (the recipe dir)")
    p.add_argument("--exclude_pretrained", action="store_true",
                   help="do not copy the pretrained folders and files in (the archive then names them only)")
    p.add_argument("--force", action="store_true", help="rewrite an archive that already holds this model")
    p.add_argument("--exp_dir", default=None,
                   help="where checkpoint.pth and the scored decode_* dirs are read for meta.yaml "
                        "(default: the config's folder)")
    add_log_level(p)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        meta = pack_model(args.config, args.model_file, args.out,
                          include_pretrained=not args.exclude_pretrained, base_dir=args.base_dir,
                          force=args.force, exp_dir=args.exp_dir)
    except (ArchiveError, OSError, ValueError) as e:
        logging.error("%s", e)
        return 1
    print(json.dumps({"archive": args.out, "model_sha256": meta["model_sha256"],
                      "pretrained": sorted(meta["pretrained"]),
                      "validation_losses": sorted((meta.get("validation") or {}).get("loss", {})),
                      "results": "results" in meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
