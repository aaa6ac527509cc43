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
    path: Path

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


@dataclass
class ModelInfo:
    tag: str
    config: Optional[Path] = None
    trainable: Optional[str] = None
    total: Optional[str] = None
    source: Optional[Path] = None
    results: List[DecodeResult] = field(default_factory=list)


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


def render_markdown(models: Dict[str, ModelInfo], env: Dict[str, str], plot_name: Optional[str]) -> str:
    results = [r for m in models.values() for r in m.results]
    lines = ["<!-- Generated by espnet_omni_avsr.bin.make_results; edits above the hand-written marker are overwritten. -->", "# RESULTS", ""]
    lines += ["## Environment", ""] + [f"- {k}: `{v}`" for k, v in env.items()] + [""]
    lines += ["## Models", ""]
    for tag, m in sorted(models.items()):
        params = f"{m.trainable} of {m.total or '?'} (from `{m.source}`)" if m.trainable else "unknown (no train.log)"
        lines.append(f"- **{tag}**: config `{m.config if m.config else 'not found'}`; trainable parameters {params}")
    lines.append("")
    if not results:
        lines += [f"No scored decoding directories found (expected `{LAYOUT}`).", ""]
        return "\n".join(lines)

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
        for r in sorted(rs, key=lambda r: (r.row, r.snr is not None, -(r.snr or 0))):
            c, p = r.summary.get("counts", {}), r.summary.get("percent", {})
            detail.append([r.model, r.inference, r.task, snr_label(r.snr), str(c.get("num_utts", "-")),
                           str(c.get("num_words", "-"))]
                          + [_fmt(p.get(k), 1) for k in ("corr", "sub", "del", "ins", "err", "sent_err")]
                          + [str(len(r.summary.get("missing_hypotheses", []))), r.summary.get("scorer", "-")])
        lines += _table(["model", "decode", "task", "SNR", "Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err",
                         "S.Err", "missing hyp", "scorer"], detail)
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
    if plot_name:
        lines += [f"![WER against LLM input tokens per second]({plot_name})", ""]
    return "\n".join(lines)


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


def write_results(exp_dir: PathLike, out_md: PathLike, plot: bool = True,
                  dump_dir: Optional[PathLike] = None) -> dict:
    """Collect, render and write RESULTS.md (and the plot beside it). Returns what was written."""
    models = collect_results(exp_dir, dump_dir)
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    results = [r for m in models.values() for r in m.results]
    png = out_md.parent / PLOT_NAME
    has_plot = plot and plot_wer_vs_tokens(results, png)
    if not has_plot and plot:
        logging.info("no decoded set has both WER and tokens per second: no plot")
    generated = render_markdown(models, environment(), PLOT_NAME if has_plot else None)
    tail = hand_written_tail(out_md)
    out_md.write_text(generated.rstrip("\n") + "\n\n" + tail if tail else generated, encoding="utf-8")
    logging.info(f"{len(results)} scored sets from {len(models)} models -> {out_md}")
    return {"results_md": str(out_md), "plot": str(png) if has_plot else None, "num_results": len(results)}
