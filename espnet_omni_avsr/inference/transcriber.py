"""Raw inputs -> transcripts: streams (media.py), task choice, long-clip cuts (segments.py), batched
decoding with the recognizer, one result record per input.

Task choice (:func:`choose_task`). Without a forced task, the input's *available* streams decide:
audio when it has an audio stream that is not digitally silent, video when a face is found in
its frames. The preferred task reads exactly those: AVSR (audio and a face), ASR (audio, no
face), VSR (a face, no audio or a silent one). When the model was not trained for it, the trained
task that reads the most of the available streams is used instead (ties: the model's task order)
with a warning in the record (an ASR-only model given a face video transcribes its audio); when
no trained task can be served, the input fails, naming what is missing. A forced task (``--task``)
must be one the model was trained for (otherwise the command stops before reading any input), and
an input without a stream it reads fails. An audio file (.wav, .flac, .mp3, .ogg, .m4a; media.py)
has no video: it is an ASR input, and a forced VSR or AVSR fails it before it is read (the
others go on).

Batching: inputs are prepared one after the other and their segments collected until there are
``batch_size`` of them (or the inputs end); the segments are then decoded in batches of
``batch_size`` (one task per batch, longest first) and the records come back in input order. An
utterance decodes alike alone and in a batch (recognizer.py), so batching changes no transcript.
A batch that fails is decoded again one segment at a time, so that only its bad input fails.

Conditions (compression rates): the recognizer's (``--rates``, or the first trained), or, with a
rate chooser (rate_choice.py: ``--token_budget``, ``--rates auto``), one per input from its task
(and its audio's estimated SNR, snr.py); batches then hold one task at one condition. The record
names the condition, the rule that chose it and the estimated SNR of the audio the task reads.
"""
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from espnet_omni_avsr.inference.media import NOT_READ, MediaInput, is_audio_file, load_media, no_video_reason
from espnet_omni_avsr.inference.rate_choice import NoConditionFits
from espnet_omni_avsr.inference.segments import Segment, audio_energy, cut_segments, join_texts, motion_energy
from espnet_omni_avsr.inference.snr import estimate_snr
from espnet_omni_avsr.names import TASK_MODALITIES, condition_label, modalities_of
from espnet_omni_avsr.prep.audio_prep import DEFAULT_MAX_AV_DIFF
from espnet_omni_avsr.prep.errors import ItemError

logger = logging.getLogger(__name__)

DEFAULT_MAX_SEGMENT_SECONDS = 30.0  # when the model's encoders state no limit
DEFAULT_CUT_SEARCH_SECONDS = 5.0


def choose_task(available: Sequence[str], trained: Sequence[str], forced: Optional[str] = None,
                missing: Optional[Dict[str, str]] = None) -> Tuple[str, List[str]]:
    """(task, warnings) for an input with the ``available`` streams (module docstring); ItemError
    naming what is missing when no task can be served."""
    available, missing = set(available), dict(missing or {})

    def why(mods) -> str:
        return "; ".join(missing.get(m, f"no {m}") for m in mods if m not in available)

    if forced is not None:
        lacking = [m for m in TASK_MODALITIES[forced] if m not in available]
        if lacking:
            raise ItemError(f"--task {forced} needs {' and '.join(lacking)}: {why(lacking)}")
        return forced, []
    preferred = next((t for t, mods in TASK_MODALITIES.items() if set(mods) == available), None)
    if preferred in trained:
        return preferred, []
    usable = [t for t in trained if set(TASK_MODALITIES[t]) <= available]
    if not usable:
        needed = modalities_of(trained)
        raise ItemError(f"the model's tasks ({', '.join(trained)}) need {' or '.join(needed)}: "
                        f"{why(needed) or 'nothing usable'}")
    best = max(usable, key=lambda t: (len(TASK_MODALITIES[t]), -list(trained).index(t)))
    unused = sorted(available - set(TASK_MODALITIES[best]))
    return best, [f"the model was not trained for {preferred or 'a task reading ' + '+'.join(sorted(available))}: "
                  f"decoded as {best}" + (f", {' and '.join(unused)} ignored" if unused else "")]


@dataclass
class Prepared:
    """One input between preparation and its record."""

    index: int
    path: str
    media: MediaInput
    task: str
    segments: List[Segment]
    utterances: List[Dict[str, np.ndarray]]
    warnings: List[str] = field(default_factory=list)
    texts: List[Optional[str]] = field(default_factory=list)
    llm_tokens: List[int] = field(default_factory=list)
    budgets: List[int] = field(default_factory=list)
    generated: List[int] = field(default_factory=list)
    decode_seconds: float = 0.0
    error: Optional[str] = None
    snr_db: Optional[float] = None
    choice: Optional[object] = None  # a rate_choice.Choice, with a rate chooser

    @property
    def rates(self) -> Optional[Dict[str, str]]:
        """stream -> condition chosen for this input; None: the recognizer's."""
        return self.choice.candidate.rates if self.choice is not None else None

    def seconds(self, k: int) -> float:
        return (self.segments[k][1] - self.segments[k][0]) / self.media.fps


class Transcriber:
    """Decode raw inputs with a recognizer (an :class:`~espnet_omni_avsr.recognizer.AVSRRecognizer`,
    or anything with its ``trained_tasks``, ``conditions_of``, ``decode``, ``sample_rate``, ``fps``
    and ``input_limit_seconds``).

    Args:
        recognizer: the model.
        face_prep: the face mode (:class:`~espnet_omni_avsr.prep.face.face_video_prep.FaceVideoPrep`,
            a mediapipe or dlib one); None: inputs are read without video.
        task: force a task (None: from each input, module docstring).
        batch_size: segments decoded together.
        max_segment_seconds: the longest segment (default: the model's input limit, else 30 s).
        cut_search_seconds: where a long clip's cut is searched, before the limit (segments.py).
        rate_chooser: picks each input's condition (a `rate_choice.RateChooser`); None: the
            recognizer's rates.
    """

    def __init__(self, recognizer, face_prep=None, task: Optional[str] = None, batch_size: int = 8,
                 max_segment_seconds: Optional[float] = None, cut_search_seconds: float = DEFAULT_CUT_SEARCH_SECONDS,
                 rate_chooser=None):
        self.recognizer = recognizer
        self.rate_chooser = rate_chooser
        self.face_prep = face_prep
        self.trained = list(recognizer.trained_tasks)
        if task is not None and task not in self.trained:
            raise ValueError(f"--task {task}: the model was trained for {', '.join(self.trained)} only")
        self.task = task
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.sample_rate, self.fps = int(recognizer.sample_rate), float(recognizer.fps)
        hop = self.sample_rate / self.fps
        if abs(hop - round(hop)) > 1e-9:
            raise ValueError(f"the sample rate {self.sample_rate} is not a whole number of samples per frame at {self.fps:g} fps")
        self.hop = int(round(hop))
        limit = recognizer.input_limit_seconds()
        if max_segment_seconds is None:
            max_segment_seconds = limit if limit is not None else DEFAULT_MAX_SEGMENT_SECONDS
        elif limit is not None and max_segment_seconds > limit:
            raise ValueError(f"--max_segment_seconds {max_segment_seconds:g} is longer than the model's input "
                             f"limit ({limit:g} s)")
        if max_segment_seconds <= 0 or cut_search_seconds <= 0:
            raise ValueError("max_segment_seconds and cut_search_seconds must be positive")
        self.max_segment_seconds = float(max_segment_seconds)
        # strictly below the limit: Whisper runs a segment of exactly 30 s in its other (padded) mode
        self.max_frames = max(2, int(math.ceil(self.max_segment_seconds * self.fps - 1e-6)) - 1)
        self.search_frames = max(1, int(round(cut_search_seconds * self.fps)))
        wanted = TASK_MODALITIES[task] if task else modalities_of(self.trained)
        self.modalities = [m for m in wanted if m != "video" or face_prep is not None]

    # ---------------------------------------------------------------------------------------------
    def prepare(self, index: int, path: str) -> Prepared:
        """Streams, task, segments of one input; ItemError (naming it) when it cannot be decoded."""
        if self.task is not None and "video" in TASK_MODALITIES[self.task] and is_audio_file(path) \
                and os.path.isfile(path):
            raise ItemError(f"--task {self.task} needs video: {no_video_reason(path)}; audio files are asr "
                            "inputs (no --task, or --task asr)")
        media = load_media(path, self.face_prep, self.modalities, self.sample_rate, self.fps)
        task, warnings = choose_task(media.available, self.trained, self.task, media.missing)
        mods = TASK_MODALITIES[task]
        speech = media.speech if "audio" in mods else None
        crops = media.crops if "video" in mods else None
        start = time.perf_counter()
        if speech is not None and crops is not None:
            a, v = len(speech) / self.sample_rate, len(crops) / self.fps
            n = min(len(crops), -(-len(speech) // self.hop))
            if abs(a - v) > DEFAULT_MAX_AV_DIFF:
                warnings.append(f"audio lasts {a:.2f} s and video {v:.2f} s: both cut to {n / self.fps:.2f} s")
            crops, speech = crops[:n], speech[: n * self.hop]
        num_frames = len(crops) if crops is not None else -(-len(speech) // self.hop)
        energy = audio_energy(speech, self.hop, num_frames) if speech is not None else motion_energy(crops)
        segments = cut_segments(num_frames, self.max_frames, energy, self.search_frames)
        utterances = []
        for k, (a, b) in enumerate(segments):
            last = k == len(segments) - 1
            utt = {}
            if speech is not None:
                utt["speech"] = speech[a * self.hop: None if last else b * self.hop]
            if crops is not None:
                utt["video"] = crops[a: None if last else b]
            utterances.append(utt)
        media.timing["segment"] = time.perf_counter() - start
        n = len(segments)
        snr = estimate_snr(speech, self.sample_rate) if speech is not None else None
        choice = None
        if self.rate_chooser is not None:
            try:
                choice = self.rate_chooser.choose(task, snr)
            except NoConditionFits as e:
                raise ItemError(f"{path}: {e}") from None
        return Prepared(index, path, media, task, segments, utterances, warnings,
                        texts=[None] * n, llm_tokens=[0] * n, budgets=[0] * n, generated=[0] * n,
                        snr_db=None if snr is None else round(snr, 2), choice=choice)

    def decode(self, prepared: Sequence[Prepared]) -> None:
        """Decode the segments of ``prepared`` in batches (module docstring); fills their results."""
        jobs = [(p, k) for p in prepared if p.error is None for k in range(len(p.segments))]
        for task in TASK_MODALITIES:
            mine = [j for j in jobs if j[0].task == task]
            for cond in sorted({_condition_key(p) for p, _ in mine}):  # one only without a rate chooser
                group = sorted((j for j in mine if _condition_key(j[0]) == cond), key=lambda j: -j[0].seconds(j[1]))
                for i in range(0, len(group), self.batch_size):
                    self._decode_batch(task, group[i: i + self.batch_size])

    def _decode_batch(self, task: str, batch: List[Tuple[Prepared, int]]) -> None:
        start = time.perf_counter()
        rates = batch[0][0].rates
        try:
            utterances = [p.utterances[k] for p, k in batch]
            if rates is None:
                out = self.recognizer.decode(utterances, task)
            else:
                out = self.recognizer.decode(utterances, task, rates=rates)
        except Exception as e:  # decode one at a time: only the segment at fault fails
            if len(batch) > 1:
                for job in batch:
                    self._decode_batch(task, [job])
                return
            p, _ = batch[0]
            p.error = f"{p.path}: decoding failed: {type(e).__name__}: {e}"
            logger.debug("decoding %s failed", p.path, exc_info=True)
            return
        seconds = time.perf_counter() - start
        total = sum(p.seconds(k) for p, k in batch) or 1.0
        budgets = out.get("max_new_tokens") or [0] * len(batch)
        generated = out.get("generated_tokens")
        count = getattr(self.recognizer, "count_tokens", None)
        for j, (p, k) in enumerate(batch):
            p.texts[k] = out["text"][j]
            p.llm_tokens[k] = int(out["llm_tokens"][j])
            p.budgets[k] = int(budgets[j])
            p.generated[k] = int(generated[j]) if generated else (count(p.texts[k]) if count else 0)
            p.decode_seconds += seconds * p.seconds(k) / total

    # ---------------------------------------------------------------------------------------------
    def record(self, p: Prepared) -> Dict:
        """The JSON-able result of one decoded input."""
        if p.error is not None:
            return failure(p.path, p.error)
        media = p.media
        duration = max(media.duration, 1e-9)
        generated = p.generated
        if p.choice is not None:
            conditions, label = p.choice.candidate.json_conditions(), p.choice.candidate.label
            choice = p.choice.record()
        else:
            conditions = self.recognizer.conditions_of(p.task)
            label = condition_label(p.task, conditions)
            choice = {"rule": "forced" if getattr(self.recognizer, "rates", None) else "default"}
        timing = dict(media.timing, decode=p.decode_seconds)
        timing["total"] = sum(timing.values())
        segments = [dict(start=a / media.fps, end=b / media.fps, text=t, llm_input_tokens=n, max_new_tokens=m,
                         generated_tokens=g)
                    for (a, b), t, n, m, g in zip(p.segments, p.texts, p.llm_tokens, p.budgets, generated)]
        return {
            "input": p.path,
            "ok": True,
            "text": join_texts(p.texts),
            "task": p.task,
            "rates": conditions,
            "condition": label,
            "rate_choice": choice,
            "snr_estimate_db": p.snr_db,
            "duration": media.duration,
            "segments": segments,
            "llm_input_tokens": sum(p.llm_tokens),
            "llm_input_tokens_per_second": sum(p.llm_tokens) / duration,
            "generated_tokens": sum(generated),
            "generated_tokens_per_second": sum(generated) / p.decode_seconds if p.decode_seconds > 0 else None,
            "audio": media.info.get("audio"),
            "video": media.info.get("video"),
            "missing": {m: r for m, r in media.missing.items() if r != NOT_READ},
            "warnings": p.warnings,
            "notes": media.notes,
            "timing": timing,
            "decoding": self.recognizer.decoding_options() if hasattr(self.recognizer, "decoding_options") else {},
        }

    def run(self, paths: Sequence[str], on_prepared=None) -> Iterator[Tuple[Dict, Optional[Prepared]]]:
        """(record, prepared or None) for each input, in order. ``on_prepared(p)`` is called after
        each input is prepared (progress bars, writing crops)."""
        chunk: List = []  # Prepared or failure records, in input order
        n_segments = 0
        for index, path in enumerate(paths):
            try:
                p = self.prepare(index, path)
                n_segments += len(p.segments)
                chunk.append(p)
            except ItemError as e:
                chunk.append(failure(path, str(e)))
            except Exception as e:  # one input must not stop the others
                logger.debug("preparing %s failed", path, exc_info=True)
                chunk.append(failure(path, f"{path}: {type(e).__name__}: {e}"))
            if on_prepared is not None:
                on_prepared(chunk[-1])
            if n_segments >= self.batch_size:
                yield from self._flush(chunk)
                chunk, n_segments = [], 0
        yield from self._flush(chunk)

    def _flush(self, chunk: List) -> Iterator[Tuple[Dict, Optional[Prepared]]]:
        prepared = [c for c in chunk if isinstance(c, Prepared)]
        if prepared:
            self.decode(prepared)
        for c in chunk:
            yield (self.record(c), c) if isinstance(c, Prepared) else (c, None)


def _condition_key(p: Prepared) -> Tuple:
    """What a batch must share besides its task: the input's chosen condition."""
    return tuple(sorted((p.rates or {}).items()))


def failure(path: str, message: str) -> Dict:
    """The record of an input that could not be transcribed; the message names it."""
    if path not in message:
        message = f"{path}: {message}"
    return {"input": path, "ok": False, "error": message}
