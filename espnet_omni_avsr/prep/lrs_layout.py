"""Stage 1: an LRS-layout corpus -> Kaldi-style data directories, one per set.

The layout (LRS3's release; LRS2's ``main/`` and ``pretrain/`` have the same shape)::

    <root>/<folder>/<speaker>/<utt>.mp4   the (face or mouth) video
    <root>/<folder>/<speaker>/<utt>.txt   first line "Text:  <TRANSCRIPT>", then optional
                                          "Conf:" and word-timing lines
    <root>/<folder>/<speaker>/<utt>.wav   audio, when the corpus ships it (or .flac); otherwise
                                          the audio is taken from the mp4 in stage 3

Sets are chosen with a split map: ``SET=EXPR``, where EXPR combines terms left to right with
``+`` (union), ``-`` (difference) and ``&`` (intersection). A term is a folder under the root
(``trainval``) or ``@NAME``, an id list: a file with one utterance a line, as
``<folder>/<speaker>/<utt>`` (LRS3's lrs3-valid.id) or ``<speaker>/<utt>`` (LRS2's train.txt,
val.txt, test.txt; it matches that speaker/utt in any folder); further fields on a line (LRS2
test.txt's ``NF``) are ignored. ``@NAME`` is the file given as ``NAME=FILE``, else
``<root>/NAME.id`` or ``<root>/NAME.txt``. Folder names in a map cannot contain ``+ - & @``.

    LRS3 / the embedded corpus: train=trainval-@valid dev=@valid test=test
                                (with 1759 h: train=pretrain+trainval-@valid)
    LRS2:                       train=main&@train dev=main&@val test=main&@test

Utterance ids are ``<speaker>-<utt>``; they sort with their speakers under the C locale because
speaker ids of one corpus have the same length (LRS3's YouTube ids, LRS2's numbers, AVGRID's
spkNNN) or, failing that, must not hold characters that sort at or below ``-`` (checked; an error
names the two speakers).

Each ``<out_dir>/<set>/`` gets wav.scp (the audio file, or the mp4 when the audio must be
extracted), video.scp, text, utt2spk, spk2utt and bad_items.tsv (stage ``prepare``; one line per
selected item that cannot be used, named by its id, or by its path when it has no usable id).
"""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from tqdm import tqdm

from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.utils.atomic_files import atomic_write_text
from espnet_omni_avsr.prep.errors import ItemError, PrepError

logger = logging.getLogger(__name__)

STAGE = "prepare"
VIDEO_EXT = ".mp4"
TEXT_EXT = ".txt"
AUDIO_EXTS = (".wav", ".flac")  # in order of preference when several are present
DEFAULT_SPLIT_MAP = ("train=trainval-@valid", "dev=@valid", "test=test")
ID_LIST_SUFFIXES = (".id", ".txt")

_SET_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")
_TERM = re.compile(r"^@?[^\s+&@/=-][^\s+&@/=-]*$")
_OPERATORS = {"+", "-", "&"}


# ---- transcripts -----------------------------------------------------------------------------
def read_transcript(path: str) -> str:
    """The transcript of an LRS .txt file: its first ``Text:`` line, whitespace collapsed.

    Raises:
        ItemError: unreadable, not UTF-8, no ``Text:`` line, or an empty one (the message names
            the file).
    """
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except UnicodeDecodeError as e:
        raise ItemError(f"transcript {path} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise ItemError(f"transcript {path} cannot be read: {e}") from None
    for line in content.splitlines():
        if line.startswith("Text:"):
            words = line[len("Text:"):].split()
            if not words:
                raise ItemError(f"empty transcript: the 'Text:' line of {path} has no words")
            return " ".join(words)
    raise ItemError(f"transcript {path} has no 'Text:' line")


# ---- the split map ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitExpr:
    """``SET=EXPR`` of a split map (see the module docstring)."""

    set_name: str
    text: str
    terms: Tuple[str, ...]  # "trainval" (a folder) or "@valid" (an id list)
    ops: Tuple[str, ...]  # ops[i] joins terms[i + 1] to what precedes it

    @classmethod
    def parse(cls, entry: str) -> "SplitExpr":
        set_name, sep, text = entry.partition("=")
        set_name, text = set_name.strip(), text.strip()
        if not sep or not set_name or not text:
            raise PrepError(f"split map entry {entry!r}: expected SET=EXPR, e.g. train=trainval-@valid")
        if not _SET_NAME.match(set_name):
            raise PrepError(f"split map entry {entry!r}: set name {set_name!r} must be letters, digits, _ . -")
        tokens = [t.strip() for t in re.split(r"([+&-])", text)]
        terms, ops = tokens[0::2], tokens[1::2]
        for term in terms:
            if not _TERM.match(term):
                raise PrepError(
                    f"split map entry {entry!r}: {term!r} is not a folder name or @list "
                    "(terms are joined by + - &, e.g. train=trainval-@valid)"
                )
        return cls(set_name, text, tuple(terms), tuple(ops))

    @property
    def folders(self) -> List[str]:
        return [t for t in self.terms if not t.startswith("@")]

    @property
    def lists(self) -> List[str]:
        return [t[1:] for t in self.terms if t.startswith("@")]

    @property
    def positive_lists(self) -> List[str]:
        """Lists whose entries are meant to be in the set (not the ones subtracted)."""
        signs = ("+",) + self.ops
        return [t[1:] for t, op in zip(self.terms, signs) if t.startswith("@") and op != "-"]

    def selects(self, folder: Optional[str], in_list: Callable[[str], bool]) -> bool:
        """Whether an item of ``folder`` (None: any folder) is in the set; ``in_list(name)``
        says whether it is on id list ``name``."""

        def value(term: str) -> bool:
            if term.startswith("@"):
                return in_list(term[1:])
            return folder is None or folder == term

        result = value(self.terms[0])
        for op, term in zip(self.ops, self.terms[1:]):
            if op == "+":
                result = result or value(term)
            elif op == "-":
                result = result and not value(term)
            else:
                result = result and value(term)
        return result


def parse_split_map(entries: Sequence[str]) -> List[SplitExpr]:
    exprs = [SplitExpr.parse(e) for e in entries]
    names = [e.set_name for e in exprs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PrepError(f"split map names set(s) {dup} more than once")
    if not exprs:
        raise PrepError("the split map is empty")
    return exprs


# ---- id lists -----------------------------------------------------------------------------------
@dataclass
class IdList:
    """An id list file: ``<folder>/<speaker>/<utt>`` or ``<speaker>/<utt>`` a line."""

    name: str
    path: str
    full: Set[Tuple[str, str, str]] = field(default_factory=set)  # (folder, speaker, utt)
    short: Set[Tuple[str, str]] = field(default_factory=set)  # (speaker, utt), any folder

    @classmethod
    def load(cls, name: str, path: str) -> "IdList":
        id_list = cls(name, path)
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise PrepError(f"id list {name!r}: cannot read {path}: {e}") from None
        duplicates = 0
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            entry = fields[0]
            for ext in (VIDEO_EXT, TEXT_EXT) + AUDIO_EXTS:
                if entry.endswith(ext):
                    entry = entry[: -len(ext)]
            parts = entry.strip("/").split("/")
            if len(parts) == 3 and all(parts):
                target, key = id_list.full, tuple(parts)
            elif len(parts) == 2 and all(parts):
                target, key = id_list.short, tuple(parts)
            else:
                raise PrepError(
                    f"{path}:{number}: expected '<folder>/<speaker>/<utt>' or '<speaker>/<utt>', got {line!r}"
                )
            duplicates += key in target
            target.add(key)
        if duplicates:
            logger.warning("id list %s lists %d entries more than once", path, duplicates)
        if not id_list.full and not id_list.short:
            logger.warning("id list %s is empty", path)
        return id_list

    def contains(self, folder: str, speaker: str, utt: str) -> bool:
        return (folder, speaker, utt) in self.full or (speaker, utt) in self.short

    @property
    def folders(self) -> Optional[Set[str]]:
        """The folders its entries name; None when some entries name no folder (any folder)."""
        return None if self.short else {f for f, _, _ in self.full}

    def entries(self) -> List[Tuple[Optional[str], str, str]]:
        return sorted(self.full) + sorted((None, s, u) for s, u in self.short)


def resolve_id_lists(names: Iterable[str], root: str, given: Mapping[str, str]) -> Dict[str, IdList]:
    """Load each named list from ``given`` (NAME -> FILE), else ``<root>/NAME.id|.txt``."""
    lists = {}
    for name in sorted(set(names)):
        if name in given:
            path = given[name]
            if not os.path.isfile(path):
                raise PrepError(f"id list {name!r}: {path} does not exist")
        else:
            tried = [os.path.join(root, name + suffix) for suffix in ID_LIST_SUFFIXES]
            path = next((p for p in tried if os.path.isfile(p)), None)
            if path is None:
                raise PrepError(
                    f"id list @{name} is not given and none of {tried} exists: pass "
                    f"--id_list {name}=FILE" + (" (or --valid_ids FILE)" if name == "valid" else "")
                )
        lists[name] = IdList.load(name, path)
    return lists


# ---- scanning the tree ------------------------------------------------------------------------------
@dataclass
class CorpusItem:
    """The files of one ``<folder>/<speaker>/<utt>`` stem (or one misplaced file)."""

    folder: str
    speaker: str
    stem: str
    files: Dict[str, str] = field(default_factory=dict)  # lower-case extension -> path
    bad_id: Optional[str] = None  # why it has no usable utterance id

    @property
    def key(self) -> str:
        return f"{self.folder}/{self.speaker}/{self.stem}"

    @property
    def uid(self) -> str:
        return f"{self.speaker}-{self.stem}"

    @property
    def audio(self) -> Optional[str]:
        return next((self.files[e] for e in AUDIO_EXTS if e in self.files), None)

    def any_path(self) -> str:
        return next(iter(sorted(self.files.values())))


def scan_folder(root: str, folder: str) -> List[CorpusItem]:
    """Every item under ``<root>/<folder>/<speaker>/``, sorted by key. Empty speaker folders,
    nested folders and files of other types are logged as warnings (naming them)."""
    base = os.path.join(root, folder)
    items: List[CorpusItem] = []
    ignored: List[str] = []
    media = {VIDEO_EXT, TEXT_EXT, *AUDIO_EXTS}
    try:
        speakers = sorted(os.listdir(base))
    except OSError as e:
        raise PrepError(f"cannot list {base}: {e}") from None
    for speaker in tqdm(speakers, desc=f"scan {folder}", unit="spk", disable=None, leave=False):
        spk_dir = os.path.join(base, speaker)
        if not os.path.isdir(spk_dir):
            if os.path.splitext(speaker)[1].lower() in media:
                items.append(CorpusItem(folder, "", speaker, {"": spk_dir},
                                        bad_id=f"{spk_dir} is not inside a <speaker>/ folder"))
            else:
                ignored.append(spk_dir)
            continue
        stems: Dict[str, CorpusItem] = {}
        for name in sorted(os.listdir(spk_dir)):
            path = os.path.join(spk_dir, name)
            stem, ext = os.path.splitext(name)
            if os.path.isdir(path):
                logger.warning("ignoring folder %s: expected files directly under the speaker folder", path)
                continue
            if ext.lower() not in media:
                ignored.append(path)
                continue
            item = stems.setdefault(stem, CorpusItem(folder, speaker, stem))
            if ext.lower() in item.files:
                item.files.setdefault("duplicates", path)
                continue
            item.files[ext.lower()] = path
        if not stems:
            logger.warning("empty speaker folder %s: no .mp4/.txt/audio files in it", spk_dir)
        for item in stems.values():
            dup = item.files.pop("duplicates", None)
            if dup is not None:
                item.bad_id = f"{dup}: two files with the same name up to letter case"
            try:
                kaldi_dir.check_id(item.speaker, "speaker folder name")
                kaldi_dir.check_id(item.stem, "file name")
            except ValueError as e:
                item.bad_id = f"{item.any_path()}: {e} (not usable as a Kaldi id)"
            items.append(item)
    if ignored:
        logger.warning("ignoring %d files under %s that are not .mp4/.txt/%s, e.g. %s",
                       len(ignored), base, "/".join(AUDIO_EXTS), ignored[:3])
    if not speakers:
        logger.warning("folder %s is empty", base)
    return sorted(items, key=lambda it: (it.key, it.any_path()))


# ---- sets -------------------------------------------------------------------------------------------
@dataclass
class DataSet:
    """One prepared set: the kept utterances and the rejected items."""

    name: str
    wav: Dict[str, str] = field(default_factory=dict)
    video: Dict[str, str] = field(default_factory=dict)
    text: Dict[str, str] = field(default_factory=dict)
    utt2spk: Dict[str, str] = field(default_factory=dict)
    bad: List[kaldi_dir.ItemRecord] = field(default_factory=list)

    def reject(self, uid: str, reason: str) -> None:
        self.bad.append(kaldi_dir.ItemRecord(uid, STAGE, reason))

    def write(self, out_dir: str) -> str:
        path = os.path.join(out_dir, self.name)
        os.makedirs(path, exist_ok=True)
        kaldi_dir.write_table(os.path.join(path, "wav.scp"), self.wav)
        kaldi_dir.write_table(os.path.join(path, "video.scp"), self.video)
        kaldi_dir.write_table(os.path.join(path, "text"), self.text)
        kaldi_dir.write_table(os.path.join(path, "utt2spk"), self.utt2spk)
        kaldi_dir.write_spk2utt(os.path.join(path, "spk2utt"), self.utt2spk)
        kaldi_dir.write_item_records(os.path.join(path, kaldi_dir.BAD_ITEMS), self.bad)
        return path


def check_item(item: CorpusItem) -> str:
    """The transcript of a usable item; ItemError naming the files otherwise."""
    if item.bad_id is not None:
        raise ItemError(item.bad_id)
    video, text, audio = item.files.get(VIDEO_EXT), item.files.get(TEXT_EXT), item.audio
    base = os.path.join(os.path.dirname(item.any_path()), item.stem)
    if video is None:
        if text is not None:
            extra = " (audio and transcript present)" if audio else ""
            raise ItemError(f"missing video: no {base}{VIDEO_EXT} beside {text}{extra}")
        raise ItemError(f"audio without video: {audio} has no {base}{VIDEO_EXT} (nor transcript) beside it")
    if text is None:
        raise ItemError(f"missing transcript: no {base}{TEXT_EXT} beside {video}")
    return read_transcript(text)


def missing_entries(
    expr: SplitExpr, lists: Mapping[str, IdList], found: Set[Tuple[str, str, str]], root: str
) -> List[Tuple[str, str]]:
    """(uid, reason) for every entry of the set's id lists that the set would hold but the corpus
    lacks (entries of subtracted lists are not meant to be there)."""
    rejected = []
    found_short = {(speaker, utt) for _, speaker, utt in found}
    for name in expr.positive_lists:
        id_list = lists[name]
        count = 0
        for folder, speaker, utt in id_list.entries():
            if ((folder, speaker, utt) in found) if folder else ((speaker, utt) in found_short):
                continue

            def on_list(other: str) -> bool:
                return other == name or lists[other].contains(folder or "", speaker, utt)

            if expr.selects(folder, on_list):
                where = f"{folder}/{speaker}/{utt}" if folder else f"{speaker}/{utt}"
                rejected.append((f"{speaker}-{utt}", f"listed in {id_list.path} ({where}) but not found under {root}"))
                count += 1
        if count:
            logger.warning("set %s: %d entries of %s are not in the corpus (see its %s)",
                           expr.set_name, count, id_list.path, kaldi_dir.BAD_ITEMS)
    return rejected


def build_set(
    expr: SplitExpr, scanned: Mapping[str, List[CorpusItem]], lists: Mapping[str, IdList], root: str
) -> DataSet:
    """Select the items of ``expr`` from the scanned folders and check each."""
    data = DataSet(expr.set_name)
    found: Set[Tuple[str, str, str]] = set()
    selected: List[CorpusItem] = []
    for folder in sorted(scanned):
        for item in scanned[folder]:
            found.add((item.folder, item.speaker, item.stem))
            usable = item.bad_id is None  # an item without a usable id is on no list

            def on_list(name: str) -> bool:
                return usable and lists[name].contains(item.folder, item.speaker, item.stem)

            if expr.selects(folder, on_list):
                selected.append(item)
    first_of: Dict[str, str] = {}
    for item in tqdm(selected, desc=f"prepare {expr.set_name}", unit="utt", disable=None, leave=False):
        uid = item.uid if item.bad_id is None else item.any_path()
        try:
            transcript = check_item(item)
        except ItemError as e:
            data.reject(uid, str(e))
            continue
        if uid in first_of:
            data.reject(uid, f"duplicate utterance id: {item.files[VIDEO_EXT]} gives the same id as {first_of[uid]}")
            continue
        first_of[uid] = item.files[VIDEO_EXT]
        data.video[uid] = item.files[VIDEO_EXT]
        data.wav[uid] = item.audio or item.files[VIDEO_EXT]
        data.text[uid] = transcript
        data.utt2spk[uid] = item.speaker
    for uid, reason in missing_entries(expr, lists, found, root):
        data.reject(uid, reason)
    return data


def sample_id_list(root: str, folder: str, num: int, seed: int, out_path: str) -> List[str]:
    """Write ``num`` usable items of ``<root>/<folder>`` (mp4 + transcript), drawn with ``seed``,
    as ``<folder>/<speaker>/<utt>`` lines to ``out_path``; returns them (sorted).

    For a corpus without its published validation list only: LRS3's papers use AV-HuBERT's
    lrs3-valid.id, which a draw does not reproduce."""
    if not os.path.isdir(os.path.join(root, folder)):
        raise PrepError(f"{os.path.join(root, folder)}: no such folder (to draw an id list from)")
    usable = [it.key for it in scan_folder(root, folder)
              if it.bad_id is None and VIDEO_EXT in it.files and TEXT_EXT in it.files]
    if len(usable) < num:
        raise PrepError(f"{os.path.join(root, folder)} has {len(usable)} usable items, fewer than the {num} to draw")
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(usable))[:num]
    chosen = sorted(usable[i] for i in order)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    # atomically: a later run reuses an existing list, so a cut one would stay the dev set
    atomic_write_text(out_path, "".join(key + "\n" for key in chosen))
    logger.warning("wrote %s: %d items of %s drawn with seed %d (not a published split list)",
                   out_path, num, folder, seed)
    return chosen


def prepare_lrs_data(
    root: str,
    out_dir: str,
    split_map: Sequence[str] = DEFAULT_SPLIT_MAP,
    id_lists: Optional[Mapping[str, str]] = None,
) -> Dict[str, DataSet]:
    """Write ``<out_dir>/<set>/`` for every entry of ``split_map``; returns the sets.

    Args:
        root: the corpus root (``<root>/<folder>/<speaker>/<utt>.*``).
        out_dir: where the set folders go (``data``).
        split_map: ``SET=EXPR`` entries (module docstring).
        id_lists: NAME -> FILE for the ``@NAME`` terms (default ``<root>/NAME.id`` or ``.txt``).

    Raises:
        PrepError: a missing root or folder, a malformed split map or id list, ids that do not
            sort with their speakers, or a set left without any usable utterance (its files,
            bad_items.tsv included, are written first).
    """
    if not os.path.isdir(root):
        raise PrepError(f"corpus root {root} does not exist (or is not a folder)")
    root = os.path.abspath(root)
    exprs = parse_split_map(split_map)
    lists = resolve_id_lists([n for e in exprs for n in e.lists], root, id_lists or {})
    folders: Set[str] = set()
    for expr in exprs:
        for folder in expr.folders:
            if not os.path.isdir(os.path.join(root, folder)):
                raise PrepError(f"{os.path.join(root, folder)}: no such folder (named in {expr.set_name}={expr.text})")
            folders.add(folder)
        for name in expr.lists:
            named = lists[name].folders
            if named is None:  # entries without a folder: every folder may hold them
                named = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")}
            folders.update(f for f in named if os.path.isdir(os.path.join(root, f)))
    scanned = {folder: scan_folder(root, folder) for folder in sorted(folders)}

    sets = {expr.set_name: build_set(expr, scanned, lists, root) for expr in exprs}
    for name, data in sets.items():
        for other, data2 in sets.items():
            if name < other:
                both = set(data.utt2spk) & set(data2.utt2spk)
                if both:
                    logger.warning("%d utterances are in both %s and %s, e.g. %s",
                                   len(both), name, other, sorted(both)[:3])
        kaldi_dir.check_sort_consistency(data.utt2spk, source=f"set {name}")
    for data in sets.values():
        path = data.write(out_dir)
        logger.info("%s: %d utterances, %d speakers, %d bad items", path, len(data.utt2spk),
                    len(set(data.utt2spk.values())), len(data.bad))
        if data.bad:
            logger.warning("%s: %d items rejected, see %s", path, len(data.bad),
                           os.path.join(path, kaldi_dir.BAD_ITEMS))
    empty = [name for name, data in sets.items() if not data.utt2spk]
    if empty:
        raise PrepError(
            f"set(s) {empty} have no usable utterance (see their {kaldi_dir.BAD_ITEMS}); "
            f"check --split_map ({' '.join(split_map)}) and the corpus under {root}"
        )
    return sets
