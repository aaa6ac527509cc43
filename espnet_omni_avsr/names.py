"""The names shared by the recipe, the data loader, the model and the scoring: modalities, tasks,
data arguments, noisy test sets, decoding directories and decoding-condition labels.

Pure Python (nothing heavy is imported at module level), so that shell stages ask it cheaply:
``python -m espnet_omni_avsr.names --help`` lists the subcommands.

Decoding-condition labels (``condition_label`` / ``parse_condition_label``)::

    <task>_<part><part>...    one part per modality of the task, in the task's order
    <part> = <tag><condition>

A condition is either a non-negative integer (a compression rate), written as its decimal digits
without leading zeros, or a name of lowercase letters followed by digits (``q3``, a query budget),
written as it is. ``asr_a4``, ``vsr_v2``, ``avsr_a4v2``, ``avsr_aq3v2``. Tags are lowercase letters
only and every condition ends in a digit, so the parts split at each digit-to-letter boundary, the
task fixes which tag starts each part, and a label parses back to exactly one (task, conditions).
The bare task name (``avsr``) is the label of a decoding at the model's default conditions, and of
a task that reads the early-fused ``audiovisual`` stream (``FUSED``; MMS-LLaMA), which has one
condition.

Noisy test sets and decoding directories::

    <dump_dir>/<test_set>_snr<X>                                       noisy copy of a test set
    <exp_dir>/decode_<inference_tag>/<test_set>/<label>/snr_<clean|X>  one decoded set

``X`` is an SNR in dB: an integer as such (``-5``), otherwise ``format(x, "g")`` (``2.5``).

Adding a modality is one ``MODALITIES`` entry (and the tasks that read it in ``TASKS``).
"""
from __future__ import annotations

import argparse
import glob
import logging
import numbers
import os
import posixpath
import re
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

Condition = Union[int, str]


@dataclass(frozen=True)
class Modality:
    """One input stream: how it is stored, loaded, batched, labelled and delimited in the prompt.

    Attributes:
        name: the modality's name in configs and APIs (``audio``).
        data_name: its key in ESPnet batches and data arguments (``speech``; lengths ``speech_lengths``).
        scp: its list file in a Kaldi-style set dir (``wav.scp``).
        loader: ESPnet's loader type for that file (``audio16k``: data/espnet_audio_type.py).
        tag: its letters in decoding-condition labels (``a`` in ``avsr_a4v2``).
        open_token, close_token: the LLM tokens around its block in the prompt (``<audio>``).
        noisy: the noisy test sets (prep/noise.py) rewrite this stream; a task without such a
            stream is decoded clean only.
    """

    name: str
    data_name: str
    scp: str
    loader: str
    tag: str
    open_token: str
    close_token: str
    noisy: bool = False

    def __post_init__(self):
        if not re.fullmatch(r"[a-z]+", self.tag):
            raise ValueError(f"modality {self.name!r}: tag {self.tag!r} must be lowercase letters only")

    @property
    def lengths_name(self) -> str:
        """The batch key of its lengths (ESPnet's collate convention)."""
        return f"{self.data_name}_lengths"

    @property
    def delimiters(self) -> Tuple[str, str]:
        return self.open_token, self.close_token


@dataclass(frozen=True)
class Task:
    """A recognition task: the modalities it reads, in prompt order, and its default instruction."""

    name: str
    modalities: Tuple[str, ...]
    instruction: str

    def __post_init__(self):
        if not re.fullmatch(r"[a-z]+", self.name):
            raise ValueError(f"task name {self.name!r} must be lowercase letters only (labels start with it)")
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"task {self.name!r}: modalities {list(self.modalities)} must be some of "
                             f"{list(MODALITIES)}")


MODALITIES: Dict[str, Modality] = {m.name: m for m in (
    Modality("audio", data_name="speech", scp="wav.scp", loader="audio16k", tag="a",
             open_token="<audio>", close_token="</audio>", noisy=True),
    Modality("video", data_name="video", scp="video.scp", loader="video", tag="v",
             open_token="<video>", close_token="</video>"),
)}

TASKS: Dict[str, Task] = {t.name: t for t in (
    Task("asr", ("audio",), "Transcribe speech to text."),
    Task("vsr", ("video",), "Transcribe video to text."),
    Task("avsr", ("audio", "video"), "Transcribe speech and video to text."),
)}


# The early-fused audio + video stream (MMS-LLaMA, models/fused_branch.py): not a stored input but one
# prompt block made from both, read by a task whose modalities it fuses (AVSR) in place of theirs.
FUSED = "audiovisual"
FUSED_INPUTS = ("audio", "video")


def _check_distinct(modalities: Mapping[str, Modality]) -> None:
    """Batch keys, files, tags and tokens must tell the modalities apart."""
    for field in ("data_name", "scp", "tag", "open_token", "close_token"):
        values = [getattr(m, field) for m in modalities.values()]
        if len(set(values)) != len(values):
            raise ValueError(f"MODALITIES: two modalities share a {field} ({values})")


_check_distinct(MODALITIES)

TASK_MODALITIES: Dict[str, Tuple[str, ...]] = {t.name: t.modalities for t in TASKS.values()}


def modalities_of(tasks: Iterable[str]) -> List[str]:
    """The modalities that any of `tasks` reads, sorted (unknown task names are skipped)."""
    return sorted({m for t in tasks if t in TASK_MODALITIES for m in TASK_MODALITIES[t]})
DEFAULT_INSTRUCTIONS: Dict[str, str] = {t.name: t.instruction for t in TASKS.values()}


@dataclass(frozen=True)
class Transcript:
    """The reference transcript of a set dir: its file, batch key and ESPnet loader type."""

    file: str = "text"
    data_name: str = "text"
    loader: str = "text"


TEXT = Transcript()

CLEAN = "clean"
NOISY_SUFFIX = "_snr"
SNR_DIR_PREFIX = "snr_"
DECODE_PREFIX = "decode_"
DECODE_LAYOUT = "<exp_dir>/decode_<inference_tag>/<test_set>/<label>/snr_<clean|X>"
DECODE_GLOB = "decode_*/*/*/snr_*"  # under a model's exp dir

_SNR_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_INT_RE = re.compile(r"0|[1-9][0-9]*")
_NAME_RE = re.compile(r"[a-z]+[0-9]+")
_PART_RE = re.compile(r"[a-z]*[0-9]+")


def modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}: choose from {list(MODALITIES)}")
    return MODALITIES[name]


def task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose from {list(TASKS)}")
    return TASKS[name]


# --------------------------------------------------------------------------- data arguments


def data_triples(set_dir: str, modalities: Optional[Sequence[str]] = None,
                 text: bool = False) -> List[Tuple[str, str, str]]:
    """``(path, data name, loader type)`` of a set dir's inputs, ESPnet's
    ``data_path_and_name_and_type``: the modalities given (default: all), then the transcript."""
    mods = [modality(m) for m in (list(MODALITIES) if modalities is None else modalities)]
    out = [(posixpath.join(set_dir, m.scp), m.data_name, m.loader) for m in mods]
    if text:
        out.append((posixpath.join(set_dir, TEXT.file), TEXT.data_name, TEXT.loader))
    return out


def data_args(set_dir: str, modalities: Optional[Sequence[str]] = None, prefix: str = "",
              text: bool = False) -> List[str]:
    """``--<prefix>_data_path_and_name_and_type <dir>/wav.scp,speech,audio16k ...`` as an argv list
    (no prefix: ``--data_path_and_name_and_type``, the option of decoding)."""
    option = f"--{prefix}_data_path_and_name_and_type" if prefix else "--data_path_and_name_and_type"
    return [a for t in data_triples(set_dir, modalities, text) for a in (option, ",".join(t))]


# --------------------------------------------------------------------------- SNRs and noisy sets


def format_snr(snr: float) -> str:
    """-5 -> ``-5``; 2.5 -> ``2.5`` (the ``X`` of ``_snr<X>`` and ``snr_<X>``)."""
    if isinstance(snr, bool) or not isinstance(snr, (numbers.Real, str)):
        raise ValueError(f"SNR {snr!r} is not a number")
    try:
        value = float(snr)
    except ValueError:
        raise ValueError(f"SNR {snr!r} is not a number (dB)") from None
    text = str(int(value)) if value.is_integer() else f"{value:g}"
    if not _SNR_RE.fullmatch(text):
        raise ValueError(f"SNR {snr!r} has no plain decimal name (got {text!r})")
    return text


def parse_snr(text: str) -> float:
    """``-5`` -> -5.0; the inverse of ``format_snr``."""
    if not _SNR_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not an SNR (a decimal number of dB, e.g. -5 or 2.5)")
    return float(text)


def noisy_set_name(src_name: str, snr: float) -> str:
    """``test`` + -5 -> ``test_snr-5``: the noisy copy of a set (written by prep/noise.py)."""
    return f"{src_name}{NOISY_SUFFIX}{format_snr(snr)}"


def parse_noisy_set_name(name: str) -> Tuple[str, float]:
    """``test_snr-5`` -> ("test", -5.0); a name that is no noisy set's is a ValueError."""
    src, sep, snr = name.rpartition(NOISY_SUFFIX)
    if not sep or not src or not _SNR_RE.fullmatch(snr):
        raise ValueError(f"{name!r} is not a noisy set name (<set>{NOISY_SUFFIX}<SNR>, e.g. test_snr-5)")
    return src, float(snr)


def dump_set_name(test_set: str, snr: Optional[float]) -> str:
    """The set decoded for a condition: ``test`` (clean, snr None) or ``test_snr-5``."""
    return test_set if snr is None else noisy_set_name(test_set, snr)


# --------------------------------------------------------------------------- decoding directories


def snr_dir(snr: Optional[float]) -> str:
    """None -> ``snr_clean``; -5 -> ``snr_-5``."""
    return SNR_DIR_PREFIX + (CLEAN if snr is None else format_snr(snr))


def parse_snr_dir(name: str) -> Optional[float]:
    """``snr_clean`` -> None; ``snr_-5`` -> -5.0; anything else is a ValueError."""
    cond = name[len(SNR_DIR_PREFIX):] if name.startswith(SNR_DIR_PREFIX) else None
    if cond == CLEAN:
        return None
    if cond is None or not _SNR_RE.fullmatch(cond):
        raise ValueError(f"decoding condition dir {name!r} is neither {SNR_DIR_PREFIX}{CLEAN} nor "
                         f"{SNR_DIR_PREFIX}<number>")
    return float(cond)


def parse_snr_condition(text: str) -> Optional[float]:
    """``clean`` -> None; ``-5`` -> -5.0 (an SNR as the recipe's ``--snrs`` give it)."""
    return None if text == CLEAN else parse_snr(text)


@dataclass(frozen=True)
class DecodeDir:
    """The parts of ``<exp_dir>/decode_<inference_tag>/<test_set>/<label>/snr_<clean|X>``."""

    exp_dir: str
    inference_tag: str
    test_set: str
    label: str
    snr: Optional[float]

    @property
    def path(self) -> str:
        return decode_dir(self.exp_dir, self.inference_tag, self.test_set, self.label, self.snr)

    @property
    def dump_set(self) -> str:
        """The set whose reference text scores it (``test`` or ``test_snr-5``)."""
        return dump_set_name(self.test_set, self.snr)


def decode_dir(exp_dir: str, inference_tag: str, test_set: str, label: str, snr: Optional[float] = None) -> str:
    """Where one test set x condition label x SNR of a model is decoded (``DECODE_LAYOUT``)."""
    for what, value in (("inference tag", inference_tag), ("test set", test_set), ("label", label)):
        if not value or "/" in value:
            raise ValueError(f"{what} {value!r} must be a non-empty name without '/'")
    return posixpath.join(exp_dir, DECODE_PREFIX + inference_tag, test_set, label, snr_dir(snr))


def parse_decode_dir(path: str) -> DecodeDir:
    """The inverse of ``decode_dir``; a path not in ``DECODE_LAYOUT`` is a ValueError naming it."""
    parts = path.rstrip("/").split("/")
    if len(parts) < 5 or not parts[-4].startswith(DECODE_PREFIX) or len(parts[-4]) == len(DECODE_PREFIX):
        raise ValueError(f"{path!r} is not a decoding directory ({DECODE_LAYOUT})")
    try:
        snr = parse_snr_dir(parts[-1])
    except ValueError as e:
        raise ValueError(f"{path!r}: {e}") from None
    return DecodeDir("/".join(parts[:-4]), parts[-4][len(DECODE_PREFIX):], parts[-3], parts[-2], snr)


def find_decode_dirs(exp_dir: str, inference_tag: str) -> List[Tuple[str, DecodeDir]]:
    """The existing decoding directories of one model and decoding config, sorted: (path as found,
    its parts)."""
    pattern = posixpath.join(glob.escape(exp_dir), glob.escape(DECODE_PREFIX + inference_tag), "*", "*",
                             SNR_DIR_PREFIX + "*")
    out = []
    for path in sorted(p for p in glob.glob(pattern) if os.path.isdir(p)):
        try:
            out.append((path, parse_decode_dir(path)))
        except ValueError as e:  # e.g. snr_<not a number>: not a decoding directory of ours
            logging.warning(f"skipping {path}: {e}")
    return out


# --------------------------------------------------------------------------- condition labels


def _condition_text(task_name: str, mod: str, cond) -> str:
    if isinstance(cond, numbers.Integral) and not isinstance(cond, bool):
        if cond >= 0:
            return str(int(cond))
    elif isinstance(cond, str) and (_NAME_RE.fullmatch(cond) or _INT_RE.fullmatch(cond)):
        return cond
    raise ValueError(f"{task_name}: {mod} condition {cond!r} is neither a non-negative integer (a rate) nor "
                     "a name of lowercase letters followed by digits (e.g. 'q3')")


def condition_label(task_name: str, conditions: Mapping[str, Condition]) -> str:
    """``asr_a4``, ``vsr_v2``, ``avsr_a4v2``, ``avsr_aq3v2``: the task and the condition of each of its
    modalities (the rule is in the module docstring). Empty ``conditions``: the bare task name.
    Conditions of modalities the task does not read are ignored."""
    t = task(task_name)
    if FUSED in conditions:  # the fused stream has one condition: the bare task names it
        return t.name
    for m in conditions:
        modality(m)
    if not conditions:
        return t.name
    missing = [m for m in t.modalities if m not in conditions]
    if missing:
        raise ValueError(f"{t.name}: no condition for {missing} (got {dict(conditions)})")
    return f"{t.name}_" + "".join(MODALITIES[m].tag + _condition_text(t.name, m, conditions[m])
                                  for m in t.modalities)


def parse_condition_label(label: str) -> Tuple[str, Dict[str, Condition]]:
    """``avsr_a4v2`` -> ("avsr", {"audio": 4, "video": 2}); ``asr_aq3`` -> ("asr", {"audio": "q3"});
    ``avsr`` -> ("avsr", {}). Integers come back as int, names as str. Anything else is a ValueError
    naming the label."""
    name, sep, rest = label.partition("_")
    if name not in TASKS:
        raise ValueError(f"condition label {label!r}: {name!r} is not a task ({list(TASKS)})")
    out: Dict[str, Condition] = {}
    if not sep:
        return name, out
    pos = 0
    for m in TASKS[name].modalities:
        tag = MODALITIES[m].tag
        match = _PART_RE.match(rest, pos + len(tag)) if rest.startswith(tag, pos) else None
        if match is None:
            raise ValueError(f"condition label {label!r}: expected '{tag}<condition>' for {m} at "
                             f"{rest[pos:]!r} ({name} reads {list(TASKS[name].modalities)})")
        text = match.group()
        if text[0] == "0" and not _INT_RE.fullmatch(text):
            raise ValueError(f"condition label {label!r}: {m} rate {text!r} has a leading zero")
        out[m] = int(text) if _INT_RE.fullmatch(text) else text
        pos = match.end()
    if pos != len(rest):
        raise ValueError(f"condition label {label!r}: unexpected {rest[pos:]!r} after the conditions of "
                         f"{list(TASKS[name].modalities)}")
    return name, out


def parse_conditions(text: str) -> Dict[str, Condition]:
    """The conditions part of a condition label, without the task: ``a16v5`` -> {"audio": 16,
    "video": 5}, ``v2`` -> {"video": 2}; a whole label (``avsr_a16v5``) is taken too. What the tools
    that pick conditions (``--rates``) read. Anything else is a ValueError naming the text."""
    rest = text.split("_", 1)[1] if "_" in text else text
    out: Dict[str, Condition] = {}
    pos = 0
    for m in MODALITIES:
        tag = MODALITIES[m].tag
        if not rest.startswith(tag, pos):
            continue
        match = _PART_RE.match(rest, pos + len(tag))
        if match is None:
            break
        part = match.group()
        out[m] = int(part) if _INT_RE.fullmatch(part) else part
        pos = match.end()
    if not out or pos != len(rest):
        tags = ", ".join(f"{MODALITIES[m].tag} = {m}" for m in MODALITIES)
        raise ValueError(f"{text!r}: expected conditions such as a16v5 or v2 (modality tags: {tags})")
    return out


def condition_columns(conditions: Mapping[str, Condition], missing: str = "-") -> List[str]:
    """One field per modality, in ``MODALITIES`` order (``missing`` where a modality has none): the
    columns of the shell's condition listings and of decoding jobs."""
    return [str(conditions[m]) if m in conditions else missing for m in MODALITIES]


# --------------------------------------------------------------------------- decoding jobs


def decode_jobs(conditions: Iterable[Mapping], test_sets: Sequence[str], snrs: Sequence[float], dump_dir: str,
                exp_dir: str, inference_tag: str) -> List[List[str]]:
    """The rows of avsr_inference's ``--jobs`` file: ``task, data dir, output dir`` and one condition
    column per modality, for every condition (``{"task", "label", "rates"}``, utils/rates.py) x
    test set x (clean, then ``snrs``). Tasks that read no noisy stream are decoded clean only."""
    rows = []
    for c in conditions:
        noisy = any(MODALITIES[m].noisy for m in task(c["task"]).modalities)
        for test_set in test_sets:
            for snr in [None] + (list(snrs) if noisy else []):
                rows.append([c["task"], posixpath.join(dump_dir, dump_set_name(test_set, snr)),
                             decode_dir(exp_dir, inference_tag, test_set, c["label"], snr)]
                            + condition_columns(c["rates"]))
    return rows


# --------------------------------------------------------------------------- command line


def _cli_condition(text: str) -> Condition:
    return int(text) if _INT_RE.fullmatch(text) else text


def _cli_snr(text: str) -> Optional[float]:
    try:
        return parse_snr_condition(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m espnet_omni_avsr.names", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("data-args", help="the --<prefix>_data_path_and_name_and_type options of a set dir")
    s.add_argument("--dir", required=True, help="the set dir (dump/train)")
    s.add_argument("--prefix", default="", help="train, valid, or none for decoding")
    s.add_argument("--modalities", nargs="+", default=None, help=f"default: all ({' '.join(MODALITIES)})")
    s.add_argument("--no_text", action="store_true", help="leave out the transcript (text,text,text)")

    s = sub.add_parser("noisy-set", help="the name of a noisy copy of a set: test -5 -> test_snr-5")
    s.add_argument("set_name")
    s.add_argument("snr", type=float)

    s = sub.add_parser("modality", help="one field of a modality, e.g. 'modality audio scp' -> wav.scp")
    s.add_argument("name", choices=list(MODALITIES))
    s.add_argument("field", choices=["name", "data_name", "lengths_name", "scp", "loader", "tag", "open_token",
                                     "close_token"])

    s = sub.add_parser("label", help="a decoding-condition label: avsr 4 2 -> avsr_a4v2")
    s.add_argument("task", choices=list(TASKS))
    s.add_argument("conditions", nargs="*", help="one per modality of the task, in its order (none: the bare task)")

    s = sub.add_parser("parse-label", help="task and one condition column per modality ('-': none), tab-separated")
    s.add_argument("label")

    s = sub.add_parser("decode-dir", help=f"one decoding directory: {DECODE_LAYOUT}")
    s.add_argument("--exp_dir", required=True)
    s.add_argument("--inference_tag", required=True)
    s.add_argument("--test_set", required=True)
    s.add_argument("--label", required=True)
    s.add_argument("--snr", type=_cli_snr, default=None, help="an SNR in dB, or clean (default)")

    s = sub.add_parser("decode-jobs", help="avsr_inference's jobs file (stage 10) on stdout")
    s.add_argument("--config", required=True, help="the trained model's config.yaml")
    s.add_argument("--tasks", default="", help="space-separated; default: the config's tasks")
    s.add_argument("--test_sets", required=True, help="space-separated clean test set names")
    s.add_argument("--snrs", default="", help="space-separated SNRs in dB of the noisy copies")
    s.add_argument("--dump_dir", required=True)
    s.add_argument("--exp_dir", required=True, help="the model's exp dir")
    s.add_argument("--inference_tag", required=True)

    s = sub.add_parser("decode-dirs", help="existing decoding dirs and their reference set dirs, tab-separated "
                                           "(stage 11); none is an error")
    s.add_argument("--exp_dir", required=True, help="the model's exp dir")
    s.add_argument("--inference_tag", required=True)
    s.add_argument("--dump_dir", required=True)
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        lines = _run(args)
    except (ValueError, OSError) as e:
        print(f"espnet_omni_avsr.names {args.command}: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def _run(args) -> List[str]:
    if args.command == "data-args":
        return [" ".join(data_args(args.dir, args.modalities, args.prefix, text=not args.no_text))]
    if args.command == "noisy-set":
        return [noisy_set_name(args.set_name, args.snr)]
    if args.command == "modality":
        return [str(getattr(MODALITIES[args.name], args.field))]
    if args.command == "label":
        mods = TASKS[args.task].modalities
        if args.conditions and len(args.conditions) != len(mods):
            raise ValueError(f"{args.task} needs {len(mods)} conditions ({' '.join(mods)}), got {args.conditions}")
        return [condition_label(args.task, dict(zip(mods, map(_cli_condition, args.conditions))))]
    if args.command == "parse-label":
        name, conds = parse_condition_label(args.label)
        return ["\t".join([name] + condition_columns(conds))]
    if args.command == "decode-dir":
        return [decode_dir(args.exp_dir, args.inference_tag, args.test_set, args.label, args.snr)]
    if args.command == "decode-jobs":
        from espnet_omni_avsr.utils.config_stack import load_config
        from espnet_omni_avsr.utils.rates import conditions

        config = load_config(args.config)
        snrs = [parse_snr(s) for s in args.snrs.split()]
        rows = decode_jobs(conditions(config, args.tasks.split() or None), args.test_sets.split(), snrs,
                           args.dump_dir, args.exp_dir, args.inference_tag)
        return ["\t".join(r) for r in rows]
    if args.command == "decode-dirs":
        found = find_decode_dirs(args.exp_dir, args.inference_tag)
        if not found:
            raise ValueError(f"no decoding directories under {args.exp_dir}/{DECODE_PREFIX}{args.inference_tag} "
                             f"(expected {DECODE_LAYOUT})")
        return [f"{path}\t{posixpath.join(args.dump_dir, d.dump_set)}" for path, d in found]
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
