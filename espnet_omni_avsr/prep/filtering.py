"""The filtering stage: drop what the earlier stages rejected and what falls outside the length limits.

An utterance of ``dump/<set>`` is dropped when

1. it has a line in ``data/<set>/bad_items.tsv`` or ``dump/<set>/bad_items.tsv`` (all of its
   reasons are reported);
2. it is missing from one of the per-utterance lists (``fix_dir``'s rule) without a bad-item
   line explaining why;
3. its duration (``utt2dur``; ``utt2num_frames`` / fps where there is no utt2dur) is below
   ``min_duration`` or above ``max_duration`` seconds;
4. its transcript has more than ``max_words`` words or ``max_chars`` characters (spaces count).

The kept lists are written in place (spk2utt rewritten). The first run copies the unfiltered lists
to ``dump/<set>/.unfiltered/`` and every run filters from that copy, so running again, with the
same or other limits, gives the same result as the first time. ``filter_report.txt`` has the
options, the counts per reason (each utterance counted once, under its first reason in the order
above) and one line per dropped utterance with all its reasons; items rejected before they were
listed (stage 1) are reported too.
"""
import collections
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.utils.atomic_files import atomic_write_text
from espnet_omni_avsr.prep.errors import PrepError

logger = logging.getLogger(__name__)


@dataclass
class FilterResult:
    """What the filtering stage did.

    Attributes:
        kept: ids kept, sorted.
        dropped: {id: [(category, detail), ...]} of every dropped utterance, including items
            rejected before they were listed (stage 1), sorted by id.
        listed: ids in the unfiltered lists.
    """

    kept: List[str] = field(default_factory=list)
    dropped: Dict[str, List[Tuple[str, str]]] = field(default_factory=dict)
    listed: Set[str] = field(default_factory=set)

    @property
    def num_listed(self) -> int:
        return len(self.listed)

    def counts(self, listed: bool = True) -> Dict[str, int]:
        """Dropped utterances per first reason category, most frequent first: of the listed
        utterances, or (``listed=False``) of the items rejected before they were listed."""
        counter = collections.Counter(
            reasons[0][0] for uid, reasons in self.dropped.items() if (uid in self.listed) == listed
        )
        return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def snapshot_unfiltered(dump_dir: str) -> str:
    """Copy the per-utterance lists and spk2utt to ``.unfiltered/`` once; return that folder."""
    saved = os.path.join(dump_dir, kaldi_dir.UNFILTERED)
    if os.path.isdir(saved):
        return saved
    names = kaldi_dir.per_utt_files(dump_dir)
    if "utt2spk" not in names:
        raise PrepError(f"{dump_dir}: no utt2spk; run the earlier stages first")
    tmp = saved + ".tmp"
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    for name in names + (["spk2utt"] if os.path.isfile(os.path.join(dump_dir, "spk2utt")) else []):
        shutil.copy2(os.path.join(dump_dir, name), os.path.join(tmp, name))
    os.rename(tmp, saved)
    return saved


def filter_data(
    dump_dir: str,
    data_dir: Optional[str] = None,
    min_duration: Optional[float] = None,
    max_duration: Optional[float] = None,
    max_words: Optional[int] = None,
    max_chars: Optional[int] = None,
    fps: float = 25.0,
) -> FilterResult:
    """Filter ``dump_dir`` in place (module docstring); ``data_dir`` adds its bad_items.tsv."""
    if min_duration is not None and max_duration is not None and min_duration > max_duration:
        raise PrepError(f"--min_duration {min_duration} > --max_duration {max_duration}")
    for name, value in (("--max_words", max_words), ("--max_chars", max_chars)):
        if value is not None and value < 1:
            raise PrepError(f"{name} must be >= 1, got {value}")
    if not os.path.isdir(dump_dir):
        raise PrepError(f"{dump_dir} does not exist; run the earlier stages first")
    saved = snapshot_unfiltered(dump_dir)
    names = kaldi_dir.per_utt_files(saved)
    tables = {n: kaldi_dir.read_table(os.path.join(saved, n), allow_empty=n == "text") for n in names}
    listed = set().union(*(set(t) for t in tables.values()))

    bad: Dict[str, List[Tuple[str, str]]] = collections.defaultdict(list)
    for folder in ([data_dir] if data_dir else []) + [dump_dir]:
        for record in kaldi_dir.read_item_records(os.path.join(folder, kaldi_dir.BAD_ITEMS)):
            bad[record.uttid].append((f"bad item ({record.stage})", record.text))

    durations = _durations(saved, names, fps)
    if (min_duration is not None or max_duration is not None) and durations is None:
        raise PrepError(f"{saved}: neither utt2dur nor utt2num_frames: cannot filter by duration")
    if (max_words is not None or max_chars is not None) and "text" not in tables:
        raise PrepError(f"{saved}: no text: cannot filter by transcript length")

    result = FilterResult(listed=listed)
    for uid in sorted(listed | set(bad)):
        reasons = list(dict.fromkeys(bad.get(uid, [])))
        missing = [n for n in names if uid not in tables[n]]
        if missing and not reasons:
            reasons.append(("missing from a list", f"missing from {', '.join(missing)}"))
        duration = durations.get(uid) if durations else None
        if duration is not None and min_duration is not None and duration < min_duration:
            reasons.append(("too short", f"{duration:.2f} s < --min_duration {min_duration:g} s"))
        if duration is not None and max_duration is not None and duration > max_duration:
            reasons.append(("too long", f"{duration:.2f} s > --max_duration {max_duration:g} s"))
        text = tables.get("text", {}).get(uid)
        if text is not None and max_words is not None and len(text.split()) > max_words:
            reasons.append(("too many words", f"{len(text.split())} words > --max_words {max_words}"))
        if text is not None and max_chars is not None and len(text) > max_chars:
            reasons.append(("too many characters", f"{len(text)} characters > --max_chars {max_chars}"))
        if reasons:
            result.dropped[uid] = reasons
        else:
            result.kept.append(uid)

    keep = set(result.kept)
    for name, table in tables.items():
        kaldi_dir.write_table(os.path.join(dump_dir, name), {u: v for u, v in table.items() if u in keep},
                              allow_empty=name == "text")
    if "utt2spk" in tables:
        kaldi_dir.write_spk2utt(os.path.join(dump_dir, "spk2utt"),
                                {u: s for u, s in tables["utt2spk"].items() if u in keep})
    options = {"min_duration": min_duration, "max_duration": max_duration, "max_words": max_words,
               "max_chars": max_chars, "fps": fps}
    _write_report(os.path.join(dump_dir, kaldi_dir.FILTER_REPORT), dump_dir, data_dir, options, result)
    return result


def _durations(folder: str, names: List[str], fps: float) -> Optional[Dict[str, float]]:
    if "utt2dur" in names:
        return kaldi_dir.read_float_table(os.path.join(folder, "utt2dur"))
    if "utt2num_frames" in names:
        return {u: n / fps for u, n in kaldi_dir.read_int_table(os.path.join(folder, "utt2num_frames")).items()}
    return None


def _write_report(path: str, dump_dir: str, data_dir: Optional[str], options: Dict, result: FilterResult) -> None:
    before = result.counts(listed=False)
    lines = [
        f"# filter of {dump_dir}" + (f" (bad items also from {data_dir})" if data_dir else ""),
        "# options: " + " ".join(f"{k}={v}" for k, v in options.items()),
        f"listed {result.num_listed}, kept {len(result.kept)}, dropped {result.num_listed - len(result.kept)}"
        + (f"; {sum(before.values())} more items were rejected before they were listed" if before else ""),
        "dropped per reason (first reason of each):",
    ]
    lines += [f"{count:8d}  {category}" for category, count in result.counts().items()] or ["       0"]
    if before:
        lines.append("rejected before they were listed, per reason:")
        lines += [f"{count:8d}  {category}" for category, count in before.items()]
    lines.append("dropped (id<TAB>reasons):")
    for uid, reasons in result.dropped.items():
        lines.append(f"{uid}\t" + "; ".join(f"{c}: {d}" for c, d in reasons))
    atomic_write_text(path, "\n".join(lines) + "\n")


def summary(dump_dir: str, result: FilterResult) -> str:
    """One line for the log: kept / listed, the counts per reason, the items rejected earlier."""
    def describe(counts: Dict[str, int]) -> str:
        return ", ".join(f"{n} {c}" for c, n in counts.items())

    dropped = result.num_listed - len(result.kept)
    line = f"{dump_dir}: kept {len(result.kept)} of {result.num_listed} utterances; dropped {dropped}"
    if dropped:
        line += f" ({describe(result.counts())})"
    before = result.counts(listed=False)
    if before:
        line += f"; {sum(before.values())} more rejected before listing ({describe(before)})"
    return line
