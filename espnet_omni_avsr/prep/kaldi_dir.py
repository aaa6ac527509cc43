"""Kaldi-style data directories: reading, writing and checking their files.

A data directory holds one file per kind of information, each line ``<utt_id> <value>``:

- per-utterance lists: ``wav.scp``, ``video.scp`` (paths), ``text`` (transcript), ``utt2spk``,
  ``utt2dur`` (seconds), ``utt2num_frames`` (video frames), and any other ``*.scp`` / ``utt2*``;
- ``spk2utt``: ``<speaker> <utt_id> <utt_id> ...``, derived from ``utt2spk``;
- ``bad_items.tsv``: ``<utt_id><TAB><stage><TAB><reason>``, one line per item a stage rejected
  (an item with no usable id is named by its path); ``notes.tsv`` has the same layout for changes
  made to kept items (a resized video, a resampled recording).

Every file is written sorted in C-locale order (Python's ``str`` order is code-point order, which
is UTF-8 byte order, which is what ``LC_ALL=C sort`` gives) and atomically (a temporary file renamed
into place). Readers reject duplicate ids and missing fields with a :class:`KaldiDirError` naming
``file:line``.

Utterance ids must sort consistently with their speakers: listing ``utt2spk`` in sorted order must
visit the speakers in sorted order, each once (Kaldi's rule, checked by
:func:`check_sort_consistency`). Ids of the form ``<speaker>-<rest>`` satisfy it when all speaker ids
have the same length, or when no speaker id holds a character that sorts at or below ``-``.
"""
import os
import shutil
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional

from espnet_omni_avsr.prep.errors import PrepError
from espnet_omni_avsr.utils.atomic_files import atomic_write_text

BAD_ITEMS = "bad_items.tsv"
NOTES = "notes.tsv"
UNFILTERED = ".unfiltered"  # the filtering stage keeps the lists it filtered here
FILTER_REPORT = "filter_report.txt"


class KaldiDirError(PrepError):
    """A malformed or inconsistent data-directory file; the message names file:line."""


class ItemRecord(NamedTuple):
    """One line of bad_items.tsv (text = the reason) or notes.tsv (text = the note)."""

    uttid: str
    stage: str
    text: str


# ---- ids -------------------------------------------------------------------------------------
def check_id(uid: str, what: str = "utterance id") -> None:
    """Raise ValueError unless ``uid`` is usable as a Kaldi id (non-empty, no whitespace)."""
    if not uid or any(c.isspace() for c in uid):
        raise ValueError(f"{what} {uid!r} is empty or holds whitespace")


def check_sort_consistency(utt2spk: Mapping[str, str], source: str = "utt2spk") -> None:
    """Raise KaldiDirError unless the sorted utterance ids visit the speakers in sorted order."""
    uids = sorted(utt2spk)
    for prev, cur in zip(uids, uids[1:]):
        if utt2spk[prev] > utt2spk[cur]:
            raise KaldiDirError(
                f"{source}: utterance ids do not sort with their speakers (C locale): {prev!r} "
                f"(speaker {utt2spk[prev]!r}) sorts before {cur!r} (speaker {utt2spk[cur]!r}); "
                "make every utterance id start with its speaker id and make speaker ids the same "
                "length, or free of characters that sort at or below '-'"
            )


# ---- plain tables ------------------------------------------------------------------------------
def read_table(path: str, allow_empty: bool = False) -> Dict[str, str]:
    """``<id> <value>`` lines -> {id: value} in file order.

    Blank lines are skipped. The value is the rest of the line (it may hold spaces).

    Raises:
        KaldiDirError: missing file, a line without a value (unless ``allow_empty``), a
            duplicated id, or bytes that are not UTF-8; the message names file:line.
    """
    table: Dict[str, str] = {}
    first_line: Dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                parts = line.strip().split(maxsplit=1)
                if not parts:
                    continue
                uid = parts[0]
                if len(parts) == 1 and not allow_empty:
                    raise KaldiDirError(f"{path}:{number}: expected '<id> <value>', got only {uid!r}")
                if uid in table:
                    raise KaldiDirError(
                        f"{path}:{number}: id {uid!r} is duplicated (first on line {first_line[uid]})"
                    )
                table[uid] = parts[1] if len(parts) == 2 else ""
                first_line[uid] = number
    except FileNotFoundError:
        raise KaldiDirError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise KaldiDirError(f"{path}: not UTF-8 text: {e}") from None
    return table


def read_float_table(path: str) -> Dict[str, float]:
    """``<id> <number>`` lines (utt2dur) -> {id: float}; a non-number names file:line."""
    return _convert(path, read_table(path), float, "a number")


def read_int_table(path: str) -> Dict[str, int]:
    """``<id> <integer>`` lines (utt2num_frames) -> {id: int}; a non-integer names file:line."""
    return _convert(path, read_table(path), int, "an integer")


def _convert(path: str, table: Dict[str, str], kind, what: str) -> Dict:
    out = {}
    for uid, value in table.items():
        try:
            out[uid] = kind(value)
        except ValueError:
            number = _line_of(path, uid)
            raise KaldiDirError(f"{path}:{number}: value {value!r} of {uid!r} is not {what}") from None
    return out


def _line_of(path: str, uid: str) -> int:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.split(maxsplit=1)[:1] == [uid]:
                return number
    return 0


def write_table(path: str, table: Mapping[str, object], allow_empty: bool = False) -> None:
    """{id: value} -> ``<id> <value>`` lines sorted by id (C locale), written atomically.

    Raises:
        ValueError: an id that is empty or holds whitespace, a value holding a line break, or an
            empty value (unless ``allow_empty``); the message names the file and the id.
    """
    lines = []
    for uid in sorted(table):
        value = str(table[uid])
        try:
            check_id(uid)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if "\n" in value or "\r" in value:
            raise ValueError(f"{path}: the value of {uid!r} holds a line break: {value!r}")
        if not value.strip() and not allow_empty:
            raise ValueError(f"{path}: the value of {uid!r} is empty")
        lines.append(f"{uid} {value}".rstrip() + "\n")
    atomic_write_text(path, "".join(lines))


# ---- speakers ----------------------------------------------------------------------------------
def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, List[str]]:
    """{utt: spk} -> {spk: [utt, ...]}, both levels sorted."""
    spk2utt: Dict[str, List[str]] = {}
    for uid in sorted(utt2spk):
        spk2utt.setdefault(utt2spk[uid], []).append(uid)
    return dict(sorted(spk2utt.items()))


def write_spk2utt(path: str, utt2spk: Mapping[str, str]) -> None:
    """Write spk2utt derived from ``utt2spk`` (checked with :func:`check_sort_consistency`)."""
    check_sort_consistency(utt2spk, source=path)
    spk2utt = utt2spk_to_spk2utt(utt2spk)
    atomic_write_text(path, "".join(f"{spk} {' '.join(uids)}\n" for spk, uids in spk2utt.items()))


def read_spk2utt(path: str) -> Dict[str, List[str]]:
    """spk2utt -> {spk: [utt, ...]} (file order); an utterance under two speakers names file:line."""
    seen: Dict[str, str] = {}
    out: Dict[str, List[str]] = {}
    for spk, value in read_table(path).items():
        uids = value.split()
        for uid in uids:
            if uid in seen:
                raise KaldiDirError(
                    f"{path}:{_line_of(path, spk)}: utterance {uid!r} is listed under speakers "
                    f"{seen[uid]!r} and {spk!r}"
                )
            seen[uid] = spk
        out[spk] = uids
    return out


# ---- bad_items.tsv / notes.tsv -------------------------------------------------------------------
def read_item_records(path: str) -> List[ItemRecord]:
    """bad_items.tsv or notes.tsv -> records in file order; a missing file gives []."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not fields[0] or not fields[1]:
                raise KaldiDirError(
                    f"{path}:{number}: expected '<utt_id><TAB><stage><TAB><text>', got {line!r}"
                )
            records.append(ItemRecord(*fields))
    return records


def write_item_records(path: str, records: Iterable[ItemRecord]) -> None:
    """Write records sorted by (id, stage, text), duplicates merged; tabs/line breaks in fields
    become spaces. No records give an empty file ("nothing was rejected")."""
    clean = {ItemRecord(*(_one_line(field) for field in r)) for r in records}
    atomic_write_text(path, "".join("\t".join(r) + "\n" for r in sorted(clean)))


def replace_stage_records(path: str, stage: str, records: Iterable[ItemRecord]) -> None:
    """Replace the lines of ``stage`` in bad_items.tsv / notes.tsv, keeping the other stages'."""
    kept = [r for r in read_item_records(path) if r.stage != stage]
    write_item_records(path, kept + list(records))


def _one_line(text: str) -> str:
    return " ".join(str(text).replace("\t", " ").splitlines()).strip()


# ---- whole directories -----------------------------------------------------------------------------
def per_utt_files(data_dir: str) -> List[str]:
    """Names of the per-utterance lists in ``data_dir``: text, *.scp and utt2* files."""
    names = []
    for name in sorted(os.listdir(data_dir)):
        if not os.path.isfile(os.path.join(data_dir, name)):
            continue
        if ".tmp" in name:  # an interrupted atomic write
            continue
        if name == "text" or name.endswith(".scp") or name.startswith("utt2"):
            names.append(name)
    return names


def fix_dir(data_dir: str) -> Dict[str, List[str]]:
    """Keep only the utterances present in every per-utterance list; rewrite spk2utt.

    Returns:
        {utt_id: [names of the lists it was missing from]} for every utterance dropped.

    Raises:
        KaldiDirError: no utt2spk, or a malformed list (named by file:line).
    """
    names = per_utt_files(data_dir)
    if "utt2spk" not in names:
        raise KaldiDirError(f"{data_dir}: no utt2spk")
    tables = {
        name: read_table(os.path.join(data_dir, name), allow_empty=name == "text") for name in names
    }
    everyone = set().union(*(set(t) for t in tables.values()))
    keep = set.intersection(*(set(t) for t in tables.values()))
    dropped = {uid: [n for n in names if uid not in tables[n]] for uid in sorted(everyone - keep)}
    for name, table in tables.items():
        if len(table) != len(keep) or dropped:
            write_table(
                os.path.join(data_dir, name),
                {u: v for u, v in table.items() if u in keep},
                allow_empty=name == "text",
            )
    write_spk2utt(os.path.join(data_dir, "spk2utt"), {u: s for u, s in tables["utt2spk"].items() if u in keep})
    return dropped


def validate_dir(data_dir: str, required: Iterable[str] = ("utt2spk", "spk2utt")) -> List[str]:
    """Check a data directory the way Kaldi's validate_data_dir.sh does (the parts we rely on).

    Every per-utterance list is readable, sorted, free of duplicates and covers the same ids;
    spk2utt matches utt2spk; ids sort consistently with speakers.

    Returns:
        the sorted utterance ids.

    Raises:
        KaldiDirError naming the file (and line) at fault.
    """
    for name in required:
        if not os.path.isfile(os.path.join(data_dir, name)):
            raise KaldiDirError(f"{os.path.join(data_dir, name)}: file not found")
    ids: Optional[List[str]] = None
    reference = ""
    for name in per_utt_files(data_dir):
        path = os.path.join(data_dir, name)
        table = read_table(path, allow_empty=name == "text")
        keys = list(table)
        for i, (a, b) in enumerate(zip(keys, keys[1:]), 2):
            if a > b:
                raise KaldiDirError(f"{path}:{i}: not sorted (C locale): {b!r} after {a!r}")
        if ids is None:
            ids, reference = keys, name
        elif keys != ids:
            missing = sorted(set(ids) - set(keys))
            extra = sorted(set(keys) - set(ids))
            raise KaldiDirError(
                f"{path}: its ids differ from {reference}'s: {len(missing)} missing "
                f"(e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]}); run fix_dir"
            )
    utt2spk = read_table(os.path.join(data_dir, "utt2spk"))
    check_sort_consistency(utt2spk, os.path.join(data_dir, "utt2spk"))
    spk2utt_path = os.path.join(data_dir, "spk2utt")
    if os.path.isfile(spk2utt_path):
        if read_spk2utt(spk2utt_path) != utt2spk_to_spk2utt(utt2spk):
            raise KaldiDirError(f"{spk2utt_path}: does not match utt2spk; rewrite it with write_spk2utt")
    return ids or []


def restore_unfiltered(data_dir: str) -> bool:
    """Undo the filtering stage in ``data_dir``: move the lists kept in ``.unfiltered/`` back into place and
    remove filter_report.txt. Returns whether there was anything to restore.

    A stage that rewrites lists of a directory the filtering stage has filtered calls this first, so that the
    directory is whole again (and filtering must run again)."""
    saved = os.path.join(data_dir, UNFILTERED)
    if not os.path.isdir(saved):
        return False
    for name in sorted(os.listdir(saved)):
        os.replace(os.path.join(saved, name), os.path.join(data_dir, name))
    os.rmdir(saved)
    report = os.path.join(data_dir, FILTER_REPORT)
    if os.path.exists(report):
        os.remove(report)
    return True


def unfiltered_path(data_dir: str, name: str) -> str:
    """``data_dir/name`` as it was before filtering (its copy in ``.unfiltered/`` if there is one)."""
    saved = os.path.join(data_dir, UNFILTERED, name)
    return saved if os.path.isfile(saved) else os.path.join(data_dir, name)


def copy_lists(src_dir: str, dst_dir: str, names: Iterable[str]) -> None:
    """Copy the named files from src_dir to dst_dir (atomically each); a missing one is an error."""
    for name in names:
        src = os.path.join(src_dir, name)
        if not os.path.isfile(src):
            raise KaldiDirError(f"{src}: file not found")
        tmp = os.path.join(dst_dir, f"{name}.tmp{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, os.path.join(dst_dir, name))
