"""Open-vocabulary sentences for the generated corpus, from Debian's `fortunes` package (offline).

The source is the plain-English files of `fortunes` (BSD licence; /usr/share/games/fortunes,
installed by tools/install.sh; about 2.8 MB). Each fortune is cut into sentences and a sentence is
kept when, after normalisation, it is 3-20 plain words:

* attributions ("-- Mark Twain") are dropped; Mr./Mrs./Dr. become mister/missus/doctor;
* the scoring normalisation (`scoring.sclite.normalize_text`: NFKC, lower case, punctuation other
  than the apostrophe to spaces) so that references are written the way WER is scored;
* whole numbers 0-999,999 (commas allowed) are spelled out ("1066" -> "one thousand sixty six");
* rejected: a word with anything but a-z and inner apostrophes (symbols, digits inside words,
  accents, leading quotes), a single letter other than "a", "i" and "o" (initials, "e.g."),
  an acronym written in capitals (the TTS would spell it, the transcript would not), and the
  same word twice in a row (the TTS word alignment cannot tell them apart).

Split (documented, fixed whatever the seed): a sentence's split is a function of its text alone,
the first 8 bytes of SHA-1 of the normalised words mod 100: 0-9 test, 10-19 valid, the rest train.
Identical sentences from different fortunes therefore land in the same split, and no test or
validation sentence is ever spoken in training. Utterances of a train / valid / test speaker draw
their sentence from that split's pool (`OpenSentences.sample`).
"""
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from espnet_omni_avsr.scoring.sclite import normalize_text
from espnet_omni_avsr.utils.spelling import number_to_words

DEFAULT_FORTUNES_DIR = "/usr/share/games/fortunes"
# Prose files of Debian's `fortunes`; left out: ASCII art, program code, shell and Perl jokes,
# and the files of jokes on ethnic groups, drugs and the sexes.
FORTUNE_FILES: Tuple[str, ...] = (
    "education", "food", "fortunes", "goedel", "humorists", "kids", "law", "literature", "love",
    "magic", "medicine", "miscellaneous", "news", "paradoxum", "people", "pets", "platitudes",
    "politics", "pratchett", "riddles", "science", "songs-poems", "sports", "tao", "wisdom", "work",
)
MIN_WORDS, MAX_WORDS = 3, 20
SPLIT_SHARES = (("test", 10), ("valid", 10), ("train", 80))  # percent, in hash order

_ABBREVIATIONS = {"Mr.": "mister", "Mrs.": "missus", "Dr.": "doctor", "MR.": "mister", "DR.": "doctor"}
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)*$")
_SINGLE_LETTERS = {"a", "i", "o"}
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
class TextSourceError(RuntimeError):
    """The text source is missing or yields no usable sentence."""


def _spell_numbers(text: str) -> Optional[str]:
    """Digits as words; None when a number is out of range or glued to letters."""
    out = []
    for token in text.split():
        core = token.replace(",", "")
        if core.isdigit():
            if len(core) > 6 or (len(core) > 1 and core[0] == "0"):
                return None
            out.append(number_to_words(int(core)))
        elif any(ch.isdigit() for ch in token):
            return None
        else:
            out.append(token)
    return " ".join(out)


def normalize_sentence(sentence: str) -> Optional[List[str]]:
    """One raw sentence -> its words, or None when it is rejected (see the module docstring)."""
    for raw in sentence.split():
        letters = raw.strip(".,;:!?\"'()[]-")
        if len(letters) > 1 and letters.isalpha() and letters.isupper():
            return None  # acronym, or shouting the TTS would spell
    for abbreviation, word in _ABBREVIATIONS.items():
        sentence = sentence.replace(abbreviation, word)
    # normalize_text keeps symbols; numbers are read before the commas inside them become spaces
    spelled = _spell_numbers(re.sub(r"[^\w\s,']", " ", sentence.replace("\u2019", "'")))
    if spelled is None:
        return None
    if re.search(r"[^\w\s.,;:!?\"'()\[\]\-\u2019]", sentence):
        return None  # symbols ($, &, +, =, /, @, ...) that the words would not say
    words = normalize_text(spelled).split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    for i, w in enumerate(words):
        if not _WORD.match(w) or (len(w) == 1 and w not in _SINGLE_LETTERS):
            return None
        if i and w == words[i - 1]:
            return None
    return words


def split_fortune(fortune: str) -> List[str]:
    """A fortune's text (attribution lines dropped) cut into sentences."""
    lines = [line for line in fortune.splitlines() if not line.strip().startswith("--")]
    text = " ".join(" ".join(lines).split())
    for abbreviation, word in _ABBREVIATIONS.items():
        text = text.replace(abbreviation, word)
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def read_fortunes(path: Path) -> List[str]:
    """A fortune file ('%'-separated records) -> its records."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise TextSourceError(f"{path}: not UTF-8 text ({exc})") from exc
    return [r for r in re.split(r"^%\s*$", text, flags=re.M) if r.strip()]


def sentence_split(words: Sequence[str]) -> str:
    """train / valid / test, from the sentence's words only (see the module docstring)."""
    digest = hashlib.sha1(" ".join(words).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    for split, share in SPLIT_SHARES:
        if bucket < share:
            return split
        bucket -= share
    raise AssertionError("shares add up to 100")


def sentences(records: Iterable[str]) -> List[Tuple[str, ...]]:
    """Unique normalised sentences of the records, in first-seen order."""
    seen: Dict[Tuple[str, ...], None] = {}
    for record in records:
        for sentence in split_fortune(record):
            words = normalize_sentence(sentence)
            if words is not None:
                seen.setdefault(tuple(words), None)
    return list(seen)


@dataclass(frozen=True)
class OpenSentences:
    """Sentence pools per split; `sample` draws from the pool of a speaker's split."""

    pools: Dict[str, Tuple[Tuple[str, ...], ...]]
    source: str

    def sample(self, rng: np.random.Generator, split: str) -> List[str]:
        pool = self.pools[split]
        return list(pool[int(rng.integers(len(pool)))])

    @staticmethod
    def tts_words(words: Sequence[str]) -> List[str]:
        return list(words)

    def stats(self) -> Dict[str, Dict[str, float]]:
        out = {}
        for split, pool in self.pools.items():
            lengths = [len(s) for s in pool]
            vocab = {w for s in pool for w in s}
            out[split] = {"sentences": len(pool), "words": sum(lengths), "vocabulary": len(vocab),
                          "mean_words": round(float(np.mean(lengths)), 2)}
        return out


@functools.lru_cache(maxsize=4)
def load_open_sentences(fortunes_dir: str = DEFAULT_FORTUNES_DIR,
                        files: Tuple[str, ...] = FORTUNE_FILES) -> OpenSentences:
    """The pools from the fortune files (cached per process: the generator's workers call it)."""
    root = Path(fortunes_dir)
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise TextSourceError(
            f"fortune files missing under {root}: {', '.join(missing)} "
            "(install Debian's `fortunes` package: apt-get install fortunes, or bash tools/install.sh)"
        )
    records = [r for name in files for r in read_fortunes(root / name)]
    pools: Dict[str, List[Tuple[str, ...]]] = {split: [] for split, _ in SPLIT_SHARES}
    for words in sentences(records):
        pools[sentence_split(words)].append(words)
    empty = [split for split, pool in pools.items() if not pool]
    if empty:
        raise TextSourceError(f"{root}: no usable sentence for split(s) {', '.join(empty)}")
    return OpenSentences({k: tuple(v) for k, v in pools.items()}, source=str(root))
