#!/usr/bin/env python3
"""Import a released Llama-AVSR / Omni-AVSR checkpoint as a packed model archive of this project.

    python -m espnet_omni_avsr.bin.import_checkpoint --format {llama_avsr,omni_avsr} \\
        --checkpoint FILE.pth|.ckpt --llm_dir DIR [--whisper_dir DIR] [--avhubert large_vox_iter5.pt] \\
        [--task {asr,vsr,avsr}] [--audio_rates N ...] [--video_rates N ...] \\
        [--lora_alpha A --lora_reduction R] [--instruction TASK=TEXT ...] [--dtype bfloat16] \\
        --out model.tar[.gz]

The checkpoint's keys are mapped onto the model this project's task builds (AVSRLLMTask.build_model
from the config written next to the archive): LoRA onto peft adapters, projectors, delimiter
embeddings, AV-HuBERT LoRA; frozen weights are compared with the given folders. Every key is mapped,
checked or reported by name (<out>_import/import_report.json); a key of neither layout, an LLM of
another size or the wrong folders stop the import with a message naming the keys (exit status 1).
The archive loads like any packed model (AVSRRecognizer.from_pretrained, transcribe, avsr_inference).

What their options become here:
  --lora_reduction / --lora_alpha   their --rank (Omni-AVSR) or --reduction_lora (Llama-AVSR) and --alpha:
                                    scaling = alpha / reduction. Read from a Lightning .ckpt; for a
                                    .pth the reduction follows from the shapes and the scaling defaults
                                    to 0.125, the value of every released checkpoint.
  --audio_rates / --video_rates     their --downsample-ratio-audio / -video, in the same order (needed for
                                    avg-pooling; stacking records its rate in the projector shapes).
  --instruction TASK=TEXT           their --prompt-audio / -video / -audiovisual (Omni-AVSR checkpoints
                                    store theirs, which are then used).
Layout, equations and what cannot be imported: espnet_omni_avsr/utils/official_checkpoints.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def _instruction(value: str):
    task, sep, text = value.partition("=")
    if not sep or task not in ("asr", "vsr", "avsr") or not text:
        raise argparse.ArgumentTypeError(f"expected TASK=TEXT with TASK asr, vsr or avsr, got {value!r}")
    return task, text


def get_parser() -> argparse.ArgumentParser:
    from espnet_omni_avsr.utils.official_checkpoints import FORMATS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=FORMATS, help="which code base wrote the checkpoint")
    p.add_argument("--checkpoint", required=True, help="their model_avg_*.pth / released .pth, or a Lightning .ckpt")
    p.add_argument("--llm_dir", required=True, help="local Hugging Face folder of the LLM it was trained with")
    p.add_argument("--whisper_dir", default=None, help="local Whisper folder (models with an audio branch)")
    p.add_argument("--avhubert", default=None, help="the AV-HuBERT checkpoint its video encoder was (models with video)")
    p.add_argument("--task", default=None, choices=("asr", "vsr", "avsr"),
                   help="llama_avsr: the model's task (checked against the checkpoint); omni_avsr: the default task")
    p.add_argument("--audio_rates", type=int, nargs="+", default=None, help="their --downsample-ratio-audio")
    p.add_argument("--video_rates", type=int, nargs="+", default=None, help="their --downsample-ratio-video")
    p.add_argument("--lora_alpha", type=float, default=None, help="their --alpha")
    p.add_argument("--lora_reduction", type=float, default=None, help="their --rank / --reduction_lora")
    p.add_argument("--instruction", type=_instruction, action="append", default=[], metavar="TASK=TEXT",
                   help="their prompt of a task (repeatable)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                   help="decoder_conf.dtype of the imported model (they trained in bf16)")
    p.add_argument("--crop_size", type=int, default=88, help="mouth crop of the video front end (theirs: 88)")
    p.add_argument("--whisper_true_length", action="store_true",
                   help="pad_to_30s: false (faster; theirs pads every clip to 30 s, the default here too)")
    p.add_argument("--allow_unknown_keys", action="store_true",
                   help="import the rest when keys fit neither layout (they are listed in the report)")
    p.add_argument("--allow_frozen_mismatch", action="store_true",
                   help="import although frozen LLM / Whisper tensors differ from the given folders")
    p.add_argument("--exclude_pretrained", action="store_true",
                   help="do not copy the LLM / Whisper / AV-HuBERT into the archive (it then names them only)")
    p.add_argument("--work_dir", default=None, help="for config.yaml, model.pth, the report (default: <out>_import)")
    p.add_argument("--out", required=True, help="the archive: .tar, .tar.gz or .tgz")
    add_log_level(p)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_level)
    from espnet_omni_avsr.utils.official_checkpoints import CheckpointImportError, ImportOptions, import_official_checkpoint

    opts = ImportOptions(
        fmt=args.format, checkpoint=args.checkpoint, llm_dir=args.llm_dir, out=args.out, whisper_dir=args.whisper_dir,
        avhubert=args.avhubert, task=args.task, audio_rates=args.audio_rates, video_rates=args.video_rates,
        lora_alpha=args.lora_alpha, lora_reduction=args.lora_reduction, instructions=dict(args.instruction),
        dtype=args.dtype, crop_size=args.crop_size, whisper_pad_to_30s=not args.whisper_true_length,
        allow_unknown_keys=args.allow_unknown_keys, allow_frozen_mismatch=args.allow_frozen_mismatch,
        include_pretrained=not args.exclude_pretrained, work_dir=args.work_dir,
    )
    try:
        report = import_official_checkpoint(opts)
    except (CheckpointImportError, OSError, ValueError) as e:
        logging.error("%s", e)
        return 1
    print(json.dumps({"archive": report["archive"], "tasks": report["tasks"], "keys": report["keys"],
                      "unknown": sorted(report["unknown"]), "report": report["work_dir"] + "/import_report.json"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
