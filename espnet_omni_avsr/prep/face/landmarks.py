"""Landmark tracks over time: filling frames without a face, smoothing, reading precomputed tracks.

A track is a (T, 68, 2) float array of (x, y) pixel coordinates; a frame without a face is a row
of NaN.

- :func:`interpolate_missing`: frames between two detected frames get the linear interpolation
  of their neighbours; frames before the first / after the last detection copy that detection.
- :func:`smooth`: a centred moving average over ``window`` frames (shrunk at the clip's ends, so
  the first frame averages the first ``window // 2 + 1`` frames), applied before the similarity
  transform is estimated, so that detector jitter does not shake the crop.
- :func:`load_landmarks`: precomputed tracks, as ``.npy`` (T, 68, 2) with NaN rows for missing
  frames, or ``.pkl`` holding a list with one (68, 2) array or None per frame (the layout of the
  landmark files published for LRS3 by earlier lip-reading work), read by a restricted unpickler
  that admits numpy arrays and plain containers only.
"""
import os
import pickle
from typing import Optional

import numpy as np

from espnet_omni_avsr.prep.errors import ItemError
from espnet_omni_avsr.utils.safe_pickle import load_array_pickle


def detected(track: np.ndarray) -> np.ndarray:
    """(T,) bool: frames with a complete set of landmarks."""
    return np.isfinite(track).all(axis=(1, 2))


def interpolate_missing(track: np.ndarray) -> np.ndarray:
    """Fill the NaN frames of a (T, P, 2) track (module docstring). ItemError if no frame has a face."""
    ok = detected(track)
    if not ok.any():
        raise ItemError(f"no face found in any of {len(track)} frames")
    if ok.all():
        return track.astype(np.float64, copy=True)
    t = np.arange(len(track))
    known = np.flatnonzero(ok)
    flat = track[known].reshape(len(known), -1)
    filled = np.stack([np.interp(t, known, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return filled.reshape(track.shape)


def smooth(track: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` frames (1: unchanged); no NaN allowed."""
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    if window == 1 or len(track) == 1:
        return track.copy()
    half_before, half_after = (window - 1) // 2, window // 2
    csum = np.concatenate([np.zeros((1,) + track.shape[1:]), np.cumsum(track, axis=0)])
    t = np.arange(len(track))
    lo = np.clip(t - half_before, 0, len(track))
    hi = np.clip(t + half_after + 1, 0, len(track))
    return (csum[hi] - csum[lo]) / (hi - lo)[:, None, None]


def load_landmarks(path: str, num_frames: Optional[int] = None) -> np.ndarray:
    """A precomputed (T, 68, 2) track from .npy or .pkl (module docstring); ItemError naming the
    file when it cannot be read, has the wrong shape, or a frame count other than ``num_frames``."""
    try:
        if path.endswith(".npy"):
            # memory-mapped first: a header promising more than the file holds is refused, not allocated
            track = np.load(path, mmap_mode="r")
            _check_coordinates(track)
            if track.ndim != 3 or track.shape[1:] != (68, 2):
                raise ItemError(f"landmark file {path}: expected shape (T, 68, 2), got {track.shape}")
            track = np.array(track, dtype=np.float64)
        else:
            frames = load_array_pickle(path)  # arrays and None only: a pickle naming code is refused
            if isinstance(frames, np.ndarray) and frames.ndim == 3:  # one (T, 68, 2) array
                frames = list(frames)
            if not isinstance(frames, (list, tuple)):
                raise ValueError(f"expected a list of (68, 2) arrays or None per frame, got {type(frames).__name__}")
            arrays = [None if f is None else np.asarray(f) for f in frames]
            for a in arrays:
                if a is not None:
                    _check_coordinates(a)
            track = np.stack([np.full((68, 2), np.nan) if a is None else a.astype(np.float64).reshape(68, 2)
                              for a in arrays]) if arrays else np.zeros((0, 68, 2))
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, TypeError) as e:
        raise ItemError(f"landmark file {path} cannot be read: {e}") from None
    if track.ndim != 3 or track.shape[1:] != (68, 2):
        raise ItemError(f"landmark file {path}: expected shape (T, 68, 2), got {track.shape}")
    if len(track) == 0:
        raise ItemError(f"landmark file {path}: no frames")
    if num_frames is not None and len(track) != num_frames:
        raise ItemError(f"landmark file {path} has {len(track)} frames, the video {num_frames}")
    return track


def _check_coordinates(array: np.ndarray) -> None:
    if array.dtype.kind not in "fiu":
        raise ValueError(f"landmarks must be real coordinates, got dtype {array.dtype}")


def find_landmark_file(landmarks_dir: str, video_path: str, uid: str) -> str:
    """``<landmarks_dir>/<folder>/<speaker>/<utt>.{npy,pkl}`` (the corpus layout: the last three
    parts of the video path), else ``<landmarks_dir>/<uid>.{npy,pkl}``; ItemError naming the tried paths."""
    parts = os.path.normpath(video_path).split(os.sep)[-3:]
    stem = os.path.splitext(os.path.join(*parts))[0]
    tried = [os.path.join(landmarks_dir, stem + ext) for ext in (".npy", ".pkl")]
    tried += [os.path.join(landmarks_dir, uid + ext) for ext in (".npy", ".pkl")]
    for path in tried:
        if os.path.isfile(path):
            return path
    raise ItemError(f"no precomputed landmarks for {video_path}: none of {tried}")
