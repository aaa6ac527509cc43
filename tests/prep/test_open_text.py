"""Open-vocabulary corpus text: normalisation, filtering, the sentence split and the generated corpus."""
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from espnet_omni_avsr.prep.avgrid import generate as G  # noqa: E402
from espnet_omni_avsr.prep.avgrid import open_text as T  # noqa: E402
from espnet_omni_avsr.scoring.sclite import normalize_text  # noqa: E402


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty two"), (100, "one hundred"),
    (305, "three hundred five"), (1066, "one thousand sixty six"), (20000, "twenty thousand"),
    (999999, "nine hundred ninety nine thousand nine hundred ninety nine"),
])
def test_number_to_words(n, words):
    assert T.number_to_words(n) == words


def test_number_out_of_range():
    with pytest.raises(ValueError):
        T.number_to_words(10**9)


@pytest.mark.parametrize("raw, words", [
    ("My kingdom for a horse!", "my kingdom for a horse"),
    ('"Just my cup and Chaucer."', "just my cup and chaucer"),
    ("It's been a business doing pleasure with you.", "it's been a business doing pleasure with you"),
    ("In 1066, the well-known battle.", "in one thousand sixty six the well known battle"),
    ("He owed 1,200 pounds to Mr. Smith.", "he owed one thousand two hundred pounds to mister smith"),
    ("Don\u2019t panic, said the book.", "don't panic said the book"),
])
def test_normalize_keeps_plain_sentences(raw, words):
    got = T.normalize_sentence(raw)
    assert " ".join(got) == words
    assert normalize_text(" ".join(got)) == " ".join(got)  # already in scoring form


def test_split_then_normalize_a_fortune():
    fortune = "A horse!  A horse!  My kingdom for a horse!\n\t\t-- Wm. Shakespeare, \"Richard III\"\n"
    sentences = T.split_fortune(fortune)
    assert sentences == ["A horse!", "A horse!", "My kingdom for a horse!"]
    assert [T.normalize_sentence(s) for s in sentences] == [None, None, ["my", "kingdom", "for", "a", "horse"]]


@pytest.mark.parametrize("raw, why", [
    ("Too short.", "fewer than 3 words"),
    (" ".join(["word"] + ["other", "words"] * 10) + ".", "more than 20 words"),
    ("It costs $5 or so today.", "a symbol"),
    ("Cats & dogs live here.", "a symbol"),
    ("Use the 2nd door on the left.", "digits glued to letters"),
    ("The 1990s were a decade.", "digits glued to letters"),
    ("Count to 10000000 slowly now.", "number out of range"),
    ("NASA sent a probe there.", "acronym in capitals"),
    ("J. R. Tolkien wrote books.", "initials"),
    ("He said e.g. this and that.", "single letters"),
    ("Caf\u00e9 society is very dull.", "accented letter"),
    ("That that is is that that is not.", "repeated word"),
])
def test_normalize_rejects(raw, why):
    assert T.normalize_sentence(raw) is None, why


def test_sentence_split_is_a_function_of_the_words():
    splits = [T.sentence_split(f"sentence number {T.number_to_words(i)} here".split()) for i in range(2000)]
    assert splits == [T.sentence_split(f"sentence number {T.number_to_words(i)} here".split())
                      for i in range(2000)]
    shares = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert 0.75 < shares["train"] < 0.85 and 0.07 < shares["valid"] < 0.13 and 0.07 < shares["test"] < 0.13


def _fake_fortunes(root: Path) -> Path:
    root.mkdir()
    records = [f"Sentence {T.number_to_words(i)} is a plain one. And here is another {i} for you."
               for i in range(400)]
    (root / "fortunes").write_text("\n%\n".join(records) + "\n%\nA horse!\n\t-- someone\n%\n")
    return root


def test_pools_from_a_fortune_dir_are_disjoint(tmp_path):
    source = T.load_open_sentences(str(_fake_fortunes(tmp_path / "f")), ("fortunes",))
    pools = {k: set(v) for k, v in source.pools.items()}
    assert sum(len(p) for p in pools.values()) == 800
    assert not (pools["train"] & pools["test"]) and not (pools["train"] & pools["valid"])
    assert not (pools["valid"] & pools["test"])
    rng = np.random.default_rng(0)
    assert all(tuple(source.sample(rng, "test")) in pools["test"] for _ in range(50))


def test_missing_fortunes_are_named(tmp_path):
    with pytest.raises(T.TextSourceError, match=r"apt-get install fortunes"):
        T.load_open_sentences(str(tmp_path / "nowhere"), ("fortunes",))


def test_debian_fortunes_give_thousands_of_sentences():
    source = T.load_open_sentences()  # tools/install.sh installs Debian's fortunes
    stats = source.stats()
    assert stats["train"]["sentences"] > 5000 and stats["test"]["sentences"] > 500
    assert stats["train"]["vocabulary"] > 5000
    for pool in source.pools.values():
        for words in pool:
            assert T.MIN_WORDS <= len(words) <= T.MAX_WORDS
            assert all(re.fullmatch(r"[a-z]+('[a-z]+)*", w) for w in words)


NUM_UTTS, NUM_SPEAKERS = 20, 10


@pytest.fixture(scope="module")
def open_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("avopen") / "corpus"
    G.generate(str(root), num_utts=NUM_UTTS, num_speakers=NUM_SPEAKERS, seed=3, nj=1, progress=False, text="open")
    return root


def _transcripts(root: Path, split_dir: str):
    out = {}
    for txt in sorted((root / split_dir).glob("*/*.txt")):
        out[str(txt.relative_to(root).with_suffix(""))] = txt.read_text().splitlines()[0].split("  ", 1)[1]
    return out


def test_open_corpus_speakers_say_their_split_sentences(open_corpus):
    pools = {k: {" ".join(s).upper() for s in v} for k, v in T.load_open_sentences().pools.items()}
    valid = set(open_corpus.joinpath("valid.id").read_text().split())
    test = _transcripts(open_corpus, "test")
    trainval = _transcripts(open_corpus, "trainval")
    assert test and valid and len(test) + len(trainval) == NUM_UTTS
    assert all(text in pools["test"] for text in test.values())
    assert all(trainval[u] in pools["valid"] for u in valid)
    train = [t for u, t in trainval.items() if u not in valid]
    assert train and all(text in pools["train"] for text in train)
    assert not set(train) & (set(test.values()) | {trainval[u] for u in valid})


def test_open_corpus_word_timings_follow_the_words(open_corpus):
    num_words = num_timed = 0
    for txt in sorted(open_corpus.glob("*/*/*.txt")):
        lines = txt.read_text().splitlines()
        words = lines[0].split("  ", 1)[1].split()
        timed = [line.split()[0] for line in lines[3:]]
        rest = iter(words)
        assert all(w in rest for w in timed), txt  # timed words in transcript order
        starts = [float(line.split()[1]) for line in lines[3:]]
        assert starts == sorted(starts), txt
        num_words, num_timed = num_words + len(words), num_timed + len(timed)
    # espeak-ng now and then reports a short word's phones under its neighbour ("wound up"):
    # that word then has no timing line
    assert num_timed >= 0.9 * num_words


def test_open_corpus_is_byte_identical_for_a_seed(open_corpus, tmp_path):
    again = tmp_path / "again"
    G.generate(str(again), num_utts=NUM_UTTS, num_speakers=NUM_SPEAKERS, seed=3, nj=2, progress=False, text="open")

    def digest(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(again) == digest(open_corpus)
    assert '"text": "open"' in (again / ".done").read_text()


def test_unknown_text_source_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown text source 'poems'"):
        G.generate(str(tmp_path / "x"), num_utts=2, num_speakers=1, nj=1, progress=False, text="poems")
