"""GRID sentences: command colour preposition letter digit adverb (51 words, 64,000 sentences).

The grammar is the one of the GRID audio-visual corpus (Cooke et al., 2006), e.g. "bin blue at f two now".
Words are lower case here; transcripts are upper case (`transcript`). `tts_text` spells words the
way both TTS engines pronounce as GRID speakers do (a lone "a" is otherwise read as the article).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

SLOTS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("command", ("bin", "lay", "place", "set")),
    ("colour", ("blue", "green", "red", "white")),
    ("preposition", ("at", "by", "in", "with")),
    ("letter", tuple(c for c in "abcdefghijklmnopqrstuvxyz")),  # no "w": three syllables in GRID
    ("digit", ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")),
    ("adverb", ("again", "now", "please", "soon")),
)

VOCABULARY: Tuple[str, ...] = tuple(w for _, words in SLOTS for w in words)

# spellings that make espeak-ng and flite say the letter name
_TTS_SPELLING: Dict[str, str] = {"a": "eigh"}


def sample_sentence(rng: np.random.Generator) -> List[str]:
    """One sentence, a word drawn uniformly from each slot in order."""
    return [words[int(rng.integers(len(words)))] for _, words in SLOTS]


def transcript(words: Sequence[str]) -> str:
    """Upper-case transcript, as in LRS3 `Text:` lines: "BIN BLUE AT F TWO NOW"."""
    return " ".join(words).upper()


def tts_words(words: Sequence[str]) -> List[str]:
    """The words as handed to a TTS engine (one TTS word per grammar word)."""
    return [_TTS_SPELLING.get(w, w) for w in words]


def tts_text(words: Sequence[str]) -> str:
    return " ".join(tts_words(words))


class GridSentences:
    """The GRID grammar as a sentence source of the generator (see open_text.OpenSentences)."""

    @staticmethod
    def sample(rng: np.random.Generator, split: str) -> List[str]:
        return sample_sentence(rng)  # every split draws from the whole grammar, as in GRID

    tts_words = staticmethod(tts_words)
