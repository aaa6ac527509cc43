"""Which trained condition (compression rates) a task decodes at: elastic inference from a budget.

A matryoshka model is trained at several conditions per stream (``avsr_a4v2``, ``avsr_a16v5``,
...; validation scores every one) and decodes at any of them. Three ways to pick one:

* ``--rates a16v5``: forced (recognizer.py), or the first trained condition by default;
* ``--token_budget T`` (:func:`choose_by_budget`): among the task's trained conditions whose LLM
  input tokens per second fit T (<= T), the one with the lowest validation loss (the archive's
  ``validation.loss``, utils/model_archive.py); ties go to the cheaper one. When the record lacks
  the loss of some fitting condition (an older archive, an exp dir without checkpoint.pth), the
  fitting condition with the most tokens per second is taken instead, with a warning saying so.
  No condition fits: :class:`NoConditionFits`, naming the cheapest condition and its tokens/s;
* ``--rates auto`` (:func:`choose_by_snr`), optionally within a budget: the input's SNR is
  estimated from its audio (snr.py) and, when the record has per-SNR WERs (the archive's
  ``results.wer``: stage 11's scored decodings), the condition with the lowest WER at the stored
  SNR nearest to the estimate is taken (``clean`` counts as ``CLEAN_SNR_DB`` = 30 dB; a WER is the
  mean over the decoding configs and test sets that scored that label at that SNR). A task that
  reads no noisy stream (VSR) uses the clean results. Without such results (or without an
  estimate: no audio, a clip under 0.5 s) it falls back to the budget rule above, with a warning.

Tokens per second of a condition (:func:`probe_token_rates`) are measured on the model itself:
the task's inputs for a probe of ``PROBE_SECONDS`` (9.6 s: a whole number of tokens at the usual
rates; shorter when the model's input limit is) go through the recognizer's own preprocessing,
collation, front ends and encoders once, and each stream's tokens at each trained condition are
counted and divided by the duration (Whisper's 50 Hz frames at rate k: 50 / k; 25 fps video at
rate k: 25 / k). A compressor whose count follows its own budget reports it instead: a Q-Former's
``queries_per_second`` (its count at speech rate 1; a fast speaker gets up to ``max_rate`` times
more). A condition's rate is the sum over the streams its task reads.
"""
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from espnet_omni_avsr.names import CLEAN, MODALITIES, TASK_MODALITIES, condition_label, parse_snr

logger = logging.getLogger(__name__)

PROBE_SECONDS = 9.6
CLEAN_SNR_DB = 30.0
PROBE_CROP = 96  # the mouth crops' side (inference/media.py)


class NoConditionFits(ValueError):
    """A token budget below every trained condition of a task."""


@dataclass(frozen=True)
class Candidate:
    """One trained condition of a task: ((stream, condition name), ...) in prompt order."""

    task: str
    conditions: Tuple[Tuple[str, str], ...]
    tokens_per_second: float

    @property
    def rates(self) -> Dict[str, str]:
        """stream -> condition, as the recognizer takes them."""
        return dict(self.conditions)

    @property
    def label(self) -> str:
        return condition_label(self.task, self.rates)

    def json_conditions(self) -> Dict[str, object]:
        """stream -> condition, integer rates as int (the transcript records' ``rates``)."""
        return {s: int(c) if c.isdigit() else c for s, c in self.conditions}


@dataclass
class Choice:
    """A chosen condition, the rule that chose it and why."""

    candidate: Candidate
    rule: str  # "only", "validation", "most_tokens", "snr"
    reason: str
    token_budget: Optional[float] = None
    warnings: List[str] = field(default_factory=list)

    def record(self) -> Dict:
        """JSON-able (the transcript records' ``rate_choice``)."""
        return {"rule": self.rule, "reason": self.reason, "token_budget": self.token_budget,
                "tokens_per_second": round(self.candidate.tokens_per_second, 4), "warnings": list(self.warnings)}


# --------------------------------------------------------------------------- tokens per second


def _probe_inputs(recognizer, modalities: Sequence[str], seconds: float) -> Tuple[Dict[str, np.ndarray], float]:
    """A dummy utterance of about `seconds` (a whole number of video frames) for `modalities`."""
    rng = np.random.default_rng(0)
    frames = max(1, int(round(seconds * recognizer.fps)))
    duration = frames / recognizer.fps
    data = {}
    for m in modalities:
        if m == "audio":
            n = int(round(duration * recognizer.sample_rate))
            data[MODALITIES[m].data_name] = (0.05 * rng.standard_normal(n)).astype(np.float32)
        elif m == "video":
            data[MODALITIES[m].data_name] = rng.integers(0, 256, (frames, PROBE_CROP, PROBE_CROP), dtype=np.uint8)
        else:
            raise ValueError(f"no probe input for modality {m!r}: its tokens per second cannot be measured")
    return data, duration


def probe_token_rates(recognizer, tasks: Optional[Sequence[str]] = None,
                      seconds: float = PROBE_SECONDS) -> Dict[str, Dict[str, float]]:
    """stream -> trained condition -> LLM input tokens per second, measured on the model (module
    docstring) for the streams `tasks` (default: the trained ones) read."""
    import torch

    model = recognizer.model
    tasks = list(tasks or recognizer.trained_tasks)
    streams = sorted({s for t in tasks for s in model.task_streams(t)})
    limit = recognizer.input_limit_seconds()
    if limit is not None:
        seconds = min(seconds, 0.8 * limit)
    modalities = sorted({m for t in tasks for m in TASK_MODALITIES[t]}
                        | (set(model.fused.inputs) if getattr(model, "fused", None) is not None else set()))
    data, duration = _probe_inputs(recognizer, modalities, seconds)
    if recognizer.preprocess is not None:
        data = recognizer.preprocess("probe", data)
    _, batch = recognizer.collate([("probe", data)])
    keys = {k for m in MODALITIES.values() for k in (m.data_name, m.lengths_name)}
    batch = {k: v.to(recognizer.device) for k, v in batch.items() if k in keys}
    out: Dict[str, Dict[str, float]] = {}
    with torch.no_grad():
        features = model.encode(tasks, batch)
        for s in streams:
            branch = model.stream_branches[s]
            out[s] = {}
            for c in branch.conditions:
                own = getattr(branch.compressors[c], "queries_per_second", None)
                if own is not None:
                    out[s][c] = float(own)
                else:
                    _, lengths = branch.tokenize(*features[s], c)
                    out[s][c] = float(lengths[0]) / duration
    return out


def candidates(model, task: str, stream_rates: Mapping[str, Mapping[str, float]]) -> List[Candidate]:
    """Every trained condition of `task` (all combinations of its streams' conditions, in the
    training config's order: what validation scores), with its tokens per second."""
    streams = model.task_streams(task)
    out = []
    for combo in itertools.product(*(model.conditions(s) for s in streams)):
        tps = sum(stream_rates[s][c] for s, c in zip(streams, combo))
        out.append(Candidate(task, tuple(zip(streams, combo)), tps))
    return out


# --------------------------------------------------------------------------- what the record says


def validation_losses(meta: Optional[Mapping]) -> Dict[str, float]:
    """label -> validation loss from a model record (utils/model_archive.py); {} without one."""
    loss = ((meta or {}).get("validation") or {}).get("loss") or {}
    return {str(k): float(v) for k, v in loss.items() if v is not None and math.isfinite(float(v))}


def snr_wers(meta: Optional[Mapping]) -> Dict[str, Dict[str, float]]:
    """label -> SNR key ("clean", "10", "-5") -> WER (%), the mean over the record's decoding
    configs and test sets that scored it; {} without results."""
    sums: Dict[str, Dict[str, List[float]]] = {}
    for sets in (((meta or {}).get("results") or {}).get("wer") or {}).values():
        for labels in (sets or {}).values():
            for label, snrs in (labels or {}).items():
                for snr, wer in (snrs or {}).items():
                    sums.setdefault(str(label), {}).setdefault(str(snr), []).append(float(wer))
    return {label: {snr: sum(v) / len(v) for snr, v in snrs.items()} for label, snrs in sums.items()}


def snr_value(key: str) -> float:
    """An SNR key of the results as dB: "clean" -> CLEAN_SNR_DB."""
    return CLEAN_SNR_DB if key == CLEAN else parse_snr(key)


# --------------------------------------------------------------------------- the rules


def _tps(c: Candidate) -> str:
    return f"{c.tokens_per_second:.2f} LLM input tokens/s"


def fitting(cands: Sequence[Candidate], budget: Optional[float]) -> List[Candidate]:
    """The candidates within the budget (all without one); NoConditionFits when none is."""
    if not cands:
        raise ValueError("no trained condition to choose from")
    if budget is None:
        return list(cands)
    fit = [c for c in cands if c.tokens_per_second <= budget + 1e-9]
    if not fit:
        cheapest = min(cands, key=lambda c: c.tokens_per_second)
        raise NoConditionFits(
            f"--token_budget {budget:g}: no {cheapest.task} condition the model was trained at fits; the cheapest "
            f"is {cheapest.label} at {_tps(cheapest)}")
    return fit


def choose_by_budget(cands: Sequence[Candidate], budget: Optional[float],
                     losses: Optional[Mapping[str, float]] = None) -> Choice:
    """The budget rule (module docstring)."""
    fit = fitting(cands, budget)
    order = {c: i for i, c in enumerate(cands)}
    within = f"within {budget:g} tokens/s" if budget is not None else "(no token budget)"
    if len(fit) == 1:
        c = fit[0]
        return Choice(c, "only", f"the only trained condition {within}: {c.label} ({_tps(c)})", budget)
    losses = dict(losses or {})
    missing = [c.label for c in fit if c.label not in losses]
    if not missing:
        c = min(fit, key=lambda c: (losses[c.label], c.tokens_per_second, order[c]))
        return Choice(c, "validation", f"lowest validation loss {within}: {c.label} (loss {losses[c.label]:.4f}, "
                                       f"{_tps(c)}; {len(fit)} conditions fit)", budget)
    c = max(fit, key=lambda c: (c.tokens_per_second, -order[c]))
    what = "no validation losses" if len(missing) == len(fit) else f"no validation loss for {', '.join(missing)}"
    warning = (f"the model's record has {what} (packed without checkpoint.pth's statistics?): chose the "
               f"{c.task} condition with the most LLM input tokens per second {within}, {c.label} ({_tps(c)})")
    return Choice(c, "most_tokens", f"most tokens per second {within}: {c.label} ({_tps(c)}; no validation "
                                    "losses to compare)", budget, warnings=[warning])


def choose_by_snr(cands: Sequence[Candidate], snr_db: Optional[float], wers: Mapping[str, Mapping[str, float]],
                  budget: Optional[float] = None, losses: Optional[Mapping[str, float]] = None) -> Choice:
    """The SNR rule (module docstring). `snr_db`: the input's estimate; None for a task that reads
    no noisy stream (the clean results decide) or when there is no estimate (see `noisy`)."""
    fit = fitting(cands, budget)
    task = fit[0].task
    noisy = any(MODALITIES[m].noisy for m in TASK_MODALITIES[task])
    fallback = None
    if noisy and snr_db is None:
        fallback = "no SNR estimate for this input (audio shorter than 0.5 s or digitally silent)"
    else:
        points = sorted({k for c in fit for k in wers.get(c.label, {})})
        if not noisy:
            points = [k for k in points if k == CLEAN]
        if not points:
            fallback = (f"the model's record has no {'clean' if not noisy else 'per-SNR'} WERs of the {task} "
                        f"conditions{' within the budget' if budget is not None else ''} (no scored decodings "
                        "when it was packed?)")
        else:
            target = CLEAN_SNR_DB if snr_db is None else snr_db
            point = min(points, key=lambda k: (abs(snr_value(k) - target), -snr_value(k)))
            scored = [c for c in fit if point in wers.get(c.label, {})]
            order = {c: i for i, c in enumerate(cands)}
            c = min(scored, key=lambda c: (wers[c.label][point], c.tokens_per_second, order[c]))
            at = "clean" if point == CLEAN else f"{point} dB"
            est = "" if snr_db is None else f"estimated SNR {snr_db:.1f} dB -> "
            return Choice(c, "snr", f"{est}lowest WER at {at}: {c.label} ({wers[c.label][point]:.2f} %, {_tps(c)}; "
                                    f"{len(scored)} conditions scored there)", budget)
    choice = choose_by_budget(cands, budget, losses)
    choice.warnings.insert(0, f"--rates auto: {fallback}; fell back to the "
                              f"{'budget' if budget is not None else 'validation'} rule")
    return choice


# --------------------------------------------------------------------------- the policy


class RateChooser:
    """Picks each input's condition for the transcriber (module docstring).

    Args:
        recognizer: an `AVSRRecognizer` (its model, preprocessing, `meta` and trained tasks).
        token_budget: LLM input tokens per second (None: no budget; then `auto` must be set).
        auto: choose by the input's estimated SNR (``--rates auto``).
        meta: the model's record (default: ``recognizer.meta``).
        stream_rates: stream -> condition -> tokens/s (default: measured, `probe_token_rates`).
    """

    def __init__(self, recognizer, token_budget: Optional[float] = None, auto: bool = False,
                 meta: Optional[Mapping] = None, stream_rates: Optional[Mapping] = None):
        if token_budget is not None and not token_budget > 0:
            raise ValueError(f"--token_budget must be a positive number of LLM input tokens per second, "
                             f"got {token_budget:g}")
        if token_budget is None and not auto:
            raise ValueError("a RateChooser needs a token budget or auto")
        self.budget = None if token_budget is None else float(token_budget)
        self.auto = bool(auto)
        self.meta = dict(recognizer.meta if meta is None else meta)
        self.losses = validation_losses(self.meta)
        self.wers = snr_wers(self.meta)
        rates = stream_rates if stream_rates is not None else probe_token_rates(recognizer)
        self.candidates = {t: candidates(recognizer.model, t, rates) for t in recognizer.trained_tasks}
        self._by_budget: Dict[str, object] = {}
        self._warned = set()

    def budget_choice(self, task: str) -> Choice:
        """The budget rule's choice for `task` (once per task); NoConditionFits when none fits."""
        if task not in self._by_budget:
            try:
                self._by_budget[task] = choose_by_budget(self.candidates[task], self.budget, self.losses)
            except NoConditionFits as e:
                self._by_budget[task] = e
        got = self._by_budget[task]
        if isinstance(got, NoConditionFits):
            raise got
        return Choice(got.candidate, got.rule, got.reason, got.token_budget, warnings=list(got.warnings))

    def check(self, tasks: Sequence[str]) -> Dict[str, str]:
        """task -> why it cannot decode within the budget, for the `tasks` that cannot; NoConditionFits
        when none of them can."""
        failing = {}
        for t in tasks:
            try:
                self.budget_choice(t)
            except NoConditionFits as e:
                failing[t] = str(e)
        if failing and len(failing) == len(tasks):
            raise NoConditionFits("; ".join(failing.values()))
        return failing

    def choose(self, task: str, snr_db: Optional[float] = None) -> Choice:
        """The condition for an input of `task` with the estimated SNR `snr_db` (auto only)."""
        if self.auto:
            choice = choose_by_snr(self.candidates[task], snr_db, self.wers, self.budget, self.losses)
        else:
            choice = self.budget_choice(task)
        for w in choice.warnings:
            if w not in self._warned:
                self._warned.add(w)
                logger.warning("%s", w)
        return choice

    def describe(self, tasks: Sequence[str]) -> List[str]:
        """One line per task: its conditions and tokens per second (logged at start)."""
        return [f"{t}: " + ", ".join(f"{c.label} {c.tokens_per_second:.2f}" + (
            f" (valid loss {self.losses[c.label]:.3f})" if c.label in self.losses else "") for c in self.candidates[t])
            + " LLM input tokens/s" for t in tasks]
