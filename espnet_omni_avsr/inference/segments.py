"""Long clips: cut at pauses into segments the encoders take, decode them, join the transcripts.

Positions are video frames (1 / fps s, 40 ms at 25 fps); a cut at frame k cuts the audio at sample
k * sample_rate / fps, so audio and video follow the same cuts.

The cut rule (:func:`cut_segments`). A clip of at most ``max_frames`` frames is one segment.
Otherwise, from the start s of the current segment, the cut is placed in the last ``search``
frames before the limit s + max_frames: among the windows of ``window`` frames (5 frames, 0.2 s)
lying inside [s + max_frames - search, s + max_frames), the one with the lowest mean energy is
taken (ties: the latest), the cut goes at its centre, and the next segment starts there. No
segment is longer than ``max_frames``.

Energy (:func:`audio_energy`, :func:`motion_energy`): per frame, the mean square of the audio
samples it covers; for an input decoded without audio (VSR), the mean absolute difference between
a mouth crop and the previous one (a still mouth is a pause); with neither, the energy is flat and
cuts fall at the latest window.

Defaults (transcriber.py): ``max_frames`` from the model's audio encoder (Whisper: 30 s, 750
frames, less one so that no segment reaches Whisper's exact 30-s mode) and ``search`` = 5 s.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

Segment = Tuple[int, int]  # [start, end) in frames


def audio_energy(speech: np.ndarray, hop: int, num_frames: Optional[int] = None) -> np.ndarray:
    """(num_frames,) mean square of the samples of each ``hop``-sample frame (0 past the end)."""
    n = num_frames if num_frames is not None else -(-len(speech) // hop)
    x = np.zeros(n * hop, np.float64)
    m = min(len(speech), n * hop)
    x[:m] = np.asarray(speech[:m], np.float64)
    return (x.reshape(n, hop) ** 2).mean(axis=1)


def motion_energy(crops: np.ndarray) -> np.ndarray:
    """(T,) mean absolute difference between each crop and the previous one (frame 0: that of frame 1)."""
    if len(crops) < 2:
        return np.zeros(len(crops))
    diff = np.abs(np.diff(crops.astype(np.float32), axis=0)).reshape(len(crops) - 1, -1).mean(axis=1)
    return np.concatenate([diff[:1], diff]).astype(np.float64)


def cut_segments(num_frames: int, max_frames: int, energy: Optional[np.ndarray] = None, search: int = 125,
                 window: int = 5) -> List[Segment]:
    """The segments of a ``num_frames``-frame clip (module docstring)."""
    if max_frames < 2:
        raise ValueError(f"segments must be allowed at least 2 frames, got max_frames={max_frames}")
    window = max(1, min(window, max_frames // 2))
    search = max(window, min(search, max_frames - 1))
    if energy is None:
        energy = np.zeros(num_frames)
    energy = np.asarray(energy, np.float64)
    if len(energy) < num_frames:
        energy = np.concatenate([energy, np.zeros(num_frames - len(energy))])
    csum = np.concatenate([[0.0], np.cumsum(energy)])
    segments, start = [], 0
    while num_frames - start > max_frames:
        limit = start + max_frames  # the cut must be < limit
        first = max(start + 1, limit - search)
        starts = np.arange(first, limit - window + 1)  # windows [w, w + window) inside [first, limit)
        means = (csum[starts + window] - csum[starts]) / window
        best = starts[len(means) - 1 - int(np.argmin(means[::-1]))]  # lowest; ties: the latest
        cut = int(best + window // 2)
        segments.append((start, cut))
        start = cut
    segments.append((start, num_frames))
    return segments


def join_texts(texts: Sequence[str]) -> str:
    """The segments' transcripts joined with one space (empty ones skipped)."""
    return " ".join(t.strip() for t in texts if t and t.strip())
