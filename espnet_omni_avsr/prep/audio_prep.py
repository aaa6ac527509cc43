"""Stage 3: source audio -> 16 kHz mono 16-bit wav, durations, and the audio/video length check.

Each ``data/<set>/wav.scp`` entry is a wav/flac file (read with soundfile) or a video container
(mp4, ...; its first audio stream is decoded with PyAV, as for LRS3, which ships no separate
audio). Audio that is already a 16-bit PCM wav at ``sample_rate``, mono, is used where it is;
anything else is mixed down to mono (channel mean), resampled with a polyphase filter
(``scipy.signal.resample_poly``, Kaiser window) and written to ``<out_dir>/wav/<id>.wav``.
Empty, non-finite or all-zero audio is a bad item.

Length check: an utterance whose audio duration differs from its video's (frames / fps, from
stage 2's ``utt2num_frames``) by more than ``max_av_diff`` seconds is a bad item naming both
durations. The default 0.12 s (3 frames at 25 fps) allows one video frame of rounding (0.04 s)
plus the padding an AAC encoder adds to its last frame (1024 samples, 0.064 s at 16 kHz); clips
that are truly out of step (a truncated stream, a wrong pairing) differ by much more.

:func:`format_audio` runs over ``data/<set>/wav.scp`` with
:func:`~espnet_omni_avsr.prep.sharding.run_sharded` (resumable, ``--nj`` processes) and merges
into ``dump/<set>/``: ``wav.scp``, ``utt2dur`` (seconds of the formatted audio), the stage
``audio`` lines of ``bad_items.tsv`` (failures and length mismatches) and of ``notes.tsv``
(resampled or mixed-down recordings). With the length check on, utterances whose video stage 2
rejected (absent from ``utt2num_frames``) are skipped: they are dropped anyway.
"""
import logging
import math
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile

from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.prep.errors import ItemError, PrepError
from espnet_omni_avsr.prep.sharding import StageResult, WorkItem, run_sharded

logger = logging.getLogger(__name__)

STAGE = "audio"
DEFAULT_MAX_AV_DIFF = 0.12  # seconds; see the module docstring
CONTAINER_EXTS = (".mp4", ".m4a", ".mkv", ".webm", ".mov", ".avi")


def read_container_audio(path: str) -> Tuple[np.ndarray, int]:
    """The first audio stream of a container -> ((N, C) float64 in [-1, 1], sample rate)."""
    import av

    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise ItemError(f"{path}: not a decodable media file: {e}") from None
    chunks, rate = [], None
    with container:
        if not container.streams.audio:
            raise ItemError(f"{path}: no audio stream (and no .wav/.flac beside it in the corpus)")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")  # planar float, same layout and rate
        try:
            for frame in container.decode(stream):
                if rate is None:
                    rate = frame.sample_rate
                elif frame.sample_rate != rate:
                    raise ItemError(
                        f"{path}: the sample rate changes inside the stream ({rate} -> {frame.sample_rate})"
                    )
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
        except av.FFmpegError as e:
            raise ItemError(f"{path}: corrupt audio: decoding failed: {e}") from None
    if not chunks or rate is None:
        raise ItemError(f"{path}: the audio stream decodes to no samples")
    return np.concatenate(chunks, axis=1).T.astype(np.float64), int(rate)


def read_audio(path: str) -> Tuple[np.ndarray, int]:
    """Any supported source -> ((N, C) float64, sample rate); ItemError naming the file."""
    if not os.path.isfile(path):
        raise ItemError(f"{path}: audio file not found")
    if os.path.splitext(path)[1].lower() in CONTAINER_EXTS:
        return read_container_audio(path)
    try:
        audio, rate = soundfile.read(path, dtype="float64", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
        raise ItemError(f"{path}: not a readable audio file: {e}") from None
    return audio, int(rate)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(N,) at ``rate`` -> (M,) at ``target``, M = ceil(N * target / rate), polyphase filter."""
    if rate == target:
        return audio
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(audio, target // g, rate // g)


class AudioFormatter:
    """One wav.scp entry -> a 16-bit mono wav at ``sample_rate`` (picklable for the pool).

    Args:
        wav_dir: where converted files go (``<out_dir>/wav``).
        sample_rate: target rate in Hz.
    """

    def __init__(self, wav_dir: str, sample_rate: int = 16000):
        if sample_rate <= 0:
            raise PrepError(f"--sample_rate must be positive, got {sample_rate}")
        self.wav_dir, self.sample_rate = wav_dir, int(sample_rate)

    def config(self) -> Dict:
        return {"class": type(self).__name__, "wav_dir": self.wav_dir, "sample_rate": self.sample_rate}

    def is_target_format(self, path: str) -> bool:
        if os.path.splitext(path)[1].lower() != ".wav":
            return False
        try:
            info = soundfile.info(path)
        except (soundfile.LibsndfileError, RuntimeError):
            return False  # read_audio reports why
        return (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", self.sample_rate, 1)

    def __call__(self, item: WorkItem) -> Dict:
        path = item.path
        if self.is_target_format(path):
            try:
                pcm, _ = soundfile.read(path, dtype="int16")
            except (soundfile.LibsndfileError, RuntimeError) as e:
                raise ItemError(f"{path}: not a readable audio file: {e}") from None
            check_samples(pcm, path)
            return {"path": path, "duration": len(pcm) / self.sample_rate, "note": "", "outputs": []}
        audio, rate = read_audio(path)
        pcm, changes = to_pcm16(audio, rate, self.sample_rate, path)
        out = self.write(item.uid, pcm)
        note = f"{', '.join(changes)} ({path})" if changes else ""
        return {"path": out, "duration": len(pcm) / self.sample_rate, "note": note, "outputs": [out]}

    def write(self, uid: str, pcm: np.ndarray) -> str:
        os.makedirs(self.wav_dir, exist_ok=True)
        out = os.path.join(self.wav_dir, f"{uid}.wav")
        tmp = os.path.join(self.wav_dir, f"{uid}.tmp{os.getpid()}.wav")
        try:
            soundfile.write(tmp, pcm, self.sample_rate, subtype="PCM_16", format="WAV")
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return out


def to_pcm16(audio: np.ndarray, rate: int, sample_rate: int, path: str) -> Tuple[np.ndarray, List[str]]:
    """(N, C) float audio at ``rate`` -> ((M,) int16 mono at ``sample_rate``, the changes made, e.g.
    ["resampled 44100 -> 16000 Hz", "mixed 2 channels to mono"]): channel mean, polyphase
    resampling, rounding to 16 bits. ItemError naming ``path`` for non-finite, empty or all-zero audio."""
    channels = audio.shape[1]
    mono = resample(audio.mean(axis=1), rate, sample_rate)
    if not np.all(np.isfinite(mono)):
        raise ItemError(f"{path}: the audio holds NaN or infinite values")
    pcm = np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)
    check_samples(pcm, path)
    changes = []
    if rate != sample_rate:
        changes.append(f"resampled {rate} -> {sample_rate} Hz")
    if channels != 1:
        changes.append(f"mixed {channels} channels to mono")
    return pcm, changes


def check_samples(pcm: np.ndarray, path: str) -> None:
    if pcm.size == 0:
        raise ItemError(f"{path}: the audio has no samples")
    if not np.any(pcm):
        raise ItemError(f"{path}: the audio is all zeros (digital silence)")


def av_mismatch(duration: float, num_frames: int, fps: float, max_diff: float) -> Optional[str]:
    """The bad-item reason when audio and video lengths differ by more than ``max_diff`` s."""
    video = num_frames / fps
    if abs(duration - video) <= max_diff:
        return None
    return (f"audio and video lengths differ: audio {duration:.3f} s, video {video:.3f} s "
            f"({num_frames} frames at {fps:g} fps), difference {abs(duration - video):.3f} s > {max_diff:g} s")


def format_audio(
    data_dir: str,
    out_dir: str,
    nj: int = 1,
    shard: Optional[int] = None,
    sample_rate: int = 16000,
    max_av_diff: float = DEFAULT_MAX_AV_DIFF,
    fps: float = 25.0,
    av_check: bool = True,
    utt2num_frames: Optional[str] = None,
) -> StageResult:
    """Stage 3 on ``data_dir/wav.scp``; merge into ``out_dir`` (module docstring).

    Args:
        data_dir: ``data/<set>``.
        out_dir: ``dump/<set>``.
        nj: shards / processes.
        shard: process only this shard (1-based) and do not merge.
        sample_rate: target rate in Hz.
        max_av_diff: length-check tolerance in seconds.
        fps: video frame rate for the length check.
        av_check: run the length check (needs stage 2's utt2num_frames).
        utt2num_frames: video frame counts (default ``<out_dir>/utt2num_frames``).

    Returns:
        a StageResult (``kept``: formatted and within the length tolerance); ``run.complete`` is
        False (and nothing merged) while other shards are pending after ``shard``.
    """
    if os.path.abspath(data_dir) == os.path.abspath(out_dir):
        raise PrepError(f"--data_dir and --out_dir are the same folder ({data_dir})")
    if max_av_diff < 0 or fps <= 0:
        raise PrepError(f"--max_av_diff must be >= 0 and --fps > 0, got {max_av_diff}, {fps}")
    scp = kaldi_dir.read_table(os.path.join(data_dir, "wav.scp"))
    frames: Dict[str, int] = {}
    if av_check:
        # filtering may have changed out_dir: its complete list is the one to go by
        frames_path = utt2num_frames or kaldi_dir.unfiltered_path(out_dir, "utt2num_frames")
        if not os.path.isfile(frames_path):
            raise PrepError(
                f"{frames_path} not found: the audio/video length check needs the video stage "
                "(stage 2) first; or pass --skip_av_check"
            )
        frames = kaldi_dir.read_int_table(frames_path)
        skipped = sorted(set(scp) - set(frames))
        if skipped:
            logger.info("%d utterances skipped: their video was rejected in stage 2 (e.g. %s)",
                        len(skipped), skipped[:3])
        scp = {u: p for u, p in scp.items() if u in frames}
    os.makedirs(out_dir, exist_ok=True)
    formatter = AudioFormatter(os.path.join(out_dir, "wav"), sample_rate)
    items = [WorkItem(uid, path) for uid, path in scp.items()]
    run = run_sharded(items, formatter, os.path.join(out_dir, ".work", STAGE), nj, formatter.config(), shard,
                      desc="audio")
    logger.info("%s: %d recordings processed, %d reused from an earlier run", out_dir, run.processed, run.reused)
    if not run.complete:
        logger.info("shard %s done; other shards are pending: run again without --shard to merge", shard)
        return StageResult(run)
    if kaldi_dir.restore_unfiltered(out_dir):
        logger.warning("%s had been filtered; its unfiltered lists are restored: run the filtering stage (filter_data) again", out_dir)
    ok = {uid: r for uid, r in run.results.items() if r["ok"]}
    bad = [kaldi_dir.ItemRecord(u, STAGE, r["reason"]) for u, r in run.results.items() if not r["ok"]]
    if av_check:
        for uid, r in ok.items():
            reason = av_mismatch(r["duration"], frames[uid], fps, max_av_diff)
            if reason:
                bad.append(kaldi_dir.ItemRecord(uid, STAGE, reason))
    kaldi_dir.write_table(os.path.join(out_dir, "wav.scp"), {u: r["path"] for u, r in ok.items()})
    kaldi_dir.write_table(os.path.join(out_dir, "utt2dur"), {u: f"{r['duration']:.4f}" for u, r in ok.items()})
    notes = [kaldi_dir.ItemRecord(u, STAGE, r["note"]) for u, r in ok.items() if r.get("note")]
    kaldi_dir.replace_stage_records(os.path.join(out_dir, kaldi_dir.BAD_ITEMS), STAGE, bad)
    kaldi_dir.replace_stage_records(os.path.join(out_dir, kaldi_dir.NOTES), STAGE, notes)
    converted = sum(1 for r in ok.values() if r["outputs"])
    logger.info("%s: %d of %d recordings formatted (%d converted), %d bad", out_dir, len(ok), len(run.results),
                converted, len(bad))
    if bad:
        logger.warning("%s: %d recordings rejected, see %s", out_dir, len(bad),
                       os.path.join(out_dir, kaldi_dir.BAD_ITEMS))
    rejected = {r.uttid for r in bad}
    return StageResult(run, kept=sorted(u for u in ok if u not in rejected), bad=sorted(bad))
