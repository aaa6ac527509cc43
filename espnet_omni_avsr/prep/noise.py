"""Noise for robustness experiments: babble built from training speech, fixed noisy test sets, and
random noise for training-time augmentation.

Definitions (the papers leave them implicit; here they are fixed and recorded):

* **SNR** is ``10 log10(P_speech / P_noise)`` with ``P = mean(x ** 2)`` over all samples of the
  utterance (silences included) and of the noise segment of the same length that is added to it.
  The noise segment is scaled by ``sqrt(P_speech / (P_noise * 10 ** (snr / 10)))``.
* **Clipping**: when the mixture's peak exceeds ``CLIP_PEAK``, speech and noise are scaled down
  together (the SNR is unchanged); the factor is recorded.
* **Babble** (``make_babble``): ``num_speakers`` (default 30, the number of utterances AV-HuBERT mixes
  for its LRS3 babble) streams, each from a different training speaker, summed. A stream is that
  speaker's utterances, drawn at random with replacement, each scaled to unit RMS, concatenated and
  started at a random point, so the voices do not start together. The sum is scaled to an RMS of
  ``BABBLE_RMS`` (-20 dBFS; the level is irrelevant for mixing at an SNR) and written as 16-bit PCM.
  Default length 120 s: long enough that the segments drawn for a test set of a few thousand
  utterances of a few seconds rarely repeat exactly, and small (3.8 MB). ``<out>.json`` records the
  seed, speakers and the utterances of every stream; ``<out stem>_speakers.txt`` lists the speakers
  heard in it, one a line (``babble_speakers_path``).
  With fewer training speakers than streams, speakers are reused (different utterances and
  offsets) and a warning says so.
* **Speaker folds** (``speaker_fold=(i, n)``, ``split_speakers``): the training set's speaker ids are
  sorted, permuted by a generator seeded with ``derive_seed(seed, "speaker_fold")``, and the speaker
  at position j of that order goes to fold ``j mod n``: n disjoint subsets of sizes differing by at
  most one, the same for the same speakers and seed. Stage 5 (``bin/make_noisy_sets``) builds the
  **training babble** from fold ``TRAIN_BABBLE_FOLD`` = (0, 2) and the **test babble** from fold
  ``TEST_BABBLE_FOLD`` = (1, 2), so no voice of the noise a model trains on is in the noise it is
  tested with. The record holds a hash of the whole speaker list it split (``speakers_sha256``): a
  babble of another training set is not taken for this one's.
* **Noisy test sets** (``make_noisy_set``): for each utterance, the noise file and the offset are drawn
  from a generator seeded with ``sha256(f"{seed}/{utt_id}")``: the same segment whatever the order of
  the utterances, the set they are in or the run, and the same segment at every SNR (only its level
  changes). Shorter noise wraps around. Output: ``<src>_snr<X>/`` (``noisy_set_name``) with
  ``wav/<utt>.wav`` (16 kHz mono, ``subtype``), ``wav.scp``, every other top-level file of the source
  copied unchanged, ``snr.tsv`` (utt, noise file, offset, target and measured SNR, noise gain, clip
  scale; measured on the written, quantised file), ``noise_speakers.txt`` when the noise is a babble
  (its speakers, one a line: ``NOISE_SPEAKERS``) and ``.done`` (the arguments, JSON). It is written
  into ``<out>.partial`` and renamed when complete; a rerun with the same arguments does nothing.
* **Training augmentation** (``NoiseAugmenter``): noise file, offset and SNR drawn at random per call.

Paths in the written ``wav.scp`` are ``<out_dir as given>/wav/<utt>.wav``: relative when ``out_dir`` is
relative (to the directory the stage runs in, as the rest of a Kaldi-style dump), absolute otherwise.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from espnet_omni_avsr.names import MODALITIES, format_snr, noisy_set_name  # noqa: F401 (re-exported)
from espnet_omni_avsr.prep.kaldi_dir import read_table, write_table
from espnet_omni_avsr.utils.atomic_files import atomic_write_text

SAMPLE_RATE = 16000
CLIP_PEAK = 0.99
BABBLE_RMS = 0.1
DEFAULT_TRAIN_SNRS = (-5, 0, 5, 10, 15, 20, None)
MARKER = ".done"
AUDIO_SCP = MODALITIES["audio"].scp
NOISE_SPEAKERS = "noise_speakers.txt"  # in a noisy set: the speakers of the babble it was mixed with
SPEAKERS_SUFFIX = "_speakers.txt"  # beside a babble: <stem>_speakers.txt
TRAIN_BABBLE_FOLD = (0, 2)
TEST_BABBLE_FOLD = (1, 2)
_COPIED_OVER = (AUDIO_SCP, "snr.tsv", MARKER, NOISE_SPEAKERS)

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- small helpers


def derive_seed(seed: int, key: str) -> int:
    """A 64-bit seed from (seed, key) that does not depend on anything else (order, process, run)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode("utf-8")).digest()[:8], "little")


def power(x: np.ndarray) -> float:
    """Mean square over all samples (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x * x)) if x.size else 0.0


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    return 10.0 * math.log10(power(speech) / power(noise))


def read_mono(path: PathLike, sample_rate: Optional[int] = SAMPLE_RATE, what: str = "audio") -> np.ndarray:
    """Read a wav as float64 mono; multi-channel is averaged, other rates resampled (both logged).
    ``sample_rate=None`` keeps the file's rate."""
    try:
        x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as e:  # soundfile raises several types; name the file and its role
        raise ValueError(f"{what} {path}: cannot read: {e}") from e
    if x.shape[1] > 1:
        logging.info(f"{what} {path}: {x.shape[1]} channels averaged to mono")
    x = x.mean(axis=1)
    if sample_rate is not None and sr != sample_rate:
        logging.info(f"{what} {path}: resampled {sr} -> {sample_rate} Hz")
        g = math.gcd(sr, sample_rate)
        x = resample_poly(x, sample_rate // g, sr // g)
    return x


def mix_at_snr(
    speech: np.ndarray, noise: np.ndarray, snr: float, clip_peak: Optional[float] = CLIP_PEAK
) -> Tuple[np.ndarray, float, float]:
    """Add ``noise`` (same length) to ``speech`` at ``snr`` dB.

    Returns (mixture, noise gain, clip scale): mixture = clip_scale * (speech + gain * noise), where
    clip_scale < 1 only when the peak would exceed ``clip_peak`` (None: never scale).
    Raises ValueError when either signal has zero power.
    """
    if speech.shape != noise.shape:
        raise ValueError(f"speech {speech.shape} and noise {noise.shape} differ in shape")
    p_s, p_n = power(speech), power(noise)
    if p_s <= 0.0:
        raise ValueError("speech is silent (zero power): no SNR can be defined")
    if p_n <= 0.0:
        raise ValueError("noise segment is silent (zero power)")
    gain = math.sqrt(p_s / (p_n * 10.0 ** (snr / 10.0)))
    mix = np.asarray(speech, dtype=np.float64) + gain * np.asarray(noise, dtype=np.float64)
    scale = 1.0
    peak = float(np.max(np.abs(mix)))
    if clip_peak is not None and peak > clip_peak:
        scale = clip_peak / peak
        mix *= scale
    return mix, gain, scale


# --------------------------------------------------------------------------- noise files


class NoiseBank:
    """A fixed, sorted list of noise wavs and segments drawn from them.

    Files at ``sample_rate`` are read segment by segment from disk (no memory held); files at another
    rate or with several channels are loaded whole, converted once and cached.
    """

    def __init__(self, paths: Sequence[PathLike], sample_rate: int = SAMPLE_RATE):
        if not paths:
            raise ValueError("NoiseBank: no noise files given")
        self.paths: List[str] = sorted(str(p) for p in paths)
        self.sample_rate = sample_rate
        self._frames: List[int] = []
        self._native: List[bool] = []
        self._cache: Dict[int, np.ndarray] = {}
        for p in self.paths:
            try:
                info = sf.info(p)
            except Exception as e:  # soundfile raises several types; name the file
                raise ValueError(f"noise file {p} cannot be read as audio: {e}") from e
            native = info.samplerate == sample_rate and info.channels == 1
            frames = info.frames if native else int(round(info.frames * sample_rate / info.samplerate))
            if frames == 0:
                raise ValueError(f"noise file {p} is empty")
            self._frames.append(frames)
            self._native.append(native)

    @classmethod
    def from_dir(cls, noise_dir: PathLike, sample_rate: int = SAMPLE_RATE) -> "NoiseBank":
        """Every ``*.wav`` below ``noise_dir`` (recursive), e.g. MUSAN's ``noise/`` or ``music/``."""
        paths = [p for p in Path(noise_dir).rglob("*") if p.suffix.lower() == ".wav" and p.is_file()]
        if not paths:
            raise FileNotFoundError(f"no .wav files under noise directory {noise_dir}")
        return cls(paths, sample_rate)

    def __len__(self) -> int:
        return len(self.paths)

    def num_frames(self, index: int) -> int:
        return self._frames[index]

    def fingerprint(self) -> List[dict]:
        """Identity of the files (name, size, sha256 of the first and last 64 KiB), for markers: a
        moved or copied noise folder still matches, regenerated noise does not."""
        out = []
        for p in self.paths:
            size = os.path.getsize(p)
            h = hashlib.sha256()
            with open(p, "rb") as f:
                h.update(f.read(65536))
                if size > 65536:
                    f.seek(max(65536, size - 65536))
                    h.update(f.read())
            out.append({"name": os.path.basename(p), "size": size, "sha256_head_tail": h.hexdigest()})
        return out

    def _whole(self, index: int) -> np.ndarray:
        if index not in self._cache:
            self._cache[index] = read_mono(self.paths[index], self.sample_rate, what="noise")
        return self._cache[index]

    def segment(self, index: int, offset: int, length: int) -> np.ndarray:
        """``length`` samples of file ``index`` from ``offset``, wrapping around at the end."""
        n = self._frames[index]
        if not 0 <= offset < n:
            raise ValueError(f"offset {offset} outside noise file {self.paths[index]} ({n} samples)")
        if not self._native[index]:
            return np.take(self._whole(index), np.arange(offset, offset + length), mode="wrap")
        if offset + length <= n:
            seg, _ = sf.read(self.paths[index], start=offset, frames=length, dtype="float64")
            return seg
        whole, _ = sf.read(self.paths[index], dtype="float64")
        return np.take(whole, np.arange(offset, offset + length), mode="wrap")

    def draw(self, rng: np.random.Generator, length: int) -> Tuple[int, int, np.ndarray]:
        """A random file (uniform over files) and offset -> (file index, offset, segment)."""
        index = int(rng.integers(len(self.paths)))
        n = self._frames[index]
        offset = int(rng.integers(n - length + 1)) if n >= length else int(rng.integers(n))
        return index, offset, self.segment(index, offset, length)


def load_noise(noise: Union[NoiseBank, PathLike, Sequence[PathLike]]) -> NoiseBank:
    """A NoiseBank from a bank, a wav file, a folder of wavs, or a list of wav files."""
    if isinstance(noise, NoiseBank):
        return noise
    if isinstance(noise, (str, os.PathLike)):
        return NoiseBank.from_dir(noise) if Path(noise).is_dir() else NoiseBank([noise])
    return NoiseBank(list(noise))


# --------------------------------------------------------------------------- babble


def babble_speakers_path(babble_wav: PathLike) -> Path:
    """``dir/babble.wav`` -> ``dir/babble_speakers.txt``: the speakers heard in that babble."""
    babble_wav = Path(babble_wav)
    return babble_wav.with_name(babble_wav.stem + SPEAKERS_SUFFIX)


def read_speaker_list(path: PathLike) -> List[str]:
    """The speaker ids of a ``*_speakers.txt`` / ``noise_speakers.txt`` file (one a line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"speaker list {path} is missing")
    speakers = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not speakers:
        raise ValueError(f"speaker list {path} is empty")
    return speakers


def _write_speaker_list(path: Path, speakers: Sequence[str]) -> None:
    atomic_write_text(str(path), "".join(f"{spk}\n" for spk in sorted(speakers)))


def split_speakers(speakers: Sequence[str], seed: int, fold: Tuple[int, int]) -> List[str]:
    """Fold ``fold = (i, n)`` of ``speakers``: the i-th of n disjoint subsets (module docstring)."""
    i, n = fold
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"speaker_fold must be (i, n) with 0 <= i < n, got {fold}")
    speakers = sorted(set(speakers))
    order = np.random.default_rng(derive_seed(seed, "speaker_fold")).permutation(len(speakers))
    return sorted(speakers[j] for j in order[i::n])


def check_disjoint_babbles(train_wav: PathLike, test_wav: PathLike) -> List[str]:
    """Raise ValueError when the speaker lists of the two babbles share a speaker (or one is
    missing: FileNotFoundError); return the test babble's speakers."""
    train_list, test_list = babble_speakers_path(train_wav), babble_speakers_path(test_wav)
    test = read_speaker_list(test_list)
    shared = sorted(set(read_speaker_list(train_list)) & set(test))
    if shared:
        raise ValueError(
            f"the training babble {train_wav} and the test babble {test_wav} share {len(shared)} speaker(s) "
            f"({train_list}, {test_list}): {shared[:10]}; remove both (and the noisy sets) and run again"
        )
    return test


def make_babble(
    wav_scp: PathLike,
    utt2spk: PathLike,
    out_wav: PathLike,
    num_speakers: int = 30,
    duration_s: float = 120.0,
    seed: int = 0,
    speaker_fold: Optional[Tuple[int, int]] = None,
    sample_rate: int = SAMPLE_RATE,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Write babble noise built from the utterances of ``wav_scp`` (see the module docstring).

    Returns the record also written to ``<out_wav minus .wav>.json``; the speakers heard are listed
    in ``babble_speakers_path(out_wav)``. An existing babble whose record holds the same arguments is
    kept (status "skipped"); one made with other arguments (another training set included) is an
    error unless ``force``. The list and the record are written before the wav (each written to a
    temporary file and renamed), so an existing wav always has both.
    """
    out_wav = Path(out_wav)
    record_path = out_wav.with_suffix(".json")
    speakers_path = babble_speakers_path(out_wav)
    if num_speakers < 1 or duration_s <= 0:
        raise ValueError(f"num_speakers ({num_speakers}) must be >= 1 and duration_s ({duration_s}) > 0")
    wavs = read_table(str(wav_scp))
    spk_of = read_table(str(utt2spk))
    missing = [u for u in wavs if u not in spk_of]
    if missing:
        raise ValueError(f"{len(missing)} utterances of {wav_scp} have no speaker in {utt2spk}: {missing[:10]}")
    by_spk: Dict[str, List[str]] = {}
    for utt in wavs:
        by_spk.setdefault(spk_of[utt], []).append(utt)
    all_speakers = sorted(by_spk)
    args = {
        "wav_scp": os.path.normpath(wav_scp),
        "speakers_sha256": hashlib.sha256("\n".join(all_speakers).encode("utf-8")).hexdigest(),
        "num_speakers": int(num_speakers),
        "duration_s": float(duration_s),
        "seed": int(seed),
        "speaker_fold": list(speaker_fold) if speaker_fold else None,
        "sample_rate": int(sample_rate),
    }
    if out_wav.exists() and not force:
        old = json.loads(record_path.read_text()) if record_path.is_file() else None
        if old is not None and old.get("args") == args:
            if not speakers_path.is_file():  # the list is derived from the record: rewrite it
                _write_speaker_list(speakers_path, old["speakers"])
            logging.info(f"babble {out_wav} exists with the same arguments: skipped")
            return dict(old, status="skipped")
        raise FileExistsError(
            f"{out_wav} exists but {record_path} "
            + ("is missing" if old is None else f"holds other arguments ({old.get('args')} vs {args})")
            + ": remove it or pass force"
        )
    speakers = all_speakers if speaker_fold is None else split_speakers(all_speakers, seed, speaker_fold)
    if not speakers:
        raise ValueError(
            f"no speakers left in {wav_scp} for speaker_fold={speaker_fold} ({len(all_speakers)} speakers in all)"
        )

    rng = np.random.default_rng(derive_seed(seed, "babble"))
    chosen = [speakers[j] for j in rng.permutation(len(speakers))[:num_speakers]]
    if len(chosen) < num_speakers:
        logging.warning(
            f"babble: only {len(speakers)} speakers for {num_speakers} streams; "
            f"{num_speakers - len(speakers)} streams reuse a speaker (other utterances and offsets)"
        )
        chosen += [speakers[j] for j in rng.integers(len(speakers), size=num_speakers - len(speakers))]

    total = int(round(duration_s * sample_rate))
    babble = np.zeros(total, dtype=np.float64)
    streams, skipped_silent = [], set()
    for spk in tqdm(chosen, desc="babble streams", unit="spk", disable=not progress):
        pieces, used, filled = [], [], 0
        start = None
        while start is None or filled < start + total:
            utt = by_spk[spk][int(rng.integers(len(by_spk[spk])))]
            x = read_mono(wavs[utt], sample_rate, what=f"utterance {utt}")
            p = power(x)
            if p <= 0.0:
                skipped_silent.add(utt)
                if skipped_silent.issuperset(by_spk[spk]):
                    raise RuntimeError(f"babble: every utterance of speaker {spk} is silent")
                continue
            pieces.append(x / math.sqrt(p))
            used.append(utt)
            if start is None:  # a random start inside the first utterance
                start = int(rng.integers(len(x)))
            filled += len(x)
        stream = np.concatenate(pieces)[start:start + total]
        babble += stream
        streams.append({"speaker": spk, "start": start, "utterances": used})
    if skipped_silent:
        silent = sorted(skipped_silent)
        logging.warning(f"babble: skipped {len(silent)} silent utterances: {silent[:10]}")
    babble *= BABBLE_RMS / math.sqrt(power(babble))
    peak = float(np.max(np.abs(babble)))
    if peak > CLIP_PEAK:
        babble *= CLIP_PEAK / peak
    out_wav.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "args": args,
        "speakers": sorted(set(chosen)),
        "num_distinct_speakers": len(set(chosen)),
        "num_fold_speakers": len(speakers),
        "streams": streams,
        "rms": BABBLE_RMS,
        "definition": "sum of unit-RMS utterance streams, one speaker each; see espnet_omni_avsr/prep/noise.py",
    }
    _write_speaker_list(speakers_path, record["speakers"])
    atomic_write_text(str(record_path), json.dumps(record, indent=1) + "\n")
    tmp = out_wav.with_name(out_wav.name + ".partial.wav")
    sf.write(str(tmp), babble.astype(np.float32), sample_rate, subtype="PCM_16")
    os.replace(tmp, out_wav)
    logging.info(f"babble: {duration_s:g} s from {len(set(chosen))} speakers -> {out_wav}")
    return dict(record, status="written")


# --------------------------------------------------------------------------- noisy test sets


def make_noisy_set(
    src_dir: PathLike,
    out_dir: PathLike,
    noise: Union[NoiseBank, PathLike, Sequence[PathLike]],
    snr: float,
    seed: int = 0,
    subtype: str = "PCM_16",
    force: bool = False,
    progress: bool = True,
    noise_speakers: Optional[Sequence[str]] = None,
) -> dict:
    """Write a fixed noisy copy of the Kaldi-style set ``src_dir`` at ``snr`` dB (module docstring).

    ``noise_speakers``: the speakers of the babble ``noise`` is (written to ``NOISE_SPEAKERS`` in the
    set and recorded in its marker); None for noise that is not speech of known speakers.
    Returns a summary: status ("written" / "skipped"), number of utterances, clipped utterance ids,
    mean/min/max measured SNR.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    bank = load_noise(noise)
    args = {
        "src": os.path.normpath(src_dir),
        "snr_db": float(snr),
        "seed": int(seed),
        "subtype": subtype,
        "noise": bank.fingerprint(),
    }
    if noise_speakers is not None:
        if not noise_speakers:
            raise ValueError(f"{out_dir}: noise_speakers is empty")
        args["noise_speakers"] = sorted(set(noise_speakers))
    marker = out_dir / MARKER
    if out_dir.exists() and not force:
        if marker.is_file():
            old = json.loads(marker.read_text())
            if old.get("args") == args:
                logging.info(f"{out_dir} is complete with the same arguments: skipped")
                return dict(old.get("summary", {}), status="skipped")
            raise FileExistsError(
                f"{out_dir} was made with other arguments ({marker}): remove it or pass force "
                f"(old {old.get('args')}, new {args})"
            )
        raise FileExistsError(f"{out_dir} exists without {MARKER} (incomplete or foreign): remove it or pass force")
    if out_dir.exists():
        shutil.rmtree(out_dir)

    wav_scp = read_table(str(src_dir / AUDIO_SCP))
    bad = [u for u in wav_scp if "/" in u]
    if bad:
        raise ValueError(f"{src_dir}/{AUDIO_SCP}: utterance ids with '/' cannot name files: {bad[:10]}")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "wav").mkdir(parents=True)
    for f in sorted(src_dir.iterdir()):
        if f.is_file() and f.name not in _COPIED_OVER and ".tmp" not in f.name:
            shutil.copy2(f, tmp / f.name)

    rows, clipped, measured_all, new_scp = [], [], [], {}
    for utt, path in tqdm(wav_scp.items(), desc=f"{out_dir.name}", unit="utt", disable=not progress):
        try:
            info = sf.info(path)
            speech, _ = sf.read(path, dtype="float64")
        except Exception as e:  # soundfile raises several types; name the utterance
            raise ValueError(f"utterance {utt}: cannot read {path}: {e}") from e
        if info.samplerate != SAMPLE_RATE or info.channels != 1:
            raise ValueError(
                f"utterance {utt}: {path} is {info.samplerate} Hz, {info.channels} channel(s); "
                f"expected {SAMPLE_RATE} Hz mono"
            )
        rng = np.random.default_rng(derive_seed(seed, utt))
        index, offset, seg = bank.draw(rng, len(speech))
        try:
            mix, gain, scale = mix_at_snr(speech, seg, snr)
        except ValueError as e:
            raise ValueError(
                f"utterance {utt} ({path}) with noise {bank.paths[index]} at offset {offset}: {e}"
            ) from e
        name = f"{utt}.wav"
        sf.write(str(tmp / "wav" / name), mix, SAMPLE_RATE, subtype=subtype)
        written, _ = sf.read(str(tmp / "wav" / name), dtype="float64")
        clean = scale * speech
        measured = snr_db(clean, written - clean)
        if scale < 1.0:
            clipped.append(utt)
        measured_all.append(measured)
        rows.append((utt, bank.paths[index], offset, float(snr), measured, gain, scale))
        new_scp[utt] = os.path.join(str(out_dir), "wav", name)
    write_table(str(tmp / AUDIO_SCP), new_scp)
    if noise_speakers is not None:
        _write_speaker_list(tmp / NOISE_SPEAKERS, args["noise_speakers"])
    with open(tmp / "snr.tsv", "w", encoding="utf-8") as f:
        f.write("utt\tnoise_file\toffset\ttarget_snr_db\tmeasured_snr_db\tnoise_gain\tclip_scale\n")
        for utt, nf, off, tgt, meas, gain, scale in rows:
            f.write(f"{utt}\t{nf}\t{off}\t{tgt:g}\t{meas:.4f}\t{gain:.6g}\t{scale:.6g}\n")
    if clipped:
        logging.warning(
            f"{out_dir.name}: {len(clipped)} of {len(rows)} mixtures peaked above {CLIP_PEAK} and were scaled "
            f"down (speech and noise together, SNR kept): {clipped[:10]}{' ...' if len(clipped) > 10 else ''}"
        )
    summary = {
        "num_utts": len(rows),
        "clipped": clipped,
        "measured_snr_db": {
            "mean": float(np.mean(measured_all)) if measured_all else None,
            "min": float(np.min(measured_all)) if measured_all else None,
            "max": float(np.max(measured_all)) if measured_all else None,
        },
    }
    (tmp / MARKER).write_text(json.dumps({"args": args, "summary": summary}, indent=1) + "\n")
    os.replace(tmp, out_dir)
    logging.info(f"{out_dir}: {len(rows)} utterances at {snr:g} dB ({len(clipped)} rescaled against clipping)")
    return dict(summary, status="written")


# --------------------------------------------------------------------------- training augmentation


@dataclass
class AugmentInfo:
    snr: Optional[float]
    noise_file: Optional[str]
    offset: Optional[int]
    clip_scale: float = 1.0


class NoiseAugmenter:
    """Training-time noise: ``aug(wave)`` returns a noisy copy of a 16 kHz waveform.

    With probability ``prob`` an SNR is drawn uniformly from ``snrs`` (``None`` = keep clean), then a
    random file and offset of the noise; otherwise the wave is returned unchanged (a copy). Mixing is
    ``mix_at_snr`` (the same as for the test sets, including the clipping rule).

    Randomness: ``rng`` passed to ``augment``/``__call__`` wins; else a generator per process seeded
    from ``(seed, DataLoader worker id)`` (``seed=None``: fresh entropy), so workers differ.

    Args:
        noise_wavs: a wav file, a folder of wavs, a list of wavs, or a NoiseBank.
        snrs: SNRs in dB to draw from; ``None`` entries mean clean.
        prob: probability of considering noise at all.
        seed: see above.
    """

    def __init__(
        self,
        noise_wavs: Union[NoiseBank, PathLike, Sequence[PathLike]],
        snrs: Sequence[Optional[float]] = DEFAULT_TRAIN_SNRS,
        prob: float = 1.0,
        seed: Optional[int] = None,
    ):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if not snrs:
            raise ValueError("snrs is empty")
        self.bank = load_noise(noise_wavs)
        self.snrs = list(snrs)
        self.prob = prob
        self.seed = seed
        self._rng: Optional[np.random.Generator] = None
        self._rng_pid: Optional[int] = None
        self.num_silent = 0

    def _default_rng(self) -> np.random.Generator:
        if self._rng is None or self._rng_pid != os.getpid():
            worker = 0
            try:
                import torch.utils.data

                info = torch.utils.data.get_worker_info()
                worker = info.id if info is not None else 0
            except ImportError:
                pass
            entropy = None if self.seed is None else [self.seed, worker]
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._rng_pid = os.getpid()
        return self._rng

    def augment(self, wave: np.ndarray, rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, AugmentInfo]:
        """-> (noisy copy with wave's dtype, what was done)."""
        rng = rng or self._default_rng()
        wave = np.asarray(wave)
        if wave.ndim != 1:
            raise ValueError(f"NoiseAugmenter expects a mono waveform (S,), got shape {wave.shape}")
        if rng.random() >= self.prob:
            return wave.copy(), AugmentInfo(None, None, None)
        snr = self.snrs[int(rng.integers(len(self.snrs)))]
        if snr is None or wave.size == 0:
            return wave.copy(), AugmentInfo(None, None, None)
        if power(wave) <= 0.0:
            self.num_silent += 1
            if self.num_silent == 1 or self.num_silent % 1000 == 0:
                warnings.warn(f"NoiseAugmenter: {self.num_silent} silent waveform(s) left clean (SNR undefined)")
            return wave.copy(), AugmentInfo(None, None, None)
        index, offset, seg = self.bank.draw(rng, wave.size)
        mix, _, scale = mix_at_snr(wave.astype(np.float64), seg, snr)
        return mix.astype(wave.dtype if np.issubdtype(wave.dtype, np.floating) else np.float32), AugmentInfo(
            float(snr), self.bank.paths[index], offset, scale
        )

    def __call__(self, wave: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        return self.augment(wave, rng)[0]
