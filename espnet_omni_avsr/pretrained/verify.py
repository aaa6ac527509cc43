"""Functional checks of converted pretrained folders on real inputs.

- Whisper: transcribe the real recordings of Debian's ``pocketsphinx-testdata`` (16 kHz wav files with
  ``<s> words </s> (utt_id)`` transcripts) with ``WhisperFeatureExtractor`` + greedy ``generate``, and
  score the corpus WER after a light English normalisation.
- Causal LM: greedy completion of a factual prompt must contain the expected word.
"""
from __future__ import annotations

import logging
import os
import re
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from espnet_omni_avsr.pretrained.package_files import MissingDependencyError
from espnet_omni_avsr.utils.spelling import number_to_words

logger = logging.getLogger(__name__)

POCKETSPHINX_TESTDATA_DIR = Path("/usr/share/pocketsphinx/test/data")
POCKETSPHINX_INSTALL = "apt-get install pocketsphinx-testdata"

_TRANSCRIPT_LINE = re.compile(r"^\s*(?:<s>)?(?P<text>.*?)(?:</s>)?\s*\((?P<utt>[^()\s]+)\)\s*$")


@dataclass(frozen=True)
class Utterance:
    utt_id: str
    wav_path: Path
    text: str


def load_pocketsphinx_testdata(data_dir: str | Path | None = None) -> list[Utterance]:
    """All wav recordings under ``data_dir`` that have a transcript line, sorted by path.

    Transcript files are ``transcription`` or ``*.transcription``; each line is
    ``<s> words </s> (utt_id)`` and the audio is ``<same folder>/<utt_id>.wav``.

    Raises:
        MissingDependencyError: the folder does not exist or holds no transcribed recording.
    """
    data_dir = Path(data_dir or os.environ.get("POCKETSPHINX_TESTDATA_DIR", POCKETSPHINX_TESTDATA_DIR))
    if not data_dir.is_dir():
        raise MissingDependencyError(
            f"{data_dir} does not exist: the Whisper check needs Debian's pocketsphinx-testdata. "
            f"Install it with: {POCKETSPHINX_INSTALL}"
        )
    utterances = []
    for transcript in transcription_files(data_dir):
        for line in transcript.read_text().splitlines():
            parsed = parse_transcript_line(line)
            if parsed is None:
                continue
            wav = transcript.parent / f"{parsed[0]}.wav"
            if wav.is_file():
                utterances.append(Utterance(parsed[0], wav, parsed[1]))
    if not utterances:
        raise MissingDependencyError(
            f"No transcribed wav recordings under {data_dir}. Install them with: {POCKETSPHINX_INSTALL}"
        )
    return sorted(utterances, key=lambda u: str(u.wav_path))


def transcription_files(data_dir: str | Path) -> list[Path]:
    """The transcript files under ``data_dir`` (``transcription`` or ``*.transcription``), sorted."""
    return sorted(p for p in Path(data_dir).rglob("*") if p.is_file() and
                  (p.name == "transcription" or p.suffix == ".transcription"))


def parse_transcript_line(line: str) -> tuple[str, str] | None:
    """``<s> words </s> (utt_id)`` -> (utt_id, words with single spaces); None for any other line."""
    match = _TRANSCRIPT_LINE.match(line)
    return (match["utt"], " ".join(match["text"].split())) if match else None


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """16-bit PCM wav -> (float32 samples in [-1, 1], mono averaged, sampling rate)."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM wav is supported, got {8 * f.getsampwidth()} bits")
        frames = f.readframes(f.getnframes())
        channels, rate = f.getnchannels(), f.getframerate()
    audio = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return audio.reshape(-1, channels).mean(axis=1), rate


TITLE_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def spell_numbers(text: str) -> str:
    """Integers (with thousands commas, under 10 digits) in English words: "1,250 words" ->
    " one thousand two hundred fifty  words"; the rest of the text as it is."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    return re.sub(r"\d+", lambda m: f" {number_to_words(int(m.group()))} " if len(m.group()) < 10 else m.group(), text)


def normalize_text(text: str) -> str:
    """Lower case, spell out integers and a few title abbreviations, drop punctuation (keep apostrophes)."""
    text = spell_numbers(text.lower().replace("-", " "))
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    words = [TITLE_ABBREVIATIONS.get(w, w) for w in text.split()]
    return " ".join(w.strip("'") for w in words if w.strip("'"))


def transcribe(model_dir: str | Path, audios: list[np.ndarray], *, batch_size: int = 8,
               max_new_tokens: int | None = None) -> list[str]:
    """Greedy Whisper transcription of 16 kHz waveforms (each at most 30 s) with a converted HF folder.

    ``max_new_tokens=None`` keeps the folder's generation config (its ``max_length``).
    """
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    feature_extractor = WhisperFeatureExtractor.from_pretrained(str(model_dir))
    tokenizer = WhisperTokenizer.from_pretrained(str(model_dir))
    model = WhisperForConditionalGeneration.from_pretrained(str(model_dir)).eval()
    texts = []
    for start in range(0, len(audios), batch_size):
        batch = audios[start:start + batch_size]
        features = feature_extractor(batch, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
        with torch.inference_mode():
            limit = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
            tokens = model.generate(features.input_features, do_sample=False, num_beams=1, **limit)
        texts += [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    return texts


def verify_whisper(model_dir: str | Path, *, data_dir: str | Path | None = None, max_wer: float = 0.10) -> dict:
    """Transcribe pocketsphinx-testdata and compare with its transcripts.

    Returns:
        ``{"passed", "wer", "max_wer", "num_utterances", "num_ref_words", "seconds", "utterances": [...]}``,
        where each utterance has ``id``, ``ref``, ``hyp`` (normalised) and ``hyp_raw``.
    """
    import jiwer

    utterances = load_pocketsphinx_testdata(data_dir)
    audios = []
    for utt in utterances:
        audio, rate = read_wav(utt.wav_path)
        if rate != 16000:
            raise ValueError(f"{utt.wav_path}: expected 16 kHz audio, got {rate} Hz")
        audios.append(audio)
    t0 = time.perf_counter()
    raw = transcribe(model_dir, audios)
    seconds = time.perf_counter() - t0
    refs = [normalize_text(u.text) for u in utterances]
    hyps = [normalize_text(h) for h in raw]
    wer = float(jiwer.wer(refs, hyps))
    result = {
        "passed": wer <= max_wer,
        "wer": round(wer, 4),
        "max_wer": max_wer,
        "num_utterances": len(utterances),
        "num_ref_words": sum(len(r.split()) for r in refs),
        "audio_seconds": round(sum(len(a) for a in audios) / 16000, 2),
        "seconds": round(seconds, 2),
        "utterances": [
            {"id": u.utt_id, "ref": r, "hyp": h, "hyp_raw": x} for u, r, h, x in zip(utterances, refs, hyps, raw)
        ],
    }
    logger.info("Whisper check on %d recordings: WER %.2f%% (limit %.0f%%), %.1f s",
                len(utterances), 100 * wer, 100 * max_wer, seconds)
    return result


def verify_causal_lm(model_dir: str | Path, *, prompt: str = "The capital of France is", expected: str = "Paris",
                     max_new_tokens: int = 8) -> dict:
    """Greedy plain-text completion of ``prompt``; passes when ``expected`` occurs in the completion.

    Returns:
        ``{"passed", "prompt", "expected", "completion", "seconds"}``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id)
    completion = tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    seconds = time.perf_counter() - t0
    result = {
        "passed": expected in completion,
        "prompt": prompt,
        "expected": expected,
        "completion": completion,
        "seconds": round(seconds, 2),
    }
    logger.info("LM check: %r -> %r (%s), %.1f s", prompt, completion,
                "ok" if result["passed"] else f"no {expected!r}", seconds)
    return result
