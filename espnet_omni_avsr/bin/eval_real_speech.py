#!/usr/bin/env python3
"""ASR WER of a trained model on real recordings, next to Whisper's own WER on them.

    python -m espnet_omni_avsr.bin.eval_real_speech --model exp/<tag>/packed/<tag>.tar \
        [--whisper_dir pretrained/whisper-tiny.en] [--data_root /usr/share/pocketsphinx/test/data] \
        [--output_dir DIR] [--batch_size 8] [--beam_size 1] [--max_new_tokens N] [--device auto|cpu|cuda]

Data (--data_root): every ``transcription`` or ``*.transcription`` file under it (recursively), each
line ``<s> words </s> (utt_id)`` naming ``<utt_id>.wav`` beside it. The default is Debian's
``pocketsphinx-testdata`` (installed by tools/install.sh as root, or ``apt-get install
pocketsphinx-testdata``): cards/*.wav with cards/cards.transcription (5 utterances of playing cards)
and librivox/*.wav with librivox/transcription (5 sentences of a LibriVox audiobook), 10 in all.

The model (--model: a packed archive or an exp dir, as bin/transcribe takes) decodes each wav as an
ASR input through the transcribe machinery (espnet_omni_avsr/inference/transcriber.py: 16 kHz mono,
batched, greedy or --beam_size beam search). With --whisper_dir (a local Hugging Face Whisper folder,
e.g. the one ``python -m espnet_omni_avsr.bin.prepare_pretrained`` writes), Whisper's own greedy
transcript (WhisperForConditionalGeneration.generate on the same 16 kHz audio) is scored too: the
reference for what the frozen encoder under the model hears.

Scoring: the references and hypotheses are normalised alike, as the recipes' scoring does
(espnet_omni_avsr/scoring/sclite.py ``normalize_text``: NFKC, lower case, punctuation to spaces),
after spelling out integers ("10" -> "ten") and expanding title abbreviations ("Mr." -> "mister")
as the references are written; errors are word-level edit distances (jiwer).

Output: a markdown table on stdout (system, utterances, words, WER, substitutions, deletions,
insertions); with --output_dir, utterances.json and utterances.tsv (per utterance: the reference,
each system's transcript, normalised, and its errors) and summary.json.

Exit status: 0 all scored; 1 some utterance could not be decoded (named on stderr, scored as an
empty transcript); 2 bad arguments, data (a missing folder, transcript file or wav, named) or model.
"""
import argparse
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from espnet_omni_avsr.utils.cli import add_log_level, setup_logging

DEFAULT_DATA_ROOT = "/usr/share/pocketsphinx/test/data"
INSTALL_HINT = ("Debian's pocketsphinx-testdata: apt-get install pocketsphinx-testdata (tools/install.sh does it "
                "as root)")
NORMALIZATION = ("integers spelled out, title abbreviations expanded (mr -> mister), then scoring/sclite.py "
                 "normalize_text (NFKC; lower case; punctuation -> space)")
TSV_COLUMNS = ("id", "reference", "model", "model_errors", "whisper", "whisper_errors")


class EvalError(RuntimeError):
    """Bad input: the message names the file or option at fault."""


@dataclass(frozen=True)
class Recording:
    utt_id: str  # <folder under data_root>/<id>, e.g. cards/001
    wav: str
    reference: str
    source: str  # transcript file:line


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="packed model archive (.tar/.tar.gz) or exp dir with config.yaml")
    p.add_argument("--data_root", default=DEFAULT_DATA_ROOT,
                   help="folder of transcription files and their wavs (default: pocketsphinx-testdata's)")
    p.add_argument("--whisper_dir", default=None,
                   help="a local Hugging Face Whisper folder: score its own greedy transcripts too")
    p.add_argument("--output_dir", default=None, help="write utterances.json, utterances.tsv, summary.json")
    p.add_argument("--batch_size", type=int, default=8, help="utterances decoded together (model and Whisper)")
    p.add_argument("--beam_size", type=int, default=1, help="the model's search: 1 greedy, >1 beam search")
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help="the model's longest transcript in LLM tokens (default: from each utterance's duration)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda, cuda:N")
    p.add_argument("--cache_dir", default=None, help="where an archive is unpacked (default ~/.cache/espnet_omni_avsr/<name>)")
    add_log_level(p)
    return p


# ------------------------------------------------------------------------------------------ data
def load_recordings(data_root: str) -> List[Recording]:
    """The transcribed wavs under ``data_root`` (module docstring), in the order of the sorted transcript
    files and their lines; EvalError naming what is missing or malformed."""
    from espnet_omni_avsr.pretrained.verify import parse_transcript_line, transcription_files

    root = Path(data_root)
    if not root.is_dir():
        raise EvalError(f"--data_root {root}: no such folder. The default data is {INSTALL_HINT}")
    files = transcription_files(root)
    if not files:
        raise EvalError(f"--data_root {root}: no transcript file in it (transcription or *.transcription, as "
                        f"cards/cards.transcription). The default data is {INSTALL_HINT}")
    out: List[Recording] = []
    seen: Dict[str, str] = {}
    for transcript in files:
        for n, line in enumerate(transcript.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{transcript}:{n}"
            parsed = parse_transcript_line(line)
            if parsed is None:
                raise EvalError(f"{where}: not a transcript line '<s> words </s> (utt_id)': {line.strip()!r}")
            utt, text = parsed
            wav = transcript.parent / f"{utt}.wav"
            if not wav.is_file():
                raise EvalError(f"{wav}: no such file (named by {where}; the data is {INSTALL_HINT})")
            if not normalize(text):
                raise EvalError(f"{where}: the reference of {utt} is empty")
            utt_id = str(Path(os.path.relpath(transcript.parent, root)) / utt)  # "001" at the root
            if utt_id in seen:
                raise EvalError(f"{where}: {utt_id} is transcribed twice (first at {seen[utt_id]})")
            seen[utt_id] = where
            out.append(Recording(utt_id, str(wav), text, where))
    if not out:
        raise EvalError(f"--data_root {root}: its transcript files ({', '.join(map(str, files))}) hold no line")
    return out


# --------------------------------------------------------------------------------------- scoring
def normalize(text: str) -> str:
    """What is scored (NORMALIZATION): the same for references and every system's transcripts."""
    from espnet_omni_avsr.pretrained.verify import TITLE_ABBREVIATIONS, spell_numbers
    from espnet_omni_avsr.scoring.sclite import normalize_text

    return " ".join(TITLE_ABBREVIATIONS.get(w, w) for w in normalize_text(spell_numbers(text)).split())


def score_system(refs: Sequence[str], hyps: Sequence[Optional[str]]) -> tuple:
    """(per utterance [{normalized, words, sub, del, ins, errors}], totals); a None hypothesis (not
    decoded) counts as an empty one."""
    from espnet_omni_avsr.scoring.sclite import jiwer_counts

    rows, total = [], {"utterances": 0, "words": 0, "sub": 0, "del": 0, "ins": 0, "errors": 0, "failed": 0}
    for ref, hyp in zip(refs, hyps):
        ref_n, hyp_n = normalize(ref), normalize(hyp or "")
        c = jiwer_counts([ref_n], [hyp_n])
        row = {"normalized": hyp_n, "words": c["num_words"], "sub": c["sub"], "del": c["del"], "ins": c["ins"],
               "errors": c["err"]}
        rows.append(row)
        total["utterances"] += 1
        total["failed"] += hyp is None
        for k in ("words", "sub", "del", "ins", "errors"):
            total[k] += row[k]
    total["wer"] = round(100.0 * total["errors"] / total["words"], 2) if total["words"] else 0.0
    return rows, total


def markdown_table(systems: Dict[str, dict]) -> str:
    lines = ["| system | utterances | words | WER (%) | sub | del | ins |", "|---|---|---|---|---|---|---|"]
    for s in systems.values():
        lines.append(f"| {s['name']} | {s['utterances']} | {s['words']} | {s['wer']:.2f} | {s['sub']} | "
                     f"{s['del']} | {s['ins']} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- decoding
def load_model(args):
    """The recognizer and a Transcriber decoding every input as ASR; EvalError naming --model."""
    from espnet_omni_avsr.bin.transcribe import resolve_device
    from espnet_omni_avsr.inference.transcriber import Transcriber
    from espnet_omni_avsr.prep.errors import PrepError
    from espnet_omni_avsr.recognizer import AVSRRecognizer
    from espnet_omni_avsr.utils.model_archive import ArchiveError

    try:
        rec = AVSRRecognizer.from_pretrained(args.model, cache_dir=args.cache_dir, device=resolve_device(args.device),
                                             beam_size=args.beam_size, max_new_tokens=args.max_new_tokens)
        if "asr" not in rec.trained_tasks:
            raise ValueError(f"the model was trained for {', '.join(rec.trained_tasks)} only, not asr: it cannot "
                             "transcribe audio recordings")
        return rec, Transcriber(rec, None, task="asr", batch_size=args.batch_size)
    except (ArchiveError, OSError, ValueError, PrepError) as e:
        raise EvalError(f"--model {args.model}: {e}") from None


def decode_model(transcriber, recordings: Sequence[Recording]) -> tuple:
    """([transcript or None], [error or None], seconds) with the transcribe machinery."""
    start = time.perf_counter()
    texts, errors = [], []
    for record, _ in transcriber.run([r.wav for r in recordings]):
        texts.append(record["text"] if record["ok"] else None)
        errors.append(None if record["ok"] else record["error"])
    return texts, errors, time.perf_counter() - start


def decode_whisper(whisper_dir: str, recordings: Sequence[Recording], batch_size: int) -> tuple:
    """Whisper's greedy transcripts of the recordings, read as the model reads them (16 kHz mono):
    ([transcript or None], [error or None], seconds). EvalError when the folder does not load."""
    from transformers import WhisperFeatureExtractor

    from espnet_omni_avsr.inference.media import load_media
    from espnet_omni_avsr.prep.errors import ItemError
    from espnet_omni_avsr.pretrained.verify import transcribe

    if not os.path.isfile(os.path.join(whisper_dir, "config.json")):
        raise EvalError(f"--whisper_dir {whisper_dir}: not a Hugging Face model folder (no config.json); "
                        "python -m espnet_omni_avsr.bin.prepare_pretrained writes whisper-tiny.en")
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(whisper_dir)
    except (OSError, ValueError) as e:
        raise EvalError(f"--whisper_dir {whisper_dir}: no Whisper feature extractor: {e}") from None
    rate, window = int(extractor.sampling_rate), float(extractor.chunk_length)
    audios, errors = {}, [None] * len(recordings)
    for i, r in enumerate(recordings):
        try:
            speech = load_media(r.wav, None, ("audio",), sample_rate=rate).speech
        except ItemError as e:
            errors[i] = str(e)
            continue
        if speech is None:
            errors[i] = f"{r.wav}: no audio to transcribe"
        elif len(speech) > window * rate:
            errors[i] = f"{r.wav}: {len(speech) / rate:.1f} s, longer than Whisper's {window:g}-s window"
        else:
            audios[i] = speech
    start = time.perf_counter()
    try:
        texts = transcribe(whisper_dir, list(audios.values()), batch_size=batch_size) if audios else []
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        raise EvalError(f"--whisper_dir {whisper_dir}: Whisper does not transcribe: {type(e).__name__}: {e}") from None
    by_index = dict(zip(audios, texts))
    return [by_index.get(i) for i in range(len(recordings))], errors, time.perf_counter() - start


# ------------------------------------------------------------------------------------------ main
def evaluate(args) -> tuple:
    """(summary, per-utterance rows); EvalError on bad input."""
    if args.batch_size < 1:
        raise EvalError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.beam_size < 1:
        raise EvalError(f"--beam_size must be >= 1, got {args.beam_size}")
    if args.whisper_dir and not os.path.isdir(args.whisper_dir):
        raise EvalError(f"--whisper_dir {args.whisper_dir}: no such folder")
    recordings = load_recordings(args.data_root)
    logging.info("%d recordings under %s", len(recordings), args.data_root)
    rec, transcriber = load_model(args)
    model_texts, model_errors, model_seconds = decode_model(transcriber, recordings)
    refs = [r.reference for r in recordings]
    model_rows, model_total = score_system(refs, model_texts)
    condition = rec.conditions_of("asr")
    from espnet_omni_avsr.names import condition_label

    label = condition_label("asr", condition)
    name = Path(args.model).name.split(".")[0] if os.path.isfile(args.model) else Path(args.model).resolve().name
    systems = {"model": dict(model_total, name=f"{name} ({label}, beam {args.beam_size})", path=args.model,
                             condition=label, decoding=rec.decoding_options(), seconds=round(model_seconds, 2))}
    outputs = {"model": (model_texts, model_errors, model_rows)}
    if args.whisper_dir:
        w_texts, w_errors, w_seconds = decode_whisper(args.whisper_dir, recordings, args.batch_size)
        w_rows, w_total = score_system(refs, w_texts)
        systems["whisper"] = dict(w_total, name=f"{Path(args.whisper_dir).resolve().name} (Whisper, greedy)",
                                  path=args.whisper_dir, seconds=round(w_seconds, 2))
        outputs["whisper"] = (w_texts, w_errors, w_rows)
    rows = []
    for i, r in enumerate(recordings):
        row = {"id": r.utt_id, "wav": r.wav, "source": r.source, "reference": r.reference,
               "reference_normalized": normalize(r.reference)}
        for key, (texts, errors, scored) in outputs.items():
            row[key] = dict(text=texts[i], **scored[i], **({"error": errors[i]} if errors[i] else {}))
        rows.append(row)
    summary = {"data_root": args.data_root, "utterances": len(recordings), "normalization": NORMALIZATION,
               "systems": systems}
    return summary, rows


def write_outputs(output_dir: str, summary: dict, rows: List[dict]) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "utterances.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
    with open(os.path.join(output_dir, "utterances.tsv"), "w", encoding="utf-8") as f:
        f.write("\t".join(TSV_COLUMNS) + "\n")
        for row in rows:
            cells = [row["id"], row["reference_normalized"]]
            for key in ("model", "whisper"):
                cells += [row[key]["normalized"], str(row[key]["errors"])] if key in row else ["", ""]
            f.write("\t".join(cells) + "\n")
    with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the table only
        setup_logging(args.log_level)
        try:
            summary, rows = evaluate(args)
        except EvalError as e:
            logging.error("%s", e)
            return 2
        if args.output_dir:
            write_outputs(args.output_dir, summary, rows)
            logging.info("wrote %s/{utterances.json,utterances.tsv,summary.json}", args.output_dir)
    failed = 0
    for row in rows:
        for key in ("model", "whisper"):
            if key in row and "error" in row[key]:
                failed += 1
                logging.error("FAILED (%s) %s", key, row[key]["error"])
    print(markdown_table(summary["systems"]), file=stdout, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
