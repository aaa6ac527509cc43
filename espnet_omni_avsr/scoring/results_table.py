"""RESULTS.md from the scored decoding directories of a recipe.

Directory convention (stages 10 and 11 follow it; nothing else is configured)::

    exp/<model_tag>/config.yaml                  training config (listed in RESULTS.md)
    exp/<model_tag>/train.log                    ESPnet's training log: "Number of trainable parameters"
    exp/<model_tag>/decode_<inference_tag>/<test_set>/<task>/snr_<cond>/
        text, llm_tokens                         stage 10 (decoding)
        score_wer/{ref.trn,hyp.trn,result.txt,summary.json}   stage 11 (espnet_omni_avsr.bin.score)

* ``<test_set>``: the clean dump set (``test``); ``<cond>``: ``clean``, or an SNR in dB (``10``,
  ``-5``, ``2.5``) for the noisy copy ``dump/<test_set>_snr<cond>`` written by stage 5. The layout
  and these names are ``espnet_omni_avsr.names`` (``decode_dir``, ``noisy_set_name``).
* ``<task>``: a label without ``/``: ``asr``, ``vsr``, ``avsr``, or with the conditions used at
  inference, e.g. ``avsr_a4v2`` (``espnet_omni_avsr.names.condition_label``). Its task is the task
  family in the plot.
* ``<inference_tag>``: the decoding config (``greedy``, ``beam15``).

Tables (one per clean test-set name): rows = model / decode / task, columns = clean then the SNRs
found, highest first; a cell is ``WER (LLM input tokens per second)``, tokens per second being the
sum of ``llm_tokens`` (the audio and video tokens decoding fed the LLM for each utterance, as
avsr_inference counted them; never derived from a rate) over the decoded utterances divided by the
sum of their ``utt2dur`` (computed by the scoring stage, ``summary.json["llm_tokens"]``; for a
summary without it, from the decoding dir's ``llm_tokens`` and ``<dump_dir>/<set>/utt2dur`` when
``dump_dir`` is given). Then sclite's counts per decoded set, and a compact task x SNR table of WER.
Then the papers' layout for the clean test sets: one row per model (and decoding config), one
column per task at its rates (``ASR@4``, ``VSR@2``, ``AVSR(4,2)``; the rates come from the task
label, parsed by ``espnet_omni_avsr.names.parse_condition_label``), a cell ``WER (tokens per
second)``. The plot (``RESULTS_wer_vs_tokens.png`` beside RESULTS.md, only when some decoded set
has both numbers) shows WER against tokens per second: one colour per task family, one marker per
SNR, one line style per test set; points of a series are joined in order of tokens per second
(several models or rates of one task family).

Earlier runs (``write_results``): beside RESULTS.md goes ``RESULTS.json`` (``record_path``), a
machine-readable record of every model in the file: its ``ModelInfo`` fields, the environment of the
run that measured it, and per decoded set the figures of the tables and the plot
(``DecodeResult.to_dict``; ``load_record`` reads it back, strictly: a malformed record is a
ValueError naming the file, never a silent drop). A rewrite merges by model: a model found under
exp/ replaces its earlier entry entirely (every row of it, so rows of a re-decoding that no longer
exist go), a model of the earlier record that exp/ lacks is kept with its own environment, and the
Models list says which were measured in this run and which were kept (with their run's date and git
commit). ``fresh=True`` (``make_results --fresh``) drops everything earlier. A RESULTS.md written
before the record existed (its generated part, no RESULTS.json) is migrated once
(``models_from_markdown``): the per-test-set table and the sclite details table are parsed back into
records (figures as printed there, noted as such), and the tables re-rendered from them must equal
the file's, line for line, or the rewrite stops with an error instead of losing a row.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from espnet_omni_avsr.names import DECODE_GLOB, DECODE_LAYOUT, TASKS, dump_set_name, parse_condition_label, \
    parse_decode_dir, parse_snr_dir  # noqa: F401 (dump_set_name: re-exported)
from espnet_omni_avsr.scoring.sclite import ScoringError, llm_token_rate
from espnet_omni_avsr.utils.atomic_files import atomic_write_text

PathLike = Union[str, os.PathLike]
SUMMARY_GLOB = f"*/{DECODE_GLOB}/score_wer/summary.json"
LAYOUT = DECODE_LAYOUT.replace("<exp_dir>", "exp/<model>") + "/score_wer/summary.json"
PLOT_NAME = "RESULTS_wer_vs_tokens.png"
_TRAINABLE_RE = re.compile(r"Number of trainable parameters:\s*(?P<n>[^\n(]+?)\s*\((?P<pct>[\d.]+)%\)")
_TOTAL_RE = re.compile(r"Total Number of model parameters:\s*(?P<n>[^\n]+?)\s*$", re.M)
_VERSIONED = ("torch", "espnet", "transformers", "peft", "espnet_omni_avsr")


@dataclass
class DecodeResult:
    model: str
    inference: str
    test_set: str            # clean set name, e.g. "test"
    snr: Optional[float]     # None = clean
    task: str
    summary: dict
    path: Optional[Path]     # its summary.json; None for a row recovered from an earlier RESULTS.md

    @property
    def wer(self) -> float:
        return float(self.summary["wer"])

    @property
    def tokens_per_second(self) -> Optional[float]:
        tok = self.summary.get("llm_tokens")
        return float(tok["per_second"]) if tok else None

    @property
    def row(self) -> Tuple[str, str, str]:
        return self.model, self.inference, self.task

    @property
    def order(self) -> tuple:
        return self.test_set, self.row, self.snr is not None, -(self.snr or 0)

    def to_dict(self) -> dict:
        """The record of one decoded set: what the tables and the plot show (see ``from_dict``)."""
        s = self.summary
        missing = s.get("missing_hypotheses")
        return {
            "test_set": self.test_set, "model": self.model, "inference": self.inference, "task": self.task,
            "snr": self.snr, "wer": self.wer, "tokens_per_second": self.tokens_per_second,
            "llm_tokens": s.get("llm_tokens") or None, "scorer": s.get("scorer"),
            "counts": dict(s.get("counts") or {}), "percent": dict(s.get("percent") or {}),
            "num_missing_hypotheses": _num_missing(s),
            "missing_hypotheses": list(missing) if isinstance(missing, list) else None,
            "summary_json": None if self.path is None else str(self.path),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "result") -> "DecodeResult":
        """Inverse of ``to_dict``; a missing or mistyped field is a ValueError naming it (``where``)."""
        if isinstance(d, dict) and "snr" not in d:
            raise ValueError(f"{where}: missing field 'snr' (null for the clean set)")
        snr = _field(d, "snr", _NUM, where, optional=True)
        tps = _field(d, "tokens_per_second", _NUM, where, optional=True)
        tokens = _field(d, "llm_tokens", dict, where, optional=True)
        if tokens is not None:
            _field(tokens, "per_second", _NUM, f"{where}.llm_tokens")
        elif tps is not None:
            tokens = {"per_second": float(tps)}
        summary = {
            "wer": float(_field(d, "wer", _NUM, where)), "scorer": _field(d, "scorer", str, where, optional=True),
            "counts": dict(_field(d, "counts", dict, where, optional=True) or {}),
            "percent": dict(_field(d, "percent", dict, where, optional=True) or {}),
            "llm_tokens": tokens,
        }
        missing = _field(d, "missing_hypotheses", list, where, optional=True)
        if missing is not None:
            summary["missing_hypotheses"] = missing
        else:
            summary["num_missing_hypotheses"] = _field(d, "num_missing_hypotheses", int, where, optional=True)
        path = _field(d, "summary_json", str, where, optional=True)
        return cls(
            model=_field(d, "model", str, where), inference=_field(d, "inference", str, where),
            test_set=_field(d, "test_set", str, where), snr=None if snr is None else float(snr),
            task=_field(d, "task", str, where), summary=summary, path=None if path is None else Path(path),
        )


@dataclass
class ModelInfo:
    tag: str
    config: Optional[Path] = None
    trainable: Optional[str] = None
    total: Optional[str] = None
    source: Optional[Path] = None
    results: List[DecodeResult] = field(default_factory=list)
    environment: Optional[Dict[str, str]] = None  # of the run that measured it (set by write_results)
    kept: bool = False                             # from an earlier record, not measured in this run
    provenance: Optional[str] = None               # how its figures were obtained, when not from summary.json

    def to_dict(self) -> dict:
        return {
            "tag": self.tag, "config": _str(self.config), "trainable": self.trainable, "total": self.total,
            "source": _str(self.source), "kept": self.kept, "provenance": self.provenance,
            "environment": self.environment,
            "results": [r.to_dict() for r in sorted(self.results, key=lambda r: r.order)],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "model") -> "ModelInfo":
        tag = _field(d, "tag", str, where)
        where = f"{where} ({tag})"
        env = _field(d, "environment", dict, where, optional=True)
        if env is not None and not all(isinstance(v, str) for v in env.values()):
            raise ValueError(f"{where}.environment: values must be strings")
        config, source = _field(d, "config", str, where, optional=True), _field(d, "source", str, where, optional=True)
        results = _field(d, "results", list, where)
        info = cls(
            tag=tag, config=None if config is None else Path(config),
            trainable=_field(d, "trainable", str, where, optional=True),
            total=_field(d, "total", str, where, optional=True), source=None if source is None else Path(source),
            environment=env, kept=bool(_field(d, "kept", bool, where, optional=True)),
            provenance=_field(d, "provenance", str, where, optional=True),
            results=[DecodeResult.from_dict(r, f"{where}.results[{i}]") for i, r in enumerate(results)],
        )
        other = sorted({r.model for r in info.results} - {tag})
        if other:
            raise ValueError(f"{where}: results of other models {other}")
        return info


_NUM = (int, float)


def _field(d, key: str, types, where: str, optional: bool = False):
    """``d[key]`` checked against ``types`` (a bool is a number only where bool is asked for); optional:
    absent or null is None."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d and not optional:
        raise ValueError(f"{where}: missing field {key!r}")
    v = d.get(key)
    if v is None and optional:
        return None
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise ValueError(f"{where}.{key}: expected {' or '.join(t.__name__ for t in types)}, got {v!r}")
    return v


def _str(p) -> Optional[str]:
    return None if p is None else str(p)


def _num_missing(summary: dict) -> Optional[int]:
    """Missing hypotheses of a decoded set: the list's length, or the count a recovered row carries."""
    if "num_missing_hypotheses" in summary:
        return summary["num_missing_hypotheses"]
    return len(summary.get("missing_hypotheses") or [])


def parse_condition(name: str) -> Optional[float]:
    """``snr_clean`` -> None; ``snr_-5`` -> -5.0; anything else is a ValueError."""
    return parse_snr_dir(name)


def snr_label(snr: Optional[float]) -> str:
    if snr is None:
        return "clean"
    return f"{int(snr) if float(snr).is_integer() else snr:g} dB"


def collect_results(exp_dir: PathLike, dump_dir: Optional[PathLike] = None) -> Dict[str, ModelInfo]:
    """Every summary.json following the convention, grouped by model tag. summary.json files
    elsewhere under ``exp_dir`` are reported (warning) and left out. ``dump_dir``: see the module
    docstring (tokens per second for summaries without them)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"no experiment directory {exp_dir}")
    found = sorted(exp_dir.glob(SUMMARY_GLOB))
    stray = sorted(set(exp_dir.rglob("score_wer/summary.json")) - set(found))
    if stray:
        logging.warning(
            f"{len(stray)} summary.json files do not follow {LAYOUT} and are left out: {[str(p) for p in stray[:5]]}"
        )
    models: Dict[str, ModelInfo] = {}
    for path in found:
        cond_dir = path.parent.parent
        try:
            dec = parse_decode_dir(cond_dir.as_posix())
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        model_dir = cond_dir.parents[3]
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
        if "wer" not in summary:
            raise ValueError(f"{path}: no 'wer' field (not written by espnet_omni_avsr.bin.score?)")
        if not summary.get("llm_tokens") and dump_dir is not None:
            tokens, utt2dur = cond_dir / "llm_tokens", Path(dump_dir) / dec.dump_set / "utt2dur"
            if tokens.is_file() and utt2dur.is_file():
                try:
                    summary["llm_tokens"] = llm_token_rate(tokens, utt2dur)
                except ScoringError as e:
                    raise ValueError(f"{path}: {e}") from None
            else:
                logging.warning(f"{path}: no tokens per second ({tokens} or {utt2dur} missing)")
        info = models.get(model_dir.name) or _model_info(model_dir)
        models[model_dir.name] = info
        info.results.append(DecodeResult(
            model=model_dir.name, inference=dec.inference_tag, test_set=dec.test_set, snr=dec.snr,
            task=dec.label, summary=summary, path=path,
        ))
    return models


def _model_info(model_dir: Path) -> ModelInfo:
    info = ModelInfo(tag=model_dir.name)
    if (model_dir / "config.yaml").is_file():
        info.config = model_dir / "config.yaml"
    log = model_dir / "train.log"
    if log.is_file():
        text = log.read_text(encoding="utf-8", errors="replace")
        m = list(_TRAINABLE_RE.finditer(text))
        t = list(_TOTAL_RE.finditer(text))
        if m:
            info.trainable = f"{m[-1].group('n')} ({m[-1].group('pct')}%)"
            info.source = log
        if t:
            info.total = t[-1].group("n")
    return info


def environment() -> Dict[str, str]:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for pkg in _VERSIONED:
        try:
            env[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[pkg] = "not installed"
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent)
        env["git commit"] = proc.stdout.strip() if proc.returncode == 0 else "unknown (not a git checkout)"
    except OSError:
        env["git commit"] = "unknown (git not installed)"
    return env


def _fmt(x: Optional[float], digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _snr_columns(results: List[DecodeResult]) -> List[Optional[float]]:
    snrs = sorted({r.snr for r in results if r.snr is not None}, reverse=True)
    return ([None] if any(r.snr is None for r in results) else []) + snrs


def task_family(label: str) -> str:
    """The task of a condition label (``avsr_a4v2`` -> ``avsr``); a label that is none keeps its text."""
    try:
        return parse_condition_label(label)[0]
    except ValueError:
        return label


def paper_column(label: str) -> Tuple[Tuple, str]:
    """A task label -> (sort key, column name): asr_a4 -> ASR@4, vsr_v2 -> VSR@2, avsr_a4v2 -> AVSR(4,2),
    asr_aq3 -> ASR@q3; a label without conditions is the task name (ASR). Tasks in ``names.TASKS`` order,
    then integer rates ascending, then named conditions; other labels keep their text, after the known ones."""
    try:
        task, conds = parse_condition_label(label)
    except ValueError:
        return (len(TASKS), (), label), label
    values = [conds[m] for m in TASKS[task].modalities if m in conds]
    if not values:
        name = task.upper()
    elif len(values) == 1:
        name = f"{task.upper()}@{values[0]}"
    else:
        name = f"{task.upper()}({','.join(map(str, values))})"
    key = tuple((0, v, "") if isinstance(v, int) else (1, 0, v) for v in values)
    return (list(TASKS).index(task), key, ""), name


def paper_table(results: List[DecodeResult]) -> List[str]:
    """Clean results in the papers' layout: rows model (decode), columns task@rates; WER (tokens/s)."""
    lines: List[str] = []
    clean = [r for r in results if r.snr is None]
    several = len({r.inference for r in clean}) > 1
    for test_set in sorted({r.test_set for r in clean}):
        rs = [r for r in clean if r.test_set == test_set]
        columns = sorted({paper_column(r.task) for r in rs})
        cell = {(r.model, r.inference, paper_column(r.task)[1]): r for r in rs}
        rows = []
        for model, inference in sorted({(r.model, r.inference) for r in rs}):
            values = []
            for _, name in columns:
                r = cell.get((model, inference, name))
                values.append("-" if r is None else f"{r.wer:.2f} ({_fmt(r.tokens_per_second, 1)})")
            rows.append([model + (f" ({inference})" if several else "")] + values)
        lines += [f"### {test_set}, clean: WER (%) (LLM input tokens per second)", ""]
        lines += _table(["model"] + [name for _, name in columns], rows) + [""]
    return lines


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


GENERATED = "<!-- Generated by espnet_omni_avsr.bin.make_results; edits above the hand-written marker are overwritten. -->"
PLOT_LINE = "![WER against LLM input tokens per second]({})"
MEASURED = "measured in this run"
KEPT_ENVS = "Models kept from earlier runs were measured in these environments:"


def render_markdown(models: Dict[str, ModelInfo], env: Dict[str, str], plot_name: Optional[str]) -> str:
    """The generated part of RESULTS.md. ``env``: this run's environment; a model with ``kept`` set is
    listed as kept from an earlier run, with its own ``environment``."""
    results = [r for m in models.values() for r in m.results]
    lines = _render_header(models, env) + _render_body(results)
    if results and plot_name:
        lines += [PLOT_LINE.format(plot_name), ""]
    return "\n".join(lines)


def _render_header(models: Dict[str, ModelInfo], env: Dict[str, str]) -> List[str]:
    lines = [GENERATED, "# RESULTS", ""]
    lines += ["## Environment", ""] + [f"- {k}: `{v}`" for k, v in env.items()] + [""]
    kept_envs: Dict[str, Tuple[Dict[str, str], List[str]]] = {}
    for tag, m in sorted(models.items()):
        if m.kept:
            e = m.environment or {}
            kept_envs.setdefault(json.dumps(e, sort_keys=True), (e, []))[1].append(tag)
    if kept_envs:
        lines += [KEPT_ENVS, ""]
        for e, tags in kept_envs.values():
            lines.append(f"- {', '.join(tags)}: " + (", ".join(f"{k} `{v}`" for k, v in e.items()) or "unknown"))
        lines.append("")
    lines += ["## Models", ""]
    for tag, m in sorted(models.items()):
        params = f"{m.trainable} of {m.total or '?'} (from `{m.source}`)" if m.trainable else "unknown (no train.log)"
        if m.kept:
            e = m.environment or {}
            when = (f"kept from an earlier run (date `{e.get('date', 'unknown')}`, "
                    f"git commit `{e.get('git commit', 'unknown')}`)")
            when += f"; {m.provenance}" if m.provenance else ""
        else:
            when = MEASURED
        lines.append(f"- **{tag}**: config `{m.config if m.config else 'not found'}`; "
                     f"trainable parameters {params}; {when}")
    lines.append("")
    return lines


def _render_body(results: List[DecodeResult]) -> List[str]:
    if not results:
        return [f"No scored decoding directories found (expected `{LAYOUT}`).", ""]
    lines: List[str] = []
    for test_set in sorted({r.test_set for r in results}):
        rs = [r for r in results if r.test_set == test_set]
        cols = _snr_columns(rs)
        lines += [f"## {test_set}", "",
                  "WER (%) and, in parentheses, LLM input tokens per second (audio + video tokens fed to the "
                  "LLM / seconds of speech).", ""]
        cell = {(r.row, r.snr): r for r in rs}
        rows = []
        for row in sorted({r.row for r in rs}):
            values = []
            for snr in cols:
                r = cell.get((row, snr))
                values.append("-" if r is None else f"{r.wer:.2f} ({_fmt(r.tokens_per_second, 1)})")
            rows.append(list(row) + values)
        lines += _table(["model", "decode", "task"] + [snr_label(s) for s in cols], rows) + [""]
        lines += ["<details><summary>sclite counts</summary>", ""]
        detail = []
        for r in sorted(rs, key=lambda r: r.order):
            c, p = r.summary.get("counts") or {}, r.summary.get("percent") or {}
            n_missing = _num_missing(r.summary)
            detail.append([r.model, r.inference, r.task, snr_label(r.snr), str(c.get("num_utts", "-")),
                           str(c.get("num_words", "-"))]
                          + [_fmt(p.get(k), 1) for k in ("corr", "sub", "del", "ins", "err", "sent_err")]
                          + ["-" if n_missing is None else str(n_missing), r.summary.get("scorer") or "-"])
        lines += _table(DETAILS_HEADER, detail)
        lines += ["", "</details>", ""]

    if any(r.snr is None for r in results):
        lines += ["## Models x tasks at their rates (the papers' layout)", ""] + paper_table(results)
    lines += ["## WER (%) by task and SNR", ""]
    cols = _snr_columns(results)
    several = len({(r.model, r.inference) for r in results}) > 1
    cell = {((r.test_set,) + r.row, r.snr): r for r in results}
    rows = []
    for key in sorted({(r.test_set,) + r.row for r in results}):
        test_set, model, inference, task = key
        label = f"{test_set}: {task}" + (f" ({model}, {inference})" if several else "")
        rows.append([label] + [_fmt(cell[(key, s)].wer if (key, s) in cell else None, 2) for s in cols])
    lines += _table(["set: task"] + [snr_label(s) for s in cols], rows) + [""]
    return lines


DETAILS_HEADER = ["model", "decode", "task", "SNR", "Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err",
                  "missing hyp", "scorer"]


def plot_wer_vs_tokens(results: List[DecodeResult], out_png: PathLike) -> bool:
    """Scatter WER vs tokens/s; returns False (and writes nothing) when no result has both."""
    points = [r for r in results if r.tokens_per_second is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({task_family(r.task) for r in points})
    sets = sorted({r.test_set for r in points})
    snrs = _snr_columns(points)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "os^vD<>pP*hX"
    styles = [":", "--", "-.", "-"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for ti, test_set in enumerate(sets):
        for fi, fam in enumerate(families):
            for si, snr in enumerate(snrs):
                rs = sorted((r for r in points
                             if r.test_set == test_set and task_family(r.task) == fam and r.snr == snr),
                            key=lambda r: r.tokens_per_second)
                if not rs:
                    continue
                label = (f"{test_set}: " if len(sets) > 1 else "") + f"{fam.upper()} {snr_label(snr)}"
                ax.plot([r.tokens_per_second for r in rs], [r.wer for r in rs], linestyle=styles[ti % len(styles)],
                        marker=markers[si % len(markers)], color=colours[fi % len(colours)], label=label)
                for r in rs:
                    if r.task != fam:
                        ax.annotate(r.task, (r.tokens_per_second, r.wer), fontsize=7,
                                    textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("LLM input tokens per second")
    ax.set_ylabel("WER (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(out_png), dpi=120)
    plt.close(fig)
    return True


HAND_WRITTEN = "<!-- Hand-written sections below: kept when stage 11 rewrites this file. -->"


def hand_written_tail(path: Path) -> str:
    """What follows the HAND_WRITTEN marker in an existing RESULTS.md (the marker included), or ""."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    at = text.find(HAND_WRITTEN)
    return "" if at < 0 else text[at:]


RECORD_FORMAT = "espnet_omni_avsr.results"
RECORD_VERSION = 1
MIGRATED = "figures as printed in the tables of that run's RESULTS.md (it had no RESULTS.json)"
_FIX = "fix or restore it (e.g. from git), or rerun make_results with --fresh to drop the earlier results"


def record_path(out_md: PathLike) -> Path:
    """The machine-readable record beside a RESULTS.md: RESULTS.md -> RESULTS.json."""
    return Path(out_md).with_suffix(".json")


def record_dict(models: Dict[str, ModelInfo], env: Dict[str, str]) -> dict:
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "environment": env,
            "models": [m.to_dict() for _, m in sorted(models.items())]}


def load_record(path: PathLike) -> Tuple[Dict[str, str], Dict[str, ModelInfo]]:
    """(environment of the run that wrote it, models) of a RESULTS.json; anything malformed is a
    ValueError naming the file and the entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {_FIX}") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path}: not a results record (no \"format\": \"{RECORD_FORMAT}\"); {_FIX}")
    if data.get("version") != RECORD_VERSION:
        raise ValueError(f"{path}: record version {data.get('version')!r}, this code reads {RECORD_VERSION}; {_FIX}")
    try:
        env = _field(data, "environment", dict, "record")
        entries = _field(data, "models", list, "record")
        models: Dict[str, ModelInfo] = {}
        for i, d in enumerate(entries):
            m = ModelInfo.from_dict(d, f"models[{i}]")
            if m.tag in models:
                raise ValueError(f"models[{i}]: model {m.tag!r} twice")
            models[m.tag] = m
    except ValueError as e:
        raise ValueError(f"{path}: malformed results record: {e}; {_FIX}") from None
    return env, models


_ENV_LINE = re.compile(r"^- (?P<k>[^:`]+): `(?P<v>[^`]*)`$")
_MODEL_LINE = re.compile(r"^- \*\*(?P<tag>[^*]+)\*\*: config `(?P<config>[^`]*)`; trainable parameters (?P<params>.+?)"
                         rf"(?:; {MEASURED})?$")
_PARAMS = re.compile(r"^(?P<trainable>.+?) of (?P<total>.+) \(from `(?P<source>[^`]*)`\)$")
_CELL = re.compile(r"^(?P<wer>-?\d+(?:\.\d+)?) \((?P<tok>-|-?\d+(?:\.\d+)?)\)$")
_SNR_LABEL = re.compile(r"^(?P<snr>-?\d+(?:\.\d+)?) dB$")
_INT = re.compile(r"^\d+$")


def models_from_markdown(path: PathLike) -> Optional[Dict[str, ModelInfo]]:
    """The models and rows of the generated part of a RESULTS.md written before RESULTS.json existed
    (the migration; see the module docstring), each with the environment of that file, ``kept`` set and
    ``provenance`` ``MIGRATED``. None when the file has no generated part (it does not start with
    ``GENERATED``). What cannot be read back exactly is a ValueError naming the file: the table
    ("| model | decode | task | clean | ...") and the sclite details table of each test set must hold
    the same decoded sets, and the tables re-rendered from the rows must equal the file's."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    at = text.find(HAND_WRITTEN)
    generated = text if at < 0 else text[:at]
    if not generated.startswith(GENERATED):
        return None
    lines = generated.rstrip("\n").split("\n")

    def fail(msg: str, i: Optional[int] = None):
        where = f"{path}" + ("" if i is None else f", line {i + 1}")
        raise ValueError(f"{where}: {msg}; its results cannot be carried over without {record_path(path).name} "
                         "(restore that file, or rerun make_results with --fresh to drop them)")

    def expect(i: int, want: str) -> int:
        if i >= len(lines) or lines[i] != want:
            fail(f"expected {want!r}, found {lines[i] if i < len(lines) else 'the end'!r}", i)
        return i + 1

    i = expect(expect(expect(expect(1, "# RESULTS"), ""), "## Environment"), "")
    env: Dict[str, str] = {}
    while i < len(lines) and lines[i]:
        m = _ENV_LINE.match(lines[i])
        if not m:
            fail(f"not an environment line: {lines[i]!r}", i)
        env[m["k"]] = m["v"]
        i += 1
    if lines[i + 1:i + 2] == [KEPT_ENVS]:
        fail("it lists models kept from earlier runs, whose environments only the record holds", i + 1)
    i = expect(expect(i + 1, "## Models"), "")
    models: Dict[str, ModelInfo] = {}
    while i < len(lines) and lines[i]:
        m = _MODEL_LINE.match(lines[i])
        if not m or "; kept from an earlier run" in lines[i]:
            fail(f"not a Models line of a single run: {lines[i]!r}", i)
        info = ModelInfo(tag=m["tag"], config=None if m["config"] == "not found" else Path(m["config"]),
                         environment=dict(env), kept=True, provenance=MIGRATED)
        if m["params"] != "unknown (no train.log)":
            p = _PARAMS.match(m["params"])
            if not p:
                fail(f"unreadable trainable parameters {m['params']!r}", i)
            info.trainable, info.source = p["trainable"], Path(p["source"])
            info.total = None if p["total"] == "?" else p["total"]
        models[info.tag] = info
        i += 1
    body_at = i + 1
    body = lines[body_at:]
    if body and body[-1].startswith(PLOT_LINE.format("")[:-1]):
        body = body[:-1]

    def snr_of(label: str, j: int) -> Optional[float]:
        if label == "clean":
            return None
        m = _SNR_LABEL.match(label)
        if not m:
            fail(f"unreadable SNR {label!r}", body_at + j)
        return float(m["snr"])

    def cells(line: str) -> List[str]:
        return [c.strip() for c in line.strip()[1:-1].split("|")]

    wer: Dict[tuple, Tuple[float, Optional[float], int]] = {}
    details: Dict[tuple, Tuple[List[str], int]] = {}
    heading, j = None, 0
    while j < len(body):
        line = body[j]
        if line.startswith("## "):
            heading = line[3:]
        if not line.startswith("| model | decode | task |"):
            j += 1
            continue
        if heading is None:
            fail("a table before any test set heading", body_at + j)
        header, j = cells(line), j + 2
        is_details = header == DETAILS_HEADER
        snrs = None if is_details else [snr_of(h, j - 2) for h in header[3:]]
        while j < len(body) and body[j].startswith("|"):
            row = cells(body[j])
            if len(row) != len(header):
                fail(f"{len(row)} cells under a header of {len(header)}", body_at + j)
            if is_details:
                key = (heading,) + tuple(row[:3]) + (snr_of(row[3], j),)
                if key in details:
                    fail(f"decoded set {key} twice in the sclite table", body_at + j)
                details[key] = (row, j)
            else:
                for snr, value in zip(snrs, row[3:]):
                    if value == "-":
                        continue
                    m = _CELL.match(value)
                    if not m:
                        fail(f"unreadable cell {value!r}", body_at + j)
                    key = (heading,) + tuple(row[:3]) + (snr,)
                    if key in wer:
                        fail(f"decoded set {key} twice", body_at + j)
                    wer[key] = (float(m["wer"]), None if m["tok"] == "-" else float(m["tok"]), j)
            j += 1
    for only, other, name in ((set(wer) - set(details), "sclite table", "WER table"),
                              (set(details) - set(wer), "WER table", "sclite table")):
        if only:
            key = sorted(only, key=str)[0]
            fail(f"{len(only)} decoded sets of the {name} are not in the {other}, e.g. {key}")

    def num(value: str, j: int, kind):
        if value == "-":
            return None
        try:
            if kind is int and not _INT.match(value):
                raise ValueError(value)
            return kind(value)
        except ValueError:
            fail(f"unreadable number {value!r}", body_at + j)

    for key, (w, tok, _) in sorted(wer.items(), key=lambda kv: kv[1][2]):
        test_set, model, inference, task, snr = key
        row, j = details[key]
        if model not in models:
            fail(f"model {model!r} has rows but is not in the Models list", body_at + j)
        counts = {k: num(v, j, int) for k, v in zip(("num_utts", "num_words"), row[4:6])}
        percent = {k: num(v, j, float) for k, v in zip(("corr", "sub", "del", "ins", "err", "sent_err"), row[6:12])}
        models[model].results.append(DecodeResult(
            model=model, inference=inference, test_set=test_set, snr=snr, task=task, path=None, summary={
                "wer": w, "llm_tokens": None if tok is None else {"per_second": tok},
                "counts": {k: v for k, v in counts.items() if v is not None},
                "percent": {k: v for k, v in percent.items() if v is not None},
                "num_missing_hypotheses": num(row[12], j, int), "scorer": None if row[13] == "-" else row[13],
            }))
    again = "\n".join(_render_body([r for m in models.values() for r in m.results])).rstrip("\n").split("\n")
    want = "\n".join(body).rstrip("\n").split("\n")
    if again != want:
        k = next((k for k, (a, b) in enumerate(zip(again, want)) if a != b), min(len(again), len(want)))
        a, b = (again[k] if k < len(again) else "the end"), (want[k] if k < len(want) else "the end")
        fail(f"the tables re-rendered from the rows read back differ: {a!r} instead of {b!r}", body_at + k)
    return models


def earlier_models(out_md: PathLike) -> Tuple[Dict[str, ModelInfo], Optional[str]]:
    """The models an earlier run wrote beside ``out_md`` (all ``kept``) and where they came from:
    its RESULTS.json, else (the migration) the generated tables of ``out_md``, else nothing."""
    out_md = Path(out_md)
    record = record_path(out_md)
    if record.is_file():
        models = load_record(record)[1]
        origin = str(record)
    elif out_md.is_file():
        models = models_from_markdown(out_md)
        if models is None:
            logging.warning(f"{out_md} has no generated part (it does not start with the make_results header): "
                            "no earlier results to keep; the part above the hand-written marker is replaced")
            return {}, None
        origin = f"the tables of {out_md} (no {record.name})"
    else:
        return {}, None
    for m in models.values():
        m.kept = True
    return models, origin


def write_results(exp_dir: PathLike, out_md: PathLike, plot: bool = True,
                  dump_dir: Optional[PathLike] = None, fresh: bool = False) -> dict:
    """Collect, merge with the earlier record (unless ``fresh``), render and write RESULTS.md, the
    record beside it (``record_path``) and the plot. A model found under ``exp_dir`` replaces its
    earlier entry entirely; earlier models that ``exp_dir`` lacks are kept. Returns what was written."""
    measured = collect_results(exp_dir, dump_dir)
    out_md = Path(out_md)
    env = environment()
    earlier, origin = ({}, None) if fresh else earlier_models(out_md)
    for m in measured.values():
        m.environment, m.kept, m.provenance = env, False, None
    kept = {tag: m for tag, m in earlier.items() if tag not in measured}
    replaced = sorted(set(earlier) & set(measured))
    models = dict(sorted({**kept, **measured}.items()))
    if origin:
        logging.info(f"earlier results from {origin}: keeping {sorted(kept)}, replacing {replaced}")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    results = [r for m in models.values() for r in m.results]
    png = out_md.parent / PLOT_NAME
    has_plot = plot and plot_wer_vs_tokens(results, png)
    if not has_plot and plot:
        logging.info("no decoded set has both WER and tokens per second: no plot")
    generated = render_markdown(models, env, PLOT_NAME if has_plot else None)
    tail = hand_written_tail(out_md)
    record = record_path(out_md)
    atomic_write_text(record, json.dumps(record_dict(models, env), indent=1) + "\n")
    atomic_write_text(out_md, generated.rstrip("\n") + "\n\n" + tail if tail else generated)
    n_measured = sum(len(m.results) for m in measured.values())
    logging.info(f"{n_measured} scored sets from {len(measured)} models measured, {len(results) - n_measured} "
                 f"from {len(kept)} kept -> {out_md}, {record}")
    return {"results_md": str(out_md), "results_json": str(record), "plot": str(png) if has_plot else None,
            "num_results": len(results), "measured_models": sorted(measured), "kept_models": sorted(kept),
            "replaced_models": replaced}
