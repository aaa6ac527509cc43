#!/usr/bin/env python3
"""Read an official AV-HuBERT checkpoint safely and check it against the native encoder.

    python -m espnet_omni_avsr.bin.inspect_avhubert_checkpoint --checkpoint large_vox_iter5.pt

Prints JSON: the architecture read from the stored configuration, how the file was read
(weights_only or the restricted unpickler), the keys left out (pre-training heads, a fine-tuned
model's decoder) and the keys the encoder would not use. Exit status 0 when the encoder loads the
file, 1 with the error (missing key, wrong shape, unsupported configuration, refused pickle).
"""
import argparse
import json
import logging
import pickle
import sys

from espnet_omni_avsr.encoders.avhubert_checkpoint import load_avhubert_state, read_avhubert_checkpoint
from espnet_omni_avsr.encoders.avhubert_modules import AVHubertModel
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    add_log_level(p)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        ckpt = read_avhubert_checkpoint(args.checkpoint)
        model = AVHubertModel(ckpt.arch)
        load_avhubert_state(model, ckpt)
    except (OSError, ValueError, pickle.UnpicklingError) as e:  # UnsafeCheckpointError: an UnpicklingError
        logging.error("%s", e)
        return 1
    unused = sorted(set(ckpt.state) - set(model.state_dict()))
    print(json.dumps(dict(checkpoint=args.checkpoint, read_with=ckpt.read_with, finetuned=ckpt.finetuned,
                          arch=ckpt.arch.as_dict(), parameters=sum(p.numel() for p in model.parameters()),
                          left_out=ckpt.ignored, unused=unused), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
