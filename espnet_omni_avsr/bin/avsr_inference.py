"""Decode data sets: writes <output_dir>/text (utt hypothesis) and <output_dir>/llm_tokens.

One set:   --task avsr --data_path_and_name_and_type dump/test/wav.scp,speech,audio16k
           --data_path_and_name_and_type dump/test/video.scp,video,video --output_dir DIR
Many sets: --jobs jobs.tsv, one `task<TAB>data_dir<TAB>output_dir[<TAB>audio_rate<TAB>video_rate]` line
           per set ('-' for no rate; `python -m espnet_omni_avsr.names decode-jobs` writes them); the
           model is loaded once, each job reads only what its task needs (wav.scp and/or video.scp
           of data_dir), and a job whose output is complete (and newer than --model_file) is skipped.
Rates (elastic inference): --audio_rate / --video_rate pick trained compression rates.
"""
import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from espnet2.utils import config_argparse
from espnet2.utils.types import str2triple_str
from tqdm import tqdm

from espnet_omni_avsr.names import MODALITIES, TASK_MODALITIES, data_triples
from espnet_omni_avsr.recognizer import AVSRRecognizer
from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = config_argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_config", required=True, help="config.yaml of the trained model")
    p.add_argument("--model_file", default=None, help="trained weights (.pth)")
    p.add_argument("--data_path_and_name_and_type", type=str2triple_str, action="append", default=[],
                   help="e.g. dump/test/wav.scp,speech,audio16k and dump/test/video.scp,video,video")
    p.add_argument("--key_file", default=None, help="decode only these utterance ids")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--jobs", default=None, help="a TSV of task, data dir, output dir (see above)")
    p.add_argument("--task", choices=sorted(TASK_MODALITIES), default=None, help="default: the trained task")
    p.add_argument("--audio_rate", type=int, default=None, help="default: the first trained audio rate")
    p.add_argument("--video_rate", type=int, default=None, help="default: the first trained video rate")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--beam_size", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=32,
                   help="longest transcript in LLM tokens; 0: from each utterance's duration (recognizer.py)")
    p.add_argument("--length_penalty", type=float, default=1.0, help="beam search's length penalty (HF)")
    p.add_argument("--ngpu", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=0)
    add_log_level(p)
    return p


def _rates(**by_modality) -> dict:
    """modality -> int rate, leaving out the unset ones (None, '-')."""
    return {m: int(r) for m, r in by_modality.items() if r not in (None, "-")}


def read_jobs(path: str) -> List[Tuple[str, list, Path, dict]]:
    """jobs.tsv -> [(task, data triples, output dir, rates)]."""
    jobs = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) not in (3, 3 + len(MODALITIES)) or fields[0] not in TASK_MODALITIES:
            rate_cols = "".join(f"<TAB>{m}_rate" for m in MODALITIES)
            raise ValueError(f"{path}:{n}: expected 'task<TAB>data_dir<TAB>output_dir[{rate_cols}]' with task in "
                             f"{sorted(TASK_MODALITIES)}, got {line!r}")
        task, data_dir, out = fields[:3]
        try:
            rates = _rates(**dict(zip(MODALITIES, fields[3:])))
        except ValueError:
            raise ValueError(f"{path}:{n}: rates must be integers or '-', got {fields[3:]}") from None
        jobs.append((task, data_triples(data_dir, TASK_MODALITIES[task]), Path(out), rates))
    return jobs


def _complete(out: Path, triples: list, model_file: Optional[str] = None) -> bool:
    """A job's output is complete when it has a hypothesis for every input, written after the
    model's weights (a model trained on, or selected again, is decoded again)."""
    hyp = out / "text"
    if not (hyp.is_file() and (out / "llm_tokens").is_file()):
        return False
    if model_file and os.path.getmtime(os.path.realpath(model_file)) > hyp.stat().st_mtime:
        logging.info(f"{out}: decoded before {model_file} was written; decoding again")
        return False
    with open(triples[0][0]) as f:
        n_in = sum(1 for line in f if line.strip())
    return sum(1 for _ in hyp.open()) == n_in


def hypothesis_line(key: str, text: str) -> str:
    """`key text` on one line: an LLM that writes a newline instead of EOS and goes on would
    otherwise break the Kaldi text file; its extra words are scored as insertions."""
    return f"{key} {' '.join(text.split())}\n"


def decode(rec: AVSRRecognizer, task: Optional[str], triples: list, out: Path, rates: dict, args) -> None:
    """Decode one set in batches with the KV cache; writes text and llm_tokens."""
    rec.task = task or rec.model.task
    rec.rates = rates
    loader = AVSRLLMTask.build_streaming_iterator(
        triples,
        preprocess_fn=rec.preprocess,
        collate_fn=rec.collate,
        key_file=args.key_file,
        dtype="float32",
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        allow_variable_data_keys=True,
        inference=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    # written under temporary names and renamed at the end, text last: an interrupted job leaves no
    # text (the file _complete and scoring read) rather than a partial one
    tmp = {name: out / f"{name}.tmp{os.getpid()}" for name in ("llm_tokens", "text")}
    for name in tmp:  # left by a job that was killed
        for stale in out.glob(f"{name}.tmp*"):
            stale.unlink()
    n_utt, start = 0, time.perf_counter()
    try:
        with tmp["text"].open("w", encoding="utf-8") as f_text, tmp["llm_tokens"].open("w") as f_tok:
            for keys, batch in tqdm(loader, desc=f"decoding {rec.task} {rates or ''} -> {out}", unit="batch",
                                    file=sys.stderr):
                result = rec.recognize_batch(batch)
                for key, text, n in zip(keys, result["text"], result["llm_tokens"]):
                    f_text.write(hypothesis_line(key, text))
                    f_tok.write(f"{key} {n}\n")
                n_utt += len(keys)
        for name, path in tmp.items():
            os.replace(path, out / name)
    finally:
        for path in tmp.values():
            if path.exists():
                path.unlink()
    seconds = time.perf_counter() - start
    logging.info(f"{rec.task}: decoded {n_utt} utterances in {seconds:.1f} s -> {out / 'text'}")


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    if args.jobs:
        jobs = read_jobs(args.jobs)
    elif args.output_dir and args.data_path_and_name_and_type:
        jobs = [(args.task, args.data_path_and_name_and_type, Path(args.output_dir),
                 _rates(audio=args.audio_rate, video=args.video_rate))]
    else:
        sys.exit("give --jobs, or --data_path_and_name_and_type and --output_dir")
    rec = AVSRRecognizer(
        args.train_config, args.model_file, device="cuda" if args.ngpu > 0 else "cpu",
        task=args.task, beam_size=args.beam_size, max_new_tokens=args.max_new_tokens or None,
        length_penalty=args.length_penalty,
    )
    for task, triples, out, rates in jobs:
        if args.jobs and _complete(out, triples, args.model_file):
            logging.info(f"skip {out}: complete")
            continue
        decode(rec, task, triples, out, rates, args)


if __name__ == "__main__":
    main()
