#!/usr/bin/env python3
"""Transcribe face videos with their sound, or audio recordings: raw media in, one transcript per input out.

    python -m espnet_omni_avsr.bin.transcribe --model exp/<tag>/packed/<tag>.tar INPUT... \
        [--output_dir DIR] [--task asr|vsr|avsr] [--rates a16v5|auto] [--token_budget T] [--batch_size 8] \
        [--beam_size 1] [--length_penalty 1.0] [--max_new_tokens N] [--device auto|cpu|cuda[:N]] \
        [--save_crops] [--face_backend mediapipe|dlib] [--max_segment_seconds S]

INPUT: a media file (a video: .mp4, .mkv, .avi, .webm, .mov, ... at any frame rate and size; or an
audio file: .wav, .flac, .mp3, .ogg, .m4a at any sample rate and channel count), a folder (its media
files, recursively, in sorted order) or a list file (.txt, .lst, .list, .scp: one path a line,
relative paths relative to the list's folder, # comments). --model: a packed archive
(pack_model) or a directory with config.yaml and weights (a training exp dir).

Per input: 16 kHz mono audio and the recipes' face pipeline (landmarks, mean-face alignment, 96x96
mouth crops at 25 fps; espnet_omni_avsr/inference/media.py), the task from what is there (AVSR
with a face and sound, ASR when no face is found, VSR for a silent video; --task forces one;
espnet_omni_avsr/inference/transcriber.py). An audio file is resampled to 16 kHz mono the same way
and decoded as ASR without the face pipeline (a forced --task vsr or avsr fails that input, named,
and the others go on). Clips longer than the model's input limit are cut at pauses
(espnet_omni_avsr/inference/segments.py); decoding is batched and deterministic (greedy or beam
search; max_new_tokens from each segment's duration unless given: espnet_omni_avsr/recognizer.py).

Conditions (elastic inference; espnet_omni_avsr/inference/rate_choice.py): --rates a16v5 forces
one (default: the first trained). --token_budget T picks, for each task, among its trained
conditions whose LLM input tokens per second (measured on the model's own branches) are <= T, the
one with the lowest validation loss (recorded in an archive's meta.yaml at pack time, read from
an exp dir's checkpoint.pth; the most tokens per second, with a warning, for a model without
them); a budget below all of a task's conditions is an error naming its cheapest condition.
--rates auto picks per input by its audio's estimated SNR (inference/snr.py): the lowest WER at
the nearest SNR among the model's scored decodings (within T when given), else the budget rule
with a warning. --rates CONDITION and --token_budget exclude each other.

Output: "<input><TAB><transcript>" on stdout for each input transcribed, in input order; with
--output_dir, <name>.json per input (transcript, task, rates and condition, how they were chosen
(rate_choice), the audio's estimated SNR (snr_estimate_db), segments, LLM tokens per second,
timing of each step, frames without a face, warnings; or the error), and with --save_crops the
mouth crops as crops/<name>.mp4. <name> is the input's file name without extension (-2, -3, ...
for repeated names).

Exit status: 0 every input transcribed; 1 some input failed (each is named on stderr with the
reason, and in its JSON), the others are transcribed; 2 bad arguments or a model that does not
load (not an archive, an untrained --task or --rates, a --token_budget below every condition, no
input found).
"""
import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Dict, List, Optional

import yaml

from espnet_omni_avsr.inference.media import INPUT_EXTS, is_audio_file
from espnet_omni_avsr.inference.rate_choice import NoConditionFits, RateChooser
from espnet_omni_avsr.inference.transcriber import DEFAULT_CUT_SEARCH_SECONDS, Transcriber
from espnet_omni_avsr.names import TASK_MODALITIES, parse_conditions
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging

LIST_EXTS = (".txt", ".lst", ".list", ".scp")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video or audio files, folders of them, or list files")
    p.add_argument("--model", required=True, help="packed model archive (.tar/.tar.gz) or exp dir with config.yaml")
    p.add_argument("--output_dir", default=None, help="write <name>.json per input (and crops/ with --save_crops)")
    p.add_argument("--task", choices=sorted(TASK_MODALITIES), default=None,
                   help="force a task (default: from the streams of each input)")
    p.add_argument("--rates", default=None, metavar="CONDITION",
                   help="compression rates among the trained ones, as in condition labels: a16v5, a4 "
                        "(elastic inference; default: the first trained); auto: per input, by its estimated SNR")
    p.add_argument("--token_budget", type=float, default=None, metavar="T",
                   help="LLM input tokens per second: decode at the trained condition within T with the best "
                        "validation score")
    p.add_argument("--batch_size", type=int, default=8, help="segments decoded together")
    p.add_argument("--beam_size", type=int, default=1, help="1: greedy search; >1: beam search (HF num_beams)")
    p.add_argument("--length_penalty", type=float, default=1.0, help="beam search's length penalty (HF)")
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help="longest transcript of a segment in LLM tokens (default: from its duration)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda, cuda:N")
    p.add_argument("--save_crops", action="store_true", help="write the mouth crops to <output_dir>/crops/<name>.mp4")
    p.add_argument("--face_backend", default="mediapipe", choices=["mediapipe", "dlib"],
                   help="face landmarks (as the recipes' stage 2 --mode)")
    p.add_argument("--face_conf", default="{}", metavar="YAML",
                   help="face mode options, as stage 2's --mode_conf: '{smooth_window: 12, min_face_fraction: 0.0, "
                        "backend_conf: {min_detection_confidence: 0.5}}'")
    p.add_argument("--max_segment_seconds", type=float, default=None,
                   help="longest segment of a long clip (default: the model's input limit, Whisper 30 s)")
    p.add_argument("--cut_search_seconds", type=float, default=DEFAULT_CUT_SEARCH_SECONDS,
                   help="a long clip is cut at the quietest 0.2 s within this many seconds before the limit")
    p.add_argument("--cache_dir", default=None, help="where an archive is unpacked (default ~/.cache/espnet_omni_avsr/<name>)")
    add_log_level(p)
    return p


AUTO = "auto"


def parse_rates(text: Optional[str]) -> Dict[str, int]:
    """'a16v5' -> {"audio": 16, "video": 5} (`names.parse_conditions`); ValueError for anything else."""
    return parse_conditions(text.strip()) if text and text.strip() else {}


def expand_inputs(inputs: List[str]) -> List[str]:
    """Media files, folders (their video and audio files, recursively, sorted) and list files -> paths.
    A folder without media files is kept as it is (it then fails, named)."""
    out = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(root, f) for root, _, files in os.walk(item) for f in files
                           if os.path.splitext(f)[1].lower() in INPUT_EXTS)
            out += found or [item]
        elif os.path.isfile(item) and os.path.splitext(item)[1].lower() in LIST_EXTS:
            base = os.path.dirname(item)
            with open(item, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        out.append(line if os.path.isabs(line) else os.path.join(base, line))
        else:
            out.append(item)
    return out


def output_names(paths: List[str]) -> List[str]:
    """<stem>, <stem>-2, ... for the JSON and crop files."""
    seen: Dict[str, int] = {}
    names = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or "input"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available (use --device cpu)")
    return device


def build_face_prep(backend: str, conf: dict, fps: float, crops_dir: str):
    from espnet_omni_avsr.prep.video_prep import build_video_prep

    conf = dict(conf)
    conf.setdefault("save_landmarks", False)
    conf["fps"] = fps
    return build_video_prep(backend, crops_dir, **conf)


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ log lines
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # stdout carries the transcripts only: what libraries print on import goes to stderr
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        return _main(parser, args, stdout)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace, stdout) -> int:
    setup_logging(args.log_level)
    auto = (args.rates or "").strip() == AUTO
    if args.token_budget is not None and args.rates and not auto:
        parser.error(f"--rates {args.rates} and --token_budget {args.token_budget:g} exclude each other: --rates "
                     "forces a condition, --token_budget chooses one (--rates auto chooses within the budget)")
    if args.token_budget is not None and not args.token_budget > 0:
        parser.error(f"--token_budget must be a positive number of LLM input tokens per second, got {args.token_budget:g}")
    try:
        rates = {} if auto else parse_rates(args.rates)
        face_conf = yaml.safe_load(args.face_conf) or {}
        if not isinstance(face_conf, dict):
            raise ValueError(f"--face_conf must be a YAML mapping, got {args.face_conf!r}")
    except (ValueError, yaml.YAMLError) as e:
        parser.error(str(e))
    if args.save_crops and not args.output_dir:
        parser.error("--save_crops needs --output_dir")
    paths = expand_inputs(args.inputs)
    if not paths:
        parser.error("no input")

    from espnet_omni_avsr.prep.errors import PrepError
    from espnet_omni_avsr.recognizer import AVSRRecognizer
    from espnet_omni_avsr.utils.model_archive import ArchiveError

    try:
        device = resolve_device(args.device)
        rec = AVSRRecognizer.from_pretrained(
            args.model, cache_dir=args.cache_dir, device=device, rates=rates, beam_size=args.beam_size,
            max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty)
        rec.check_rates()
        chooser = None
        if auto or args.token_budget is not None:
            tasks = [t for t in ([args.task] if args.task else rec.trained_tasks) if t in rec.trained_tasks]
            chooser = RateChooser(rec, args.token_budget, auto=auto)
            for line in chooser.describe(tasks):
                logging.info("trained conditions: %s", line)
            for task, why in chooser.check(tasks).items():
                logging.warning("%s: the inputs decoded as %s will fail", why, task)
            for task in tasks if not auto else []:
                with contextlib.suppress(NoConditionFits):
                    logging.info("%s: %s", task, chooser.budget_choice(task).reason)
        crops_dir = os.path.join(args.output_dir, "crops") if args.output_dir else "crops"
        needs_video = "video" in (TASK_MODALITIES[args.task] if args.task else
                                  [m for t in rec.trained_tasks for m in TASK_MODALITIES[t]])
        needs_video = needs_video and not all(is_audio_file(p) for p in paths)  # audio files: no face pipeline
        face_prep = build_face_prep(args.face_backend, face_conf, rec.fps, crops_dir) if needs_video else None
        transcriber = Transcriber(rec, face_prep, task=args.task, batch_size=args.batch_size,
                                  max_segment_seconds=args.max_segment_seconds,
                                  cut_search_seconds=args.cut_search_seconds, rate_chooser=chooser)
    except NoConditionFits as e:
        logging.error("%s", e)
        return 2
    except (ArchiveError, OSError, ValueError, PrepError) as e:
        logging.error("--model %s: %s", args.model, e)
        return 2

    names = output_names(paths)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    from tqdm import tqdm

    bar = tqdm(total=len(paths), unit="input", file=sys.stderr, disable=len(paths) < 2, desc="transcribe")

    def on_prepared(item) -> None:
        bar.update(1)
        if args.save_crops and not isinstance(item, dict) and item.media.crops is not None:
            from espnet_omni_avsr.data.video_io import write_video

            os.makedirs(crops_dir, exist_ok=True)
            write_video(os.path.join(crops_dir, names[item.index] + ".mp4"), item.media.crops, fps=rec.fps)

    failed = 0
    for index, (record, _) in enumerate(transcriber.run(paths, on_prepared=on_prepared)):
        if args.output_dir:
            with open(os.path.join(args.output_dir, names[index] + ".json"), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1, ensure_ascii=False)
        if record["ok"]:
            for w in record["warnings"]:
                logging.warning("%s: %s", record["input"], w)
            text = " ".join(record["text"].split())
            print(f"{record['input']}\t{' '.join(text.split())}", file=stdout, flush=True)  # one line per input
        else:
            failed += 1
            logging.error("FAILED %s", record["error"])
    bar.close()
    if failed:
        logging.error("%d of %d inputs failed", failed, len(paths))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
