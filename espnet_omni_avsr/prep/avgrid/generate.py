"""AVGRID: a generated GRID-style audio-visual corpus, written in the LRS3 release layout.

Sentences follow the GRID grammar (grammar.py), or with text="open" are plain English from Debian's
`fortunes` (open_text.py: test and validation speakers say sentences never spoken in training);
speech comes from flite and espeak-ng with phone
timing (tts.py); a 96x96 grayscale mouth video at 25 fps follows the spoken visemes (visemes.py,
mouth_renderer.py). Every speaker is one TTS voice with its own speaking rate, pitch, vocal-tract
length (speed factor), loudness, channel tilt and noise floor, and one face; about two thirds of the
speakers use flite (natural-sounding), the rest espeak-ng.

Layout (the same preparation code as for LRS3 applies)::

    <root>/trainval/<speaker>/<utt>.mp4   video only: H.264 (crf 18), yuv420p, 96x96, 25 fps
    <root>/trainval/<speaker>/<utt>.wav   16 kHz mono 16-bit PCM, duration = frames / 25 exactly
    <root>/trainval/<speaker>/<utt>.txt   "Text:  BIN BLUE AT F TWO NOW" (LRS3: two spaces), then a
                                          blank line and "WORD START END" word timings in seconds
                                          (a word whose phones espeak-ng reports under its
                                          neighbour, rare in open text, has no line)
    <root>/test/<speaker>/<utt>...        test speakers
    <root>/valid.id                       "trainval/<speaker>/<utt>" ids held out for validation
                                          (like LRS3's lrs3-valid.id): all utterances of the
                                          validation speakers, so train / valid / test are
                                          speaker-disjoint
    <root>/speakers.tsv                   speaker, split (train / valid / test), voice settings
    <root>/corrupt.tsv                    with --corrupt: the deliberately bad items, one a line:
                                          "<dir>/<speaker>/<utt><TAB>kind<TAB>description"
    <root>/.done                          the generation settings (JSON); written last

Speakers are split about 80/10/10 into train / valid / test, in proportion within each engine so
that every split has the same mix of flite and espeak-ng voices (flite has only five base voices:
a held-out speaker is a new face and new voice settings, not always a new base voice). Utterance k
is spoken by speaker k mod num_speakers. With --corrupt, the bad items go to training speakers.

Everything is a function of the seed: the same settings give byte-identical files whatever --nj,
on machines with the same libraries and CPU kind (each utterance draws from its own random
stream; TTS runs in a fresh state per utterance, see tts.py; x264 runs without its AVX-512
kernels, whose output varies from run to run).

Generation writes into `<root>.partial/` and renames it to `<root>` when complete; rerunning with
the same settings on a finished corpus does nothing, and on an interrupted one resumes.
"""
import json
import logging
import multiprocessing
import os
import platform
import shutil
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import av
import numpy as np
from scipy.signal import lfilter
from tqdm import tqdm

from espnet_omni_avsr.prep.avgrid import grammar, visemes
from espnet_omni_avsr.prep.avgrid.open_text import load_open_sentences
from espnet_omni_avsr.prep.avgrid.mouth_renderer import Appearance, render_blank, render_mouth
from espnet_omni_avsr.prep.avgrid.tts import (
    SAMPLE_RATE,
    EspeakEngine,
    FliteEngine,
    Phone,
    Speech,
    WordAlignmentError,
    change_speed,
)

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
FORMAT_VERSION = 1
SPLIT_DIRS = {"train": "trainval", "valid": "trainval", "test": "test"}

ESPEAK_LANGUAGES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-us-nyc")
ESPEAK_VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 5)) + (
    "klatt", "klatt2", "klatt3", "klatt4",
)
CORRUPT_KINDS: Dict[str, str] = {
    "corrupt_mp4": "the mp4 is cut short and overwritten with garbage: it does not decode",
    "missing_transcript": "mp4 and wav but no txt",
    "audio_only": "wav and txt but no mp4",
    "blank_frames": "a run of constant black frames in the middle of the video (face track lost)",
    "av_mismatch": "the video has half as many frames as the audio needs",
    "empty_transcript": "the Text: line is empty",
}

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speaker:
    name: str
    split: str  # train, valid or test
    engine: str  # flite or espeak
    voice: str
    tempo: float  # flite duration_stretch, or espeak words per minute
    pitch: float  # flite target f0 in Hz, or espeak pitch 0-99
    pitch_range: int  # espeak only
    speed: float  # resampling factor: > 1 shorter vocal tract, higher and faster
    level_db: float  # speech RMS in dBFS
    tilt: float  # first-order channel filter coefficient
    noise_db: float  # noise floor in dBFS
    anticipation: float  # coarticulation reach before a segment, s
    carryover: float  # after a segment, s
    visual_lead: float  # mouth shapes lead the sound by this much, s
    appearance: Appearance = field(default_factory=Appearance)

    @property
    def directory(self) -> str:
        return f"{SPLIT_DIRS[self.split]}/{self.name}"


@dataclass(frozen=True)
class Item:
    """One utterance to write: `kind` is "clean" or one of CORRUPT_KINDS."""

    index: int  # selects the utterance's random stream
    speaker: Speaker
    utt: str  # file stem, "00001"
    kind: str = "clean"

    @property
    def uid(self) -> str:
        return f"{self.speaker.directory}/{self.utt}"

    def files(self) -> List[str]:
        exts = {"missing_transcript": (".mp4", ".wav"), "audio_only": (".wav", ".txt")}.get(
            self.kind, (".mp4", ".wav", ".txt")
        )
        return [self.uid + ext for ext in exts]


@dataclass
class Utterance:
    words: List[str]
    audio: np.ndarray  # (N,) float32, N = frames * SAMPLES_PER_FRAME
    frames: np.ndarray  # (T, 96, 96) uint8
    phones: List[Phone]  # times in the written audio
    alphabet: str
    labels: np.ndarray  # (T,) viseme class at each frame centre


def _engines(num_speakers: int, flite_share: float) -> List[str]:
    """Exactly round(flite_share * n) flite speakers, spread evenly over the speaker indices."""
    return ["flite" if int((i + 1) * flite_share) > int(i * flite_share) else "espeak" for i in range(num_speakers)]


def _splits(engines: Sequence[str], seed: int) -> List[str]:
    """About 10% of the speakers each for valid and test (at least one each from 3 speakers on),
    drawn per engine in proportion, so every split has the same mix of flite and espeak voices."""
    num = len(engines)
    n_held = max(1, int(round(0.1 * num))) if num >= 3 else 0
    split = ["train"] * num
    groups = [[i for i, e in enumerate(engines) if e == engine] for engine in ("flite", "espeak")]
    n_flite = int(round(n_held * len(groups[0]) / num)) if num else 0
    for group, n in zip(groups, (n_flite, n_held - n_flite)):
        n = min(n, len(group) // 2)
        order = np.random.default_rng([seed, 2, num, len(group)]).permutation(group)
        for i in order[:n]:
            split[int(i)] = "test"
        for i in order[n : 2 * n]:
            split[int(i)] = "valid"
    return split


def make_speakers(num_speakers: int, seed: int, flite_share: float = 2 / 3) -> List[Speaker]:
    """Speaker i's voice settings and face depend on (seed, i) only; its engine and split on
    (seed, num_speakers, flite_share)."""
    engines = _engines(num_speakers, flite_share)
    split = _splits(engines, seed)
    width = max(3, len(str(num_speakers - 1)))
    speakers = []
    for i, engine in enumerate(engines):
        rng = np.random.default_rng([seed, 0, i])
        if engine == "flite":
            voice = str(rng.choice(["kal", "kal16", "awb", "rms", "slt", "awb", "slt", "rms"]))
            tempo = float(rng.uniform(0.85, 1.25))
            pitch = FliteEngine.NOMINAL_F0[voice] * float(rng.uniform(0.85, 1.2))
            pitch_range, speed = 0, float(rng.uniform(0.9, 1.1))
        else:
            voice = f"{rng.choice(ESPEAK_LANGUAGES)}+{rng.choice(ESPEAK_VARIANTS)}"
            tempo, pitch = float(rng.integers(130, 200)), float(rng.integers(25, 75))
            pitch_range, speed = int(rng.integers(30, 80)), float(rng.uniform(0.93, 1.07))
        speakers.append(
            Speaker(
                name=f"spk{i:0{width}d}",
                split=split[i],
                engine=engine,
                voice=voice,
                tempo=round(tempo, 3),
                pitch=round(pitch, 2),
                pitch_range=pitch_range,
                speed=round(speed, 3),
                level_db=round(float(rng.uniform(-26, -18)), 2),
                tilt=round(float(rng.uniform(-0.3, 0.6)), 3),
                noise_db=round(float(rng.uniform(-75, -55)), 2),
                anticipation=round(float(rng.uniform(0.035, 0.07)), 3),
                carryover=round(float(rng.uniform(0.025, 0.045)), 3),
                visual_lead=round(float(rng.uniform(0.0, 0.03)), 3),
                appearance=Appearance.sample(rng),
            )
        )
    return speakers


def make_items(num_utts: int, speakers: Sequence[Speaker], corrupt: bool = False) -> List[Item]:
    items, counts = [], [0] * len(speakers)
    for k in range(num_utts):
        s = k % len(speakers)
        counts[s] += 1
        items.append(Item(k, speakers[s], f"{counts[s]:05d}"))
    if corrupt:
        train = [i for i, s in enumerate(speakers) if s.split == "train"] or list(range(len(speakers)))
        for j, kind in enumerate(CORRUPT_KINDS):
            s = train[j % len(train)]
            counts[s] += 1
            items.append(Item(num_utts + j, speakers[s], f"{counts[s]:05d}", kind))
    return items


# The sentence sources (`--text`): each has sample(rng, split) -> words and tts_words(words).
TEXT_SOURCES = {"grid": grammar.GridSentences, "open": load_open_sentences}
# An open sentence the TTS reads as a different number of words ("ok" -> "o k") is replaced by
# another draw from the same stream, at most this many times.
MAX_SENTENCE_DRAWS = 20


def _synthesize(words: Sequence[str], spk: Speaker, rng: np.random.Generator, source) -> Speech:
    jitter = float(rng.uniform(0.95, 1.05))  # a speaker never says two sentences at quite the same rate
    tts_words = source.tts_words(words)
    if spk.engine == "flite":
        speech = FliteEngine().synthesize(tts_words, spk.voice, spk.tempo * jitter, spk.pitch)
    elif spk.engine == "espeak":
        rate = int(round(spk.tempo / jitter))
        speech = EspeakEngine().synthesize(tts_words, spk.voice, rate, int(spk.pitch), spk.pitch_range)
    else:
        raise ValueError(f"unknown engine {spk.engine!r}")
    return change_speed(speech, spk.speed)


def _sentence_and_speech(spk: Speaker, rng: np.random.Generator, text: str) -> Tuple[List[str], Speech]:
    source = TEXT_SOURCES[text]()
    if text == "grid":  # every GRID sentence aligns: one draw, as the corpus always had
        words = source.sample(rng, spk.split)
        return words, _synthesize(words, spk, rng, source)
    problems = []
    for _ in range(MAX_SENTENCE_DRAWS):
        words = source.sample(rng, spk.split)
        try:
            return words, _synthesize(words, spk, rng, source)
        except WordAlignmentError as exc:
            _logger.info("%s: another sentence drawn, the TTS did not align this one (%s)", spk.name, exc)
            problems.append(str(exc))
    raise WordAlignmentError(f"no sentence of {MAX_SENTENCE_DRAWS} draws aligned for {spk.name}: {problems[-1]}")


def make_utterance(index: int, spk: Speaker, seed: int, text: str = "grid") -> Utterance:
    """Synthesises and renders utterance `index` of the corpus with seed `seed` (no files written);
    `text` names the sentence source (TEXT_SOURCES)."""
    rng = np.random.default_rng([seed, 1, index])
    words, speech = _sentence_and_speech(spk, rng, text)

    # channel: tilt, level, silence around the sentence, noise floor; length = whole video frames
    audio = lfilter([1.0, -spk.tilt], [1.0], speech.audio).astype(np.float32)
    rms = float(np.sqrt(np.mean(audio**2))) + 1e-9
    audio *= 10 ** (spk.level_db / 20) / rms
    lead = int(rng.uniform(0.05, 0.3) * SAMPLE_RATE)
    tail = int(rng.uniform(0.05, 0.3) * SAMPLE_RATE)
    total = lead + len(audio) + tail
    num_frames = -(-total // SAMPLES_PER_FRAME)
    padded = np.zeros(num_frames * SAMPLES_PER_FRAME, dtype=np.float32)
    padded[lead : lead + len(audio)] = audio
    padded += (10 ** (spk.noise_db / 20)) * rng.standard_normal(len(padded)).astype(np.float32)
    padded = np.clip(padded, -0.99, 0.99)
    offset = lead / SAMPLE_RATE
    phones = [Phone(p.name, p.start + offset, p.end + offset, p.word) for p in speech.phones]

    # mouth: per-token target jitter, coarticulation, rendering
    segments = visemes.viseme_segments(phones, speech.alphabet)
    targets = visemes.TARGETS[[s[1] for s in segments]].copy()
    targets += rng.normal(0.0, 0.04, targets.shape).astype(np.float32)
    targets[:, 0] = visemes.TARGETS[[s[1] for s in segments], 0] * rng.uniform(0.8, 1.2, len(segments))
    np.clip(targets, 0.0, 1.0, out=targets)
    times = (np.arange(num_frames) + 0.5) / FPS + spk.visual_lead
    track = visemes.target_track(
        segments, times, targets=targets, anticipation=spk.anticipation, carryover=spk.carryover
    )
    frames = render_mouth(track, spk.appearance, rng, fps=FPS)
    labels = visemes.frame_labels(phones, speech.alphabet, num_frames, FPS)
    return Utterance(list(words), padded, frames, phones, speech.alphabet, labels)


# ----------------------------------------------------------------------------- writing files


def _x264_params() -> str:
    """x264 options for reproducible output: no AVX-512 kernels (PyAV's x264 gives different
    bytes from run to run with them); the other SIMD levels give bit-identical streams."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return ""
    names = [
        ("MMX2", "mmx"), ("SSE", "sse"), ("SSE2", "sse2"), ("SSE2Fast", "sse2"), ("SSE3", "pni"),
        ("SSSE3", "ssse3"), ("SSE4.1", "sse4_1"), ("SSE4.2", "sse4_2"), ("LZCNT", "abm"), ("AVX", "avx"),
        ("FMA3", "fma"), ("BMI1", "bmi1"), ("BMI2", "bmi2"), ("AVX2", "avx2"),
    ]
    enabled = [x264 for x264, linux in names if linux in flags]
    return "asm=" + ",".join(enabled) if enabled else "asm=0"


_X264_PARAMS: Optional[str] = None


def write_video(path: str, frames: np.ndarray, fps: int = FPS, crf: int = 18) -> None:
    """(T, H, W) uint8 gray -> H.264 mp4 (yuv420p, limited range, neutral chroma)."""
    global _X264_PARAMS
    if _X264_PARAMS is None:
        _X264_PARAMS = _x264_params()
    num, height, width = frames.shape
    options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
    if _X264_PARAMS:
        options["x264-params"] = _X264_PARAMS
    luma = (16.0 + frames.astype(np.float32) * (219.0 / 255.0) + 0.5).astype(np.uint8)
    chroma = np.full((height // 2, width), 128, dtype=np.uint8)
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num):
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma[i], chroma]), format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_wav(path: str, audio: np.ndarray) -> None:
    """float32 in [-1, 1] -> 16 kHz mono 16-bit PCM wav."""
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm.tobytes())


def read_video(path: str) -> np.ndarray:
    """mp4 -> (T, H, W) uint8 gray."""
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="gray") for f in container.decode(video=0)])


def _write_corrupt_video(path: str, frames: np.ndarray, seed: int, index: int) -> None:
    """A valid mp4 cut to its first third and followed by random bytes."""
    write_video(path, frames)
    data = Path(path).read_bytes()
    junk = np.random.default_rng([seed, 3, index]).integers(0, 256, len(data) // 2, dtype=np.uint8)
    Path(path).write_bytes(data[: len(data) // 3] + junk.tobytes())


def _transcript_text(words: Sequence[str], phones: Sequence[Phone]) -> str:
    lines = [f"Text:  {grammar.transcript(words)}", "", "WORD START END"]
    for w, word in enumerate(words):
        spans = [(p.start, p.end) for p in phones if p.word == w]
        if spans:
            lines.append(f"{word.upper()} {min(s for s, _ in spans):.2f} {max(e for _, e in spans):.2f}")
    return "\n".join(lines) + "\n"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    write(str(tmp))
    os.replace(tmp, path)


def write_item(root: Path, item: Item, seed: int, text: str = "grid") -> Tuple[str, int]:
    """Writes one item's files under root (skipping a complete one); returns (uid, num_frames)."""
    if all((root / f).exists() for f in item.files()):
        return item.uid, -1
    utt = make_utterance(item.index, item.speaker, seed, text)
    frames, words = utt.frames, utt.words
    if item.kind == "blank_frames":
        frames = frames.copy()
        start = len(frames) // 3
        frames[start : start + max(3, len(frames) // 3)] = render_blank(1)[0]
    elif item.kind == "av_mismatch":
        frames = frames[: max(1, len(frames) // 2)]
    elif item.kind == "empty_transcript":
        words = []
    base = root / item.uid
    base.parent.mkdir(parents=True, exist_ok=True)
    files = item.files()
    if item.uid + ".mp4" in files:
        if item.kind == "corrupt_mp4":
            _atomic(base.with_suffix(".mp4"), lambda p: _write_corrupt_video(p, frames, seed, item.index))
        else:
            _atomic(base.with_suffix(".mp4"), lambda p: write_video(p, frames))
    if item.uid + ".wav" in files:
        _atomic(base.with_suffix(".wav"), lambda p: write_wav(p, utt.audio))
    if item.uid + ".txt" in files:
        _atomic(base.with_suffix(".txt"), lambda p: Path(p).write_text(_transcript_text(words, utt.phones)))
    return item.uid, len(frames)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def _write_star(args) -> Tuple[str, int]:
    return write_item(*args)


def _settings(num_utts: int, num_speakers: int, seed: int, corrupt: bool, text: str) -> Dict:
    settings = {
        "corpus": "avgrid",
        "format_version": FORMAT_VERSION,
        "num_utts": num_utts,
        "num_speakers": num_speakers,
        "seed": seed,
        "corrupt": corrupt,
    }
    if text != "grid":  # GRID corpora written before the option keep their .done
        settings["text"] = text
    return settings


def _write_tables(root: Path, speakers: Sequence[Speaker], items: Sequence[Item]) -> None:
    valid = sorted(it.uid for it in items if it.speaker.split == "valid" and it.kind == "clean")
    (root / "valid.id").write_text("".join(f"{u}\n" for u in valid))
    cols = ["name", "split", "engine", "voice", "tempo", "pitch", "pitch_range", "speed", "level_db", "tilt"]
    cols.append("noise_db")
    rows = ["\t".join(cols)] + ["\t".join(str(row[c]) for c in cols) for row in map(asdict, speakers)]
    (root / "speakers.tsv").write_text("\n".join(rows) + "\n")
    bad = [it for it in items if it.kind != "clean"]
    if bad:
        (root / "corrupt.tsv").write_text("".join(f"{it.uid}\t{it.kind}\t{CORRUPT_KINDS[it.kind]}\n" for it in bad))


def generate(
    out_dir: str,
    num_utts: int = 1000,
    num_speakers: int = 40,
    seed: int = 0,
    nj: int = 2,
    corrupt: bool = False,
    progress: bool = True,
    text: str = "grid",
) -> Path:
    """Writes the corpus to out_dir (see the module docstring); returns its path.

    With nj > 1 the workers are started with multiprocessing's "spawn" (a forked worker could
    inherit locks held by the caller's threads), so a calling script needs the usual
    `if __name__ == "__main__":` guard.
    """
    if num_utts < 1 or num_speakers < 1:
        raise ValueError(f"need num_utts >= 1 and num_speakers >= 1, got {num_utts}, {num_speakers}")
    if nj < 1:
        raise ValueError(f"nj must be >= 1, got {nj}")
    if text not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {text!r}; choose from {sorted(TEXT_SOURCES)}")
    TEXT_SOURCES[text]()  # a missing text source fails here, before any worker starts
    root = Path(out_dir)
    settings = _settings(num_utts, num_speakers, seed, corrupt, text)
    settings_text = json.dumps(settings, sort_keys=True) + "\n"
    if root.exists():
        done = root / ".done"
        if done.exists() and done.read_text() == settings_text:
            _logger.info("%s is complete, nothing to do", root)
            return root
        if any(root.iterdir()):
            raise FileExistsError(
                f"{root} exists and is not an AVGRID corpus with these settings ({settings}); "
                "remove it or choose another --out_dir"
            )
        root.rmdir()
    staging = root.with_name(root.name + ".partial")
    marker = staging / ".settings"
    if staging.exists():
        # a run killed at the end may have swapped its .settings for the .done already
        made = [m for m in (marker, staging / ".done") if m.exists()]
        if not made:
            raise FileExistsError(f"{staging} exists but was not made by this generator; remove it")
        if any(m.read_text() != settings_text for m in made):
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    marker.write_text(settings_text)

    speakers = make_speakers(num_speakers, seed)
    items = make_items(num_utts, speakers, corrupt)
    jobs = [(staging, it, seed, text) for it in items]
    bar = tqdm(total=len(jobs), desc="avgrid" if text == "grid" else f"avgrid ({text} text)", unit="utt", disable=not progress)
    if nj == 1:
        for job in jobs:
            _write_star(job)
            bar.update()
    else:
        # spawn: a forked worker can inherit locks held by the caller's threads (OpenCV's pool)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(nj, initializer=_worker_init) as pool:
            for _ in pool.imap_unordered(_write_star, jobs, chunksize=4):
                bar.update()
            pool.close()  # workers exit normally and stop their TTS servers
            pool.join()
    bar.close()
    _write_tables(staging, speakers, items)
    # .done before .settings goes: a killed run leaves staging with one of them, and resumes
    _atomic(staging / ".done", lambda p: Path(p).write_text(settings_text))
    marker.unlink()
    os.rename(staging, root)
    return root


def read_corpus_ids(root: str) -> Iterable[str]:
    """All "<dir>/<speaker>/<utt>" ids that have a transcript, sorted."""
    base = Path(root)
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.glob("*/*/*.txt"))
