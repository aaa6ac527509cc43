"""Media files for the transcribe tests: any frame rate, with or without either stream, broken ones;
a "tone language" whose words a stub recognizer reads back from audio and video; a landmarker
that puts the mean face in every frame (no detector needed)."""
import struct
from fractions import Fraction
from typing import List, Optional, Tuple

import numpy as np

from espnet_omni_avsr.prep.face.align import load_mean_face
from espnet_omni_avsr.prep.face.detectors import AbsFaceLandmarker

RATE = 16000


def write_media(path: str, frames: Optional[np.ndarray] = None, audio: Optional[np.ndarray] = None, fps=25,
                rate: int = RATE, codec: str = "libx264", audio_codec: str = "aac") -> None:
    """frames (T, H, W, 3) uint8 RGB and/or audio (N,) float in [-1, 1] (mono) in one container."""
    import av

    with av.open(path, mode="w") as container:
        video = sound = None
        if frames is not None:
            video = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
            if codec == "libx264":
                video.options = {"crf": "18", "preset": "ultrafast"}
        if audio is not None:
            sound = container.add_stream(audio_codec, rate=rate)
            sound.layout = "mono"
        if video is not None:
            for frame in frames:
                container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(video.encode())
        if sound is not None:
            audio = np.asarray(audio, np.float32)
            fmt = "fltp" if audio_codec == "aac" else "s16"
            for start in range(0, len(audio), 1024):
                chunk = audio[None, start:start + 1024]
                if fmt == "s16":
                    chunk = np.clip(np.round(chunk * 32767), -32768, 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                container.mux(sound.encode(frame))
            container.mux(sound.encode())


def zero_frame_rate_mp4(path: str, frames: np.ndarray, audio: Optional[np.ndarray] = None) -> None:
    """An mp4 (MJPEG video, first track) whose sample durations and track duration are 0: FFmpeg
    then finds no frame rate (average and guessed rates are 0)."""
    write_media(path, frames, audio, codec="mjpeg")
    data = bytearray(open(path, "rb").read())
    stts = data.find(b"stts")
    for e in range(struct.unpack(">I", data[stts + 8:stts + 12])[0]):
        off = stts + 12 + 8 * e + 4
        data[off:off + 4] = struct.pack(">I", 0)
    mdhd = data.find(b"mdhd")
    assert data[mdhd + 4] == 0  # version 0: 32-bit duration at +20
    data[mdhd + 20:mdhd + 24] = struct.pack(">I", 0)
    open(path, "wb").write(data)


# ---- the tone language ------------------------------------------------------------------------
WORD_SECONDS, GAP_SECONDS, PAUSE_SECONDS = 0.36, 0.16, 0.8
NUM_WORDS = 12


def word_freq(w: int) -> float:
    return 300.0 + 100.0 * w


def word_gray(w: int) -> int:
    return 50 + 15 * w


SILENT_GRAY = 20


def tone_utterances(seconds: float, seed: int = 0) -> Tuple[List[List[int]], List[Tuple[float, float]], float]:
    """Utterances of 3-7 words until ``seconds``; (words per utterance, (start, end) of every pause
    between utterances, total seconds)."""
    rng = np.random.default_rng(seed)
    utts, pauses, t = [], [], PAUSE_SECONDS / 2
    while True:
        n = int(rng.integers(3, 8))
        length = n * WORD_SECONDS + (n - 1) * GAP_SECONDS
        if t + length + PAUSE_SECONDS / 2 > seconds:
            break
        utts.append([int(w) for w in rng.integers(0, NUM_WORDS, n)])
        t += length
        pauses.append((t, t + PAUSE_SECONDS))
        t += PAUSE_SECONDS
    return utts, pauses[:-1], seconds


def render_tone_clip(utts: List[List[int]], seconds: float, fps: float = 25.0, size: int = 64,
                     noise: float = 1e-3, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(audio (N,) at 16 kHz, RGB frames (T, size, size, 3) at ``fps``): each word a tone of its
    frequency and frames of its gray level with moving stripes; silence and still SILENT_GRAY
    frames in between."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * RATE))
    audio = noise * rng.standard_normal(n)
    num_frames = int(round(seconds * fps))
    gray = np.full(num_frames, SILENT_GRAY, np.uint8)
    t = PAUSE_SECONDS / 2
    for words in utts:
        for i, w in enumerate(words):
            a, b = int(round(t * RATE)), int(round((t + WORD_SECONDS) * RATE))
            audio[a:b] += 0.3 * np.sin(2 * np.pi * word_freq(w) * np.arange(b - a) / RATE)
            fa, fb = int(np.ceil(t * fps)), int(np.floor((t + WORD_SECONDS) * fps))
            gray[fa:fb] = word_gray(w)
            t += WORD_SECONDS + (GAP_SECONDS if i < len(words) - 1 else 0)
        t += PAUSE_SECONDS
    frames = np.repeat(gray[:, None, None], size, axis=1).repeat(size, axis=2).astype(np.int16)
    # the "mouth" moves while a word is spoken: stripes of +-10 grey levels that flip every frame
    stripes = np.where((np.arange(size) // 4) % 2 == 0, 10, -10)[None, :]
    for k in np.flatnonzero(gray != SILENT_GRAY):
        frames[k] += stripes * (1 if k % 2 else -1)
    frames = np.clip(frames, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=3)
    return audio.astype(np.float32), frames


def read_tone_words(speech: Optional[np.ndarray], video: Optional[np.ndarray], fps: float = 25.0) -> List[str]:
    """The words of one segment: bursts of audio energy, each word from its tone's frequency; where
    there is video too, the mouth crops over the burst must show that word's gray level ("?" if not).
    Video only: runs of frames brighter than silence, the word from the gray level."""
    hop = int(RATE / fps)
    words = []
    if speech is not None:
        n = len(speech) // hop
        energy = (speech[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1)
        loud = energy > 0.005
    else:
        level = video.reshape(len(video), -1).mean(axis=1)
        loud = level > SILENT_GRAY + 10
    idx = np.flatnonzero(loud)
    if idx.size == 0:
        return words
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    for run in runs:
        a, b = run[0], run[-1] + 1
        if b - a < 3:  # a transition frame, not a word (words last 9 frames)
            continue
        if speech is not None:
            x = speech[a * hop: b * hop]
            spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
            freq = np.argmax(spectrum) * RATE / len(x)
            w = int(round((freq - 300.0) / 100.0))
        if video is not None:
            gray = float(video[a + 1: b - 1].mean())  # the frames inside the word
            if speech is None:
                w = int(round((gray - 50) / 15))
            elif abs(gray - word_gray(w)) > 7:
                words.append("?")
                continue
        words.append(f"w{w}")
    return words


class StubRecognizer:
    """Decodes the tone language (read_tone_words); the interface Transcriber needs. ``calls`` keeps
    the task and segment lengths of every batch."""

    sample_rate, fps = RATE, 25.0

    def __init__(self, tasks=("avsr", "asr", "vsr"), limit: Optional[float] = 30.0):
        self.trained_tasks = list(tasks)
        self.limit = limit
        self.calls = []

    def input_limit_seconds(self):
        return self.limit

    def conditions_of(self, task):
        from espnet_omni_avsr.names import TASK_MODALITIES

        return {m: {"audio": 4, "video": 2}[m] for m in TASK_MODALITIES[task]}

    def count_tokens(self, text):
        return len(text.split())

    def decode(self, utterances, task):
        self.calls.append((task, [(len(u.get("speech", ())), len(u.get("video", ()))) for u in utterances]))
        texts = []
        for u in utterances:
            speech, video = u.get("speech"), u.get("video")
            if speech is not None and video is not None and abs(len(speech) / RATE - len(video) / self.fps) > 0.05:
                texts.append("LENGTHS_DIFFER")
                continue
            texts.append(" ".join(read_tone_words(speech, video, self.fps)))
        return {"text": texts, "llm_tokens": [10] * len(utterances), "max_new_tokens": [32] * len(utterances)}


class MeanFaceLandmarker(AbsFaceLandmarker):
    """The mean face scaled into every frame, at the frame's centre (no face where the frame is black:
    mean gray < ``dark``)."""

    def __init__(self, dark: float = 5.0):
        self.dark = dark

    def __call__(self, frames):
        mean_face = load_mean_face()
        rows = []
        for frame in frames:
            h, w = frame.shape[:2]
            if frame.mean() < self.dark:
                rows.append(np.full((68, 2), np.nan))
            else:
                rows.append((mean_face - 128.0) * (min(h, w) / 256.0) + (w / 2.0, h / 2.0))
        return np.array(rows, dtype=np.float64).reshape(len(rows), 68, 2)


AUDIO_CODECS = {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".ogg": "libopus", ".m4a": "aac"}
LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 6: "5.1"}


def write_audio(path: str, audio: np.ndarray, rate: int, codec: Optional[str] = None) -> None:
    """(N, C) float audio in [-1, 1] at ``rate`` -> an audio file (the codec from the extension:
    AUDIO_CODECS) with C channels."""
    import os

    import av

    audio = np.asarray(audio, np.float32)
    codec = codec or AUDIO_CODECS[os.path.splitext(path)[1].lower()]
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = LAYOUTS[audio.shape[1]]
        fmt = stream.codec_context.codec.audio_formats[0].name
        step = stream.codec_context.frame_size or 1024
        for start in range(0, len(audio), step):
            chunk = audio[start:start + step]
            if fmt.startswith(("s16", "s32")):
                bits = 16 if fmt.startswith("s16") else 32
                scale = 2.0 ** (bits - 1)
                chunk = np.clip(np.round(chunk * (scale - 1)), -scale, scale - 1).astype(f"int{bits}")
            chunk = chunk.T if fmt.endswith("p") else chunk.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=stream.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
