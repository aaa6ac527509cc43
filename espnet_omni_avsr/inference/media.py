"""One raw input (a face video with its sound, or an audio recording) -> what the model reads: 16 kHz
mono audio and 96 x 96 gray mouth crops at 25 fps, with the reason for each stream that is missing.

An input is a video (``MEDIA_EXTS``: .mp4, .mkv, ...) or an audio file (``AUDIO_EXTS``: .wav, .flac,
.mp3, .ogg, .m4a, at any sample rate and channel count). An audio file is read for its sound only:
its audio goes through the same steps as a video's, and no video is looked for (the face pipeline
does not run, even on a cover picture FFmpeg shows as a video stream); its video is missing, so
the task choice makes it an ASR input (transcriber.py).

The steps are the recipes' data preparation, called here on one file:

- audio: :func:`espnet_omni_avsr.prep.audio_prep.read_container_audio` (PyAV) and
  :func:`~espnet_omni_avsr.prep.audio_prep.to_pcm16` (channel mean, polyphase resampling to
  16 kHz, 16-bit rounding), then scaled to [-1, 1] as the recipes' data loader reads its wavs;
- video: the stage 2 face modes (:class:`~espnet_omni_avsr.prep.face.face_video_prep.FaceVideoPrep`):
  frames resampled to 25 fps, landmarks (mediapipe or dlib), interpolation of frames without a
  face and smoothing, mean-face alignment and the mouth crop. The landmarks need the whole track
  before the first crop (smoothing), so the frames go through twice: kept in memory between the
  two passes while they fit in ``MAX_CACHED_BYTES`` (512 MiB: 4 minutes of 160x160, 10 s of
  1080p), else decoded again, so that memory holds the crops and the landmark track, not the
  frames, whatever the clip's length. Unlike stage 2, the crops stay in memory (no H.264 round
  trip).

What makes an input fail (:class:`~espnet_omni_avsr.prep.errors.ItemError`, the message names
the file): it is missing or not a media file FFmpeg opens, it has neither an audio nor a video
stream (an audio file: no audio stream), a stream it has does not decode (corrupt), the streams decode to less than 90 % of the
duration its header declares (truncated), or its video stream declares a frame rate of 0 (no frame rate: its frames cannot be timed). What only makes a stream *missing* (the
task choice then decides, see transcriber.py): no audio stream, an all-zero (digitally silent)
audio track, no video stream (always so for an audio file), no face in any frame (or in fewer than ``min_face_fraction`` of
them), a video shorter than the face mode's ``min_frames``.
"""
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from espnet_omni_avsr.data.video_io import MIN_DECODED_FRACTION
from espnet_omni_avsr.prep.audio_prep import read_container_audio, to_pcm16
from espnet_omni_avsr.prep.errors import ItemError
from espnet_omni_avsr.prep.face.face_video_prep import FaceVideoPrep
from espnet_omni_avsr.prep.sharding import WorkItem

NOT_READ = "not read (the task does not use it)"
MAX_CACHED_BYTES = 512 * 2 ** 20  # 25-fps RGB frames kept between the landmark and crop passes
MEDIA_EXTS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".3gp", ".wmv")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".m4a")  # read for their sound only
INPUT_EXTS = MEDIA_EXTS + AUDIO_EXTS


def is_audio_file(path: str) -> bool:
    """An audio recording by its extension (``AUDIO_EXTS``, any case): read without video."""
    return os.path.splitext(path)[1].lower() in AUDIO_EXTS


def no_video_reason(path: str) -> str:
    """Why an audio file has no video (its ``missing["video"]``)."""
    return f"{path} is an audio file ({os.path.splitext(path)[1].lower()}): it has no video"


@dataclass
class Probe:
    """What a container holds (read from its header)."""

    path: str
    has_audio: bool
    has_video: bool
    video_fps: Optional[float] = None  # None: the stream declares no frame rate (0)
    width: Optional[int] = None
    height: Optional[int] = None
    duration: Optional[float] = None  # seconds, from the container header


def probe(path: str) -> Probe:
    """The streams of ``path``; ItemError when it is missing, does not open, or has no stream."""
    import av

    if not os.path.exists(path):
        raise ItemError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ItemError(f"{path}: not a file")
    try:
        with av.open(path) as container:
            video = container.streams.video[0] if container.streams.video else None
            has_audio = bool(container.streams.audio)
            duration = container.duration / av.time_base if container.duration else None
            fps = None
            if video is not None:
                rate = video.average_rate or video.guessed_rate
                fps = float(rate) if rate else None
            info = Probe(path, has_audio, video is not None, fps,
                         video.width if video is not None else None, video.height if video is not None else None,
                         duration)
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise ItemError(f"{path}: does not decode: not a media file FFmpeg can open ({e})") from None
    if not info.has_audio and not info.has_video:
        raise ItemError(f"{path}: no audio and no video stream")
    return info


class _Timed:
    """Wraps an iterator and adds the time spent in it (decoding) to ``seconds``."""

    def __init__(self, it: Iterable):
        self.it, self.seconds = iter(it), 0.0

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - start


@dataclass
class MediaInput:
    """An input ready for the model.

    speech: (S,) float32 in [-1, 1] at ``sample_rate``, or None; crops: (T, size, size) uint8 at
    ``fps``, or None; missing: modality -> why it is absent (not loaded, or not usable);
    info: JSON-able facts (source rate, channels, frames with and without a face, ...);
    timing: step -> seconds (probe, audio, video_decode, face_detection, crop).
    """

    path: str
    sample_rate: int
    fps: float
    speech: Optional[np.ndarray] = None
    crops: Optional[np.ndarray] = None
    missing: Dict[str, str] = field(default_factory=dict)
    info: Dict[str, dict] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    timing: Dict[str, float] = field(default_factory=dict)

    @property
    def available(self) -> List[str]:
        return [m for m, x in (("audio", self.speech), ("video", self.crops)) if x is not None]

    @property
    def duration(self) -> float:
        """Seconds of the longest stream there is."""
        a = len(self.speech) / self.sample_rate if self.speech is not None else 0.0
        v = len(self.crops) / self.fps if self.crops is not None else 0.0
        return max(a, v)


def load_audio(path: str, sample_rate: int, media: MediaInput) -> None:
    """Fill ``media.speech`` (or ``media.missing["audio"]``); ItemError when the stream does not decode."""
    start = time.perf_counter()
    audio, rate = read_container_audio(path)
    info = {"source_rate": rate, "channels": int(audio.shape[1]), "seconds": len(audio) / rate}
    if not np.any(audio):
        media.missing["audio"] = f"{path}: the audio track is silent (all samples are zero)"
    else:
        pcm, changes = to_pcm16(audio, rate, sample_rate, path)
        media.speech = pcm.astype(np.float32) / 32768.0  # what the recipes' loader reads from their wavs
        media.notes += changes
    media.info["audio"] = info
    media.timing["audio"] = time.perf_counter() - start


class _Keep:
    """Passes frames through and keeps them while they fit in ``max_bytes`` (``frames`` is None after
    that), so that a short clip is decoded once, a long one twice."""

    def __init__(self, it: Iterable[np.ndarray], max_bytes: int):
        self.it, self.max_bytes, self.frames, self.size = it, max_bytes, [], 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self.it:
            if self.frames is not None:
                self.size += frame.nbytes
                if self.size <= self.max_bytes:
                    self.frames.append(frame)
                else:
                    self.frames = None
            yield frame


def load_video(path: str, face_prep: FaceVideoPrep, media: MediaInput, max_cached_bytes: int = MAX_CACHED_BYTES) -> None:
    """Fill ``media.crops`` (or ``media.missing["video"]``) with the face mode's steps: landmarks over
    the streamed frames, then the crops, from the frames kept in memory when the clip's 25-fps RGB
    frames fit in ``max_cached_bytes``, else from a second decoding. ItemError when the stream
    does not decode."""
    uid = os.path.splitext(os.path.basename(path))[0] or "input"
    start = time.perf_counter()
    frames = _Timed(face_prep.frames(path))
    kept = _Keep(frames, max_cached_bytes)
    raw = face_prep.track(WorkItem(uid, path), kept)  # pass 1: landmarks of every frame
    detect = time.perf_counter() - start
    found = int(np.isfinite(raw).all(axis=(1, 2)).sum())
    info = {"frames": len(raw), "frames_with_face": found, "frames_without_face": len(raw) - found,
            "frames_without_face_ranges": _ranges(~np.isfinite(raw).all(axis=(1, 2)))}
    media.info["video"] = dict(media.info.get("video", {}), **info)
    media.notes += face_prep.resample_note(path)
    media.timing["video_decode"] = frames.seconds
    media.timing["face_detection"] = detect - frames.seconds
    try:
        face_prep.check_length(raw, path)
        track, _, notes = face_prep.face_track(raw, path)
    except ItemError as e:
        media.missing["video"] = str(e)
        return
    media.notes += notes
    start = time.perf_counter()
    frames = _Timed(kept.frames if kept.frames is not None else face_prep.frames(path))
    media.crops = face_prep.crop(frames, track, path)  # pass 2: align and crop
    media.info["video"]["decoded_twice"] = kept.frames is None
    media.timing["video_decode"] += frames.seconds if kept.frames is None else 0.0
    media.timing["crop"] = time.perf_counter() - start - (frames.seconds if kept.frames is None else 0.0)


def _ranges(mask: np.ndarray, limit: int = 20) -> List[List[int]]:
    """[[first, last], ...] of the runs of True (at most ``limit``)."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]])
    return [[int(a), int(b)] for a, b in zip(starts, ends)][:limit]


def load_media(path: str, face_prep: Optional[FaceVideoPrep], modalities: Sequence[str] = ("audio", "video"),
               sample_rate: int = 16000, fps: Optional[float] = None) -> MediaInput:
    """Read the streams of ``modalities`` from ``path`` (module docstring for what fails and what is
    only missing; an audio file is read without video). ``face_prep`` gives the face mode (its fps and size); it may be None when video
    is not wanted. ``fps``: the model's frame rate (default: the face mode's, else 25)."""
    start = time.perf_counter()
    info = probe(path)
    if fps is None:
        fps = face_prep.fps if face_prep is not None else 25.0
    elif face_prep is not None and abs(face_prep.fps - fps) > 1e-6:
        raise ValueError(f"the face mode makes {face_prep.fps:g} fps crops, the model reads {fps:g} fps")
    media = MediaInput(path, sample_rate, fps)
    media.timing["probe"] = time.perf_counter() - start
    audio_file = is_audio_file(path)
    if info.has_video and not audio_file:
        media.info["video"] = {"source_fps": info.video_fps, "width": info.width, "height": info.height}
    if "video" in modalities:
        if audio_file:
            media.missing["video"] = no_video_reason(path)
        elif not info.has_video:
            media.missing["video"] = f"{path} has no video stream"
        elif info.video_fps is None:
            raise ItemError(f"{path}: the video stream's frame rate is 0 (it declares none): its frames cannot be timed")
        else:
            load_video(path, face_prep, media)
    else:
        media.missing["video"] = NOT_READ
    if "audio" in modalities:
        if info.has_audio:
            load_audio(path, sample_rate, media)
        else:
            media.missing["audio"] = f"{path} has no audio stream"
    else:
        media.missing["audio"] = NOT_READ
    check_complete(media, info)
    return media


def check_complete(media: MediaInput, info: Probe) -> None:
    """ItemError when the streams read decode to less than the container's declared duration (the
    fraction video_io allows, less one frame): a truncated file (a partial download) that FFmpeg still
    decodes in part, as Matroska and WebM do."""
    seconds = [media.info["audio"]["seconds"]] if "audio" in media.info else []
    if "frames" in media.info.get("video", {}):
        seconds.append(media.info["video"]["frames"] / media.fps)
    if info.duration and seconds and max(seconds) < MIN_DECODED_FRACTION * info.duration - 1.0 / media.fps:
        raise ItemError(f"{media.path}: does not decode: truncated: the header declares {info.duration:.2f} s, "
                        f"only {max(seconds):.2f} s decode")
