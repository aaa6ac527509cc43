"""Mean-face alignment and the mouth crop.

For every frame, a similarity transform (rotation, uniform scale, translation; least squares,
closed form) maps the frame's *stable* landmarks (:data:`STABLE_POINTS`: nose tip, subnasale and
the four eye corners, which move little when a person speaks) onto the same points of the mean
face (``data/20words_mean_face.npy``, a 256 x 256 reference frame; the mouth is about 45 px
wide there). The mouth centre is the mean of the transformed mouth landmarks (iBUG 48-67), and
the crop is the ``size`` x ``size`` window of the aligned frame centred on it (96 x 96 by default,
as in the LRS2/LRS3 papers' preprocessing). Warp and crop are one ``cv2.warpAffine`` per frame;
pixels outside the source frame are black.
"""
import os
from typing import Iterable, Optional, Tuple

import numpy as np

MEAN_FACE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "20words_mean_face.npy")
STABLE_POINTS = (30, 33, 36, 39, 42, 45)  # iBUG: nose tip, subnasale, eye corners
MOUTH_POINTS = tuple(range(48, 68))


def load_mean_face(path: Optional[str] = None) -> np.ndarray:
    """(68, 2) float64 reference landmarks."""
    mean_face = np.load(path or MEAN_FACE_PATH).astype(np.float64)
    if mean_face.shape != (68, 2):
        raise ValueError(f"mean face {path or MEAN_FACE_PATH}: expected shape (68, 2), got {mean_face.shape}")
    return mean_face


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix M of the similarity transform minimising sum |M [src; 1] - dst|^2.

    src, dst: (N, 2), N >= 2. Closed form: with centred points and complex numbers z = x + iy,
    the rotation-scale factor is a = sum(conj(src_c) dst_c) / sum(|src_c|^2).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    zs = (src[:, 0] - src_mean[0]) + 1j * (src[:, 1] - src_mean[1])
    zd = (dst[:, 0] - dst_mean[0]) + 1j * (dst[:, 1] - dst_mean[1])
    denom = float(np.sum(np.abs(zs) ** 2))
    if denom <= 1e-12:
        raise ValueError("degenerate landmarks: all stable points coincide")
    a = np.sum(np.conj(zs) * zd) / denom
    rot = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.hstack([rot, (dst_mean - rot @ src_mean)[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points through a 2x3 affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_matrices(track: np.ndarray, mean_face: np.ndarray, size: int = 96) -> np.ndarray:
    """(T, 2, 3) matrices taking each frame to its ``size`` x ``size`` mouth crop (module docstring).

    track: (T, 68, 2) landmarks without NaN (interpolated and smoothed).
    """
    stable = list(STABLE_POINTS)
    mouth = list(MOUTH_POINTS)
    matrices = np.empty((len(track), 2, 3))
    for t, points in enumerate(track):
        m = similarity_transform(points[stable], mean_face[stable])
        centre = apply_transform(m, points[mouth]).mean(axis=0)
        m[:, 2] += size / 2.0 - centre
        matrices[t] = m
    return matrices


def crop_frame(frame: np.ndarray, matrix: np.ndarray, size: int = 96) -> np.ndarray:
    """One (H, W) uint8 gray frame through its 2x3 crop matrix -> (size, size) uint8."""
    import cv2

    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def mouth_crops(frames: Iterable[np.ndarray], track: np.ndarray, mean_face: np.ndarray,
                size: int = 96) -> Tuple[np.ndarray, np.ndarray]:
    """(T, H, W) uint8 gray frames (an array, or an iterable of T frames read one at a time) +
    (T, 68, 2) landmarks -> ((T, size, size) uint8 crops, (T, 2, 3) matrices used)."""
    if hasattr(frames, "__len__") and len(frames) != len(track):
        raise ValueError(f"{len(frames)} frames but {len(track)} landmark rows")
    matrices = crop_matrices(track, mean_face, size)
    crops = []
    for frame in frames:
        if len(crops) == len(matrices):
            raise ValueError(f"more frames than the {len(track)} landmark rows")
        crops.append(crop_frame(frame, matrices[len(crops)], size))
    if len(crops) != len(matrices):
        raise ValueError(f"{len(crops)} frames but {len(track)} landmark rows")
    return np.stack(crops), matrices
