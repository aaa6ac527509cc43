"""The generated AVGRID corpus: layout, durations, splits, reproducibility, lips that follow the phones."""
import hashlib
import json
import os
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from espnet_omni_avsr.prep.avgrid import generate as G  # noqa: E402
from espnet_omni_avsr.prep.avgrid import grammar, visemes  # noqa: E402
from espnet_omni_avsr.prep.avgrid.tts import EspeakEngine, FliteEngine  # noqa: E402

NUM_UTTS, NUM_SPEAKERS, SEED = 12, 4, 0


def _digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _wav_samples(path: Path) -> int:
    with wave.open(str(path)) as f:
        assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16000, 1, 2)
        return f.getnframes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("avgrid") / "corpus"
    G.generate(str(root), num_utts=NUM_UTTS, num_speakers=NUM_SPEAKERS, seed=SEED, nj=1, corrupt=True, progress=False)
    return root


@pytest.fixture(scope="module")
def items():
    return G.make_items(NUM_UTTS, G.make_speakers(NUM_SPEAKERS, SEED), corrupt=True)


def _clean(items):
    return [it for it in items if it.kind == "clean"]


def test_grammar():
    words = grammar.sample_sentence(np.random.default_rng(0))
    assert [w in dict(grammar.SLOTS)[slot] for (slot, _), w in zip(grammar.SLOTS, words)] == [True] * 6
    assert len(grammar.VOCABULARY) == 51 and "w" not in grammar.VOCABULARY
    assert grammar.transcript(["bin", "blue", "at", "a", "two", "now"]) == "BIN BLUE AT A TWO NOW"
    assert grammar.tts_words(["set", "a"]) == ["set", "eigh"]


def test_phone_to_viseme():
    assert {visemes.phone_to_viseme(p, "arpabet") for p in ("p", "b", "m")} == {"PBM"}
    assert {visemes.phone_to_viseme(p, "espeak") for p in ("p", "'b", "m")} == {"PBM"}
    assert visemes.espeak_to_arpabet("'aI") == "ay"
    assert visemes.espeak_to_arpabet("aI2") == "ay"
    assert visemes.espeak_to_arpabet("t#") == "t"
    assert visemes.espeak_to_arpabet("_:") == "pau"
    assert visemes.phone_to_viseme("uw", "arpabet") == visemes.phone_to_viseme("u:", "espeak") == "WUW"
    assert visemes.phone_to_viseme("pau", "arpabet") == "sil"
    with pytest.raises(ValueError):
        visemes.phone_to_viseme("p", "ipa")


def test_tts_engines_give_timed_phones():
    words = grammar.tts_words(["bin", "blue", "at", "a", "two", "now"])
    for speech in (EspeakEngine().synthesize(words, "en-us+m3"), FliteEngine().synthesize(words, "kal16")):
        assert speech.audio.dtype == np.float32 and 1.0 < speech.duration < 4.0
        starts = [p.start for p in speech.phones]
        assert starts == sorted(starts) and speech.phones[-1].end <= speech.duration + 1e-6
        assert sorted({p.word for p in speech.phones} - {-1}) == list(range(6))
        labels = {visemes.phone_to_viseme(p.name, speech.alphabet) for p in speech.phones if p.word == 0}
        assert "PBM" in labels  # "bin"


def test_tts_does_not_depend_on_history():
    words, other = ["set", "white", "with", "p", "two", "soon"], ["lay", "red", "by", "q", "six", "again"]
    engine = EspeakEngine()
    first = engine.synthesize(words, "en+klatt", 150, 60, 50).audio
    engine.synthesize(other, "en-us+f2", 200, 20, 70)
    assert np.array_equal(first, engine.synthesize(words, "en+klatt", 150, 60, 50).audio)


def test_layout_and_transcripts(corpus, items):
    assert sorted(p.name for p in corpus.iterdir() if p.is_dir()) == ["test", "trainval"]
    assert json.loads((corpus / ".done").read_text())["num_utts"] == NUM_UTTS
    for it in _clean(items):
        base = corpus / it.uid
        assert all(base.with_suffix(ext).is_file() for ext in (".mp4", ".wav", ".txt")), it.uid
        first = base.with_suffix(".txt").read_text().splitlines()[0]
        match = re.fullmatch(r"Text:  ([A-Z ]+)", first)
        assert match, first
        words = match.group(1).lower().split()
        assert len(words) == 6 and all(w in grammar.VOCABULARY for w in words)
    assert set(G.read_corpus_ids(str(corpus))) >= {it.uid for it in _clean(items)}


def test_audio_and_video_durations_agree(corpus, items):
    for it in _clean(items):
        frames = G.read_video(str(corpus / (it.uid + ".mp4")))
        assert frames.shape[1:] == (96, 96) and frames.dtype == np.uint8
        seconds = _wav_samples(corpus / (it.uid + ".wav")) / 16000
        assert abs(len(frames) - round(seconds * 25)) <= 1, it.uid


def test_speakers_differ_in_speech_rate(corpus, items):
    """The corpus is rate-varied by speaker (what MMS-LLaMA's speech-rate predictor learns from):
    the fastest of the 4 speakers says its six words in at most 80% of the slowest one's time."""
    by_speaker = {}
    for it in _clean(items):
        seconds = _wav_samples(corpus / (it.uid + ".wav")) / 16000
        by_speaker.setdefault(it.speaker.name, []).append(6 / seconds)
    rates = sorted(float(np.mean(v)) for v in by_speaker.values())
    assert len(rates) == NUM_SPEAKERS
    assert rates[-1] / rates[0] >= 1.25, rates


def test_splits_are_speaker_disjoint(corpus):
    train_dir = {p.name for p in (corpus / "trainval").iterdir()}
    test_dir = {p.name for p in (corpus / "test").iterdir()}
    assert train_dir and test_dir and not train_dir & test_dir
    valid_ids = (corpus / "valid.id").read_text().split()
    assert valid_ids and all(u.startswith("trainval/") for u in valid_ids)
    valid_spk = {u.split("/")[1] for u in valid_ids}
    # a validation speaker's utterances are all held out
    for spk in valid_spk:
        on_disk = {f"trainval/{spk}/{p.stem}" for p in (corpus / "trainval" / spk).glob("*.txt")}
        assert on_disk <= set(valid_ids)
    table = [line.split("\t") for line in (corpus / "speakers.tsv").read_text().splitlines()[1:]]
    split = {row[0]: row[1] for row in table}
    assert {s for s, v in split.items() if v == "test"} == test_dir
    assert {s for s, v in split.items() if v == "valid"} == valid_spk


def test_reproducible_and_seed_dependent(corpus, tmp_path):
    again = G.generate(str(tmp_path / "again"), NUM_UTTS, NUM_SPEAKERS, SEED, nj=2, corrupt=True, progress=False)
    assert _digest(again) == _digest(corpus)  # byte-identical, whatever the number of workers
    other = G.generate(str(tmp_path / "other"), NUM_UTTS, NUM_SPEAKERS, SEED + 1, nj=1, corrupt=True, progress=False)
    a, b = _digest(corpus), _digest(other)
    media = [k for k in a if k.endswith((".wav", ".mp4"))]
    assert sum(a[k] != b.get(k) for k in media) == len(media)


def test_rerun_is_a_no_op_and_resume_completes(corpus, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*")}
    G.generate(str(corpus), NUM_UTTS, NUM_SPEAKERS, SEED, nj=1, corrupt=True, progress=False)
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*")} == before
    with pytest.raises(FileExistsError):
        G.generate(str(corpus), NUM_UTTS + 1, NUM_SPEAKERS, SEED, nj=1, progress=False)
    # an interrupted run: a partial folder with some files missing
    root = tmp_path / "resumed"
    partial = tmp_path / "resumed.partial"
    shutil.copytree(corpus, partial)
    (partial / ".done").rename(partial / ".settings")
    for name in ("valid.id", "speakers.tsv", "corrupt.tsv"):
        (partial / name).unlink()
    victims = sorted(partial.rglob("*.mp4"))[:3] + sorted(partial.rglob("*.txt"))[-2:]
    for p in victims:
        p.unlink()
    G.generate(str(root), NUM_UTTS, NUM_SPEAKERS, SEED, nj=1, corrupt=True, progress=False)
    assert not partial.exists() and _digest(root) == _digest(corpus)


def test_mouth_follows_the_phones(corpus, items):
    """The mouth region moves away from its rest shape on open vowels, hardly on p/b/m."""
    vowels = [visemes.VISEME_INDEX[v] for v in ("AA", "EH", "AO", "AX")]
    pbm, sil = visemes.VISEME_INDEX["PBM"], visemes.VISEME_INDEX["sil"]
    dev_vowel, dev_pbm = [], []
    for it in _clean(items):
        labels = G.make_utterance(it.index, it.speaker, SEED).labels
        frames = G.read_video(str(corpus / (it.uid + ".mp4"))).astype(np.float32)
        assert len(labels) == len(frames)
        app = it.speaker.appearance
        cx, cy = int(round(app.cx)), int(round(app.cy))
        box = frames[:, cy - 4 : cy + 8, cx - 10 : cx + 11]
        deviation = np.abs(box - box[labels == sil].mean(0)).mean((1, 2))
        dev_vowel += list(deviation[np.isin(labels, vowels)])
        dev_pbm += list(deviation[labels == pbm])
    assert len(dev_vowel) > 20 and len(dev_pbm) > 5
    assert np.mean(dev_vowel) > 2.0 * np.mean(dev_pbm), (np.mean(dev_vowel), np.mean(dev_pbm))


def test_corrupt_items_are_listed_and_bad(corpus):
    rows = [line.split("\t") for line in (corpus / "corrupt.tsv").read_text().splitlines()]
    kinds = {kind: Path(uid) for uid, kind, _ in rows}
    assert set(kinds) == set(G.CORRUPT_KINDS)
    base = {k: corpus / v for k, v in kinds.items()}
    with pytest.raises(Exception):
        G.read_video(str(base["corrupt_mp4"].with_suffix(".mp4")))
    assert not base["missing_transcript"].with_suffix(".txt").exists()
    assert base["missing_transcript"].with_suffix(".mp4").exists()
    assert not base["audio_only"].with_suffix(".mp4").exists()
    assert base["audio_only"].with_suffix(".wav").exists()
    blank = G.read_video(str(base["blank_frames"].with_suffix(".mp4"))).astype(np.float32)
    flat = blank.reshape(len(blank), -1).std(1) < 1.0
    assert flat.sum() >= 3 and not flat.all()
    short = len(G.read_video(str(base["av_mismatch"].with_suffix(".mp4"))))
    assert abs(short - _wav_samples(base["av_mismatch"].with_suffix(".wav")) / 640) > 5
    assert base["empty_transcript"].with_suffix(".txt").read_text().splitlines()[0] == "Text:  "
    clean = set(G.read_corpus_ids(str(corpus))) - {str(v) for v in kinds.values()}
    assert clean.isdisjoint({str(v) for v in kinds.values()})
