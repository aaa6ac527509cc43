"""Stage 2 modes for raw face-track videos (LRS2, LRS3): face landmarks -> 96x96 mouth ROI.

``--mode mediapipe`` | ``dlib`` | ``landmarks``; per clip:

1. decode the mp4 as RGB (PyAV); a clip at another frame rate is resampled to ``fps`` by taking,
   for each output time k / fps, the source frame shown at that time (LRS2/LRS3 are 25 fps: no-op);
2. landmarks of every frame (:mod:`.detectors`), or a precomputed track (``landmarks`` mode,
   ``landmarks_dir``; :func:`.landmarks.find_landmark_file` says where it is looked for);
3. a clip with no face in any frame, or in less than ``min_face_fraction`` of its frames, is a
   bad item ("no face found ..."); otherwise missing frames are interpolated and the track is
   smoothed over ``smooth_window`` frames (:mod:`.landmarks`);
4. each gray frame is aligned to the mean face and the ``size`` x ``size`` window around the
   mouth is cut (:mod:`.align`), written as H.264 mp4 at ``fps`` (``<dump>/<set>/video/<id>.mp4``;
   with ``roi_format: npy``, the uint8 frames as ``<id>.npy``);
5. with ``save_landmarks`` the raw track (NaN where no face) goes to
   ``<dump>/<set>/landmarks/<id>.npy``, so that a later run can use ``--mode landmarks``.

Clips where the face was missed in some frames get a note in ``notes.tsv`` ("face found in 20 of
25 frames, 5 interpolated"); clips without a face are listed in ``bad_items.tsv`` and the
filtering report.
"""
import collections
import os
from fractions import Fraction
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from espnet_omni_avsr.prep.errors import ItemError, PrepError
from espnet_omni_avsr.prep.face.align import MEAN_FACE_PATH, load_mean_face, mouth_crops
from espnet_omni_avsr.prep.face.detectors import AbsFaceLandmarker, build_landmarker
from espnet_omni_avsr.prep.face.landmarks import (
    detected, find_landmark_file, interpolate_missing, load_landmarks, smooth,
)
from espnet_omni_avsr.prep.sharding import WorkItem
from espnet_omni_avsr.prep.video_prep import AbsVideoPrep, register_video_prep


def video_frame_rate(path: str) -> Optional[float]:
    """The first video stream's frame rate (average, else guessed; None when the stream declares
    none, i.e. 0); ItemError naming the file when it does not open or has no video stream."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ItemError(f"video does not decode: {path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except ItemError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise ItemError(f"video does not decode: {path}: {e}") from None
    return float(Fraction(rate)) if rate else None


def source_index(k: int, src_fps: float, fps: float) -> int:
    """The source frame shown at output time k / fps (before clamping to the clip's last frame)."""
    return int(np.floor(k * src_fps / fps + 1e-6))


def resampled_count(num_frames: int, src_fps: float, fps: float) -> int:
    """Frames of a ``num_frames``-frame clip at ``src_fps`` once resampled to ``fps`` (at least 1)."""
    return max(1, int(np.floor(num_frames * fps / src_fps + 1e-6)))


def stream_resample(frames: Iterable, src_fps: float, fps: float) -> Iterator:
    """:func:`resample_frames` over an iterable, one frame at a time: output frame k is emitted as
    soon as the clip is known to hold more than k output frames (``resampled_count``), so memory
    holds a few source frames, however long the clip."""
    recent: Deque = collections.deque(maxlen=int(np.ceil(src_fps / fps)) + 2)
    count = k = 0
    for frame in frames:
        recent.append(frame)
        count += 1
        while k < resampled_count(count, src_fps, fps):
            j = min(source_index(k, src_fps, fps), count - 1)
            yield recent[j - count]  # j >= count - len(recent): the deque is long enough
            k += 1


def iter_rgb_frames(path: str, fps: Optional[float] = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of the first video stream, decoded one at a time; with ``fps``
    resampled as :func:`resample_frames` does (:func:`stream_resample`; a stream without a frame
    rate is not resampled). ItemError naming the file when it does not open or decode, or holds
    no frame."""
    import av

    src_fps = video_frame_rate(path)

    def decoded() -> Iterator[np.ndarray]:
        count = 0
        try:
            with av.open(path) as container:
                for frame in container.decode(container.streams.video[0]):
                    count += 1
                    yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise ItemError(f"video does not decode: {path}: {e}") from None
        if count == 0:
            raise ItemError(f"video does not decode: no frame in {path}")

    if fps is None or src_fps is None or abs(src_fps - fps) <= 0.01 * fps:
        yield from decoded()
    else:
        yield from stream_resample(decoded(), src_fps, fps)


def read_rgb_video(path: str) -> Tuple[np.ndarray, Optional[float]]:
    """(T, H, W, 3) uint8 RGB frames and the stream's frame rate; ItemError naming the file when
    it does not open or decode (a truncated or corrupt mp4) or holds no frame."""
    rate = video_frame_rate(path)
    return np.stack(list(iter_rgb_frames(path))), rate


def resample_frames(frames: np.ndarray, src_fps: float, fps: float) -> np.ndarray:
    """Frames at ``fps``: for output time k / fps the source frame shown then."""
    count = resampled_count(len(frames), src_fps, fps)
    index = np.minimum([source_index(k, src_fps, fps) for k in range(count)], len(frames) - 1)
    return frames[index]


def gray_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """RGB frames -> (H, W) uint8 gray (OpenCV's BT.601 luma), one at a time."""
    import cv2

    for frame in frames:
        yield cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


class FaceVideoPrep(AbsVideoPrep):
    """Raw face video -> mouth ROI through landmarks (module docstring). Subclasses say where the
    landmarks come from (:meth:`track`).

    Args:
        smooth_window: frames of the landmark moving average (1: none).
        min_face_fraction: in [0, 1]; a clip whose frames have a face less often is a bad item
            (a clip without any face always is).
        save_landmarks: keep the raw landmark track of each clip beside the ROI videos.
        mean_face: path of a (68, 2) .npy (default: the packaged 20words_mean_face.npy).
        (size, fps, min_frames, crf, roi_format: :class:`~espnet_omni_avsr.prep.video_prep.AbsVideoPrep`)
    """

    def __init__(self, video_dir: str, size: int = 96, fps: float = 25.0, min_frames: int = 5, crf: int = 18,
                 roi_format: str = "mp4", smooth_window: int = 12, min_face_fraction: float = 0.0,
                 save_landmarks: bool = True,
                 mean_face: Optional[str] = None):
        super().__init__(video_dir, size=size, fps=fps, min_frames=min_frames, crf=crf, roi_format=roi_format)
        if smooth_window < 1:
            raise PrepError(f"smooth_window must be >= 1, got {smooth_window}")
        if not 0 <= min_face_fraction <= 1:
            raise PrepError(f"min_face_fraction must be in [0, 1], got {min_face_fraction}")
        self.smooth_window = int(smooth_window)
        self.min_face_fraction = float(min_face_fraction)
        self.save_landmarks = bool(save_landmarks)
        self.mean_face_path = mean_face or MEAN_FACE_PATH
        try:
            self.mean_face = load_mean_face(self.mean_face_path)
        except (OSError, ValueError) as e:
            raise PrepError(f"mean face {self.mean_face_path}: {e}") from None
        self.landmark_dir = os.path.join(os.path.dirname(os.path.abspath(video_dir)), "landmarks")

    def config(self) -> Dict:
        return dict(super().config(), smooth_window=self.smooth_window, min_face_fraction=self.min_face_fraction,
                    save_landmarks=self.save_landmarks, mean_face=self.mean_face_path)

    def track(self, item: WorkItem, frames: np.ndarray) -> np.ndarray:
        """(T, 68, 2) landmarks of the RGB frames, NaN rows where no face."""
        raise NotImplementedError

    # The steps of `process`, usable one by one (bin/transcribe streams a clip through them twice:
    # landmarks, then crops, without holding its frames).
    def frames(self, path: str) -> Iterator[np.ndarray]:
        """The clip's RGB frames at ``fps``, decoded one at a time (:func:`iter_rgb_frames`)."""
        return iter_rgb_frames(path, self.fps)

    def resample_note(self, path: str) -> List[str]:
        """["resampled 30 -> 25 fps"] when the clip is resampled, else []."""
        src_fps = video_frame_rate(path)
        if src_fps is not None and abs(src_fps - self.fps) > 0.01 * self.fps:
            return [f"resampled {src_fps:g} -> {self.fps:g} fps"]
        return []

    def face_track(self, raw: np.ndarray, path: str) -> Tuple[np.ndarray, int, List[str]]:
        """Raw landmarks (NaN rows where no face) -> (the interpolated, smoothed track, frames with a
        face, notes). ItemError when no frame, or fewer than ``min_face_fraction``, has a face."""
        found = int(detected(raw).sum())
        if found == 0:
            raise ItemError(f"no face found in any of the {len(raw)} frames of {path}")
        if found < self.min_face_fraction * len(raw):
            raise ItemError(f"face found in only {found} of {len(raw)} frames of {path} "
                            f"(< min_face_fraction {self.min_face_fraction:g})")
        notes = []
        if found < len(raw):
            notes.append(f"face found in {found} of {len(raw)} frames, {len(raw) - found} interpolated")
        return smooth(interpolate_missing(raw), self.smooth_window), found, notes

    def crop(self, frames: Iterable[np.ndarray], track: np.ndarray, path: str) -> np.ndarray:
        """RGB frames (an array or an iterable) + their track -> (T, size, size) uint8 mouth crops."""
        try:
            crops, _ = mouth_crops(gray_frames(frames), track, self.mean_face, self.size)
        except ValueError as e:
            raise ItemError(f"{path}: {e}") from None
        return crops

    def process(self, item: WorkItem) -> Dict:
        frames = np.stack(list(self.frames(item.path)))
        notes = self.resample_note(item.path)
        self.check_length(frames, item.path)
        raw = self.track(item, frames)
        track, found, face_notes = self.face_track(raw, item.path)
        notes += face_notes
        crops = self.crop(frames, track, item.path)
        out = self.write_roi(item.uid, crops)
        outputs = [out]
        if self.save_landmarks:
            os.makedirs(self.landmark_dir, exist_ok=True)
            lmk = os.path.join(self.landmark_dir, f"{item.uid}.npy")
            tmp = os.path.join(self.landmark_dir, f"{item.uid}.tmp{os.getpid()}.npy")
            np.save(tmp, raw.astype(np.float32))
            os.replace(tmp, lmk)
            outputs.append(lmk)
        return {"path": out, "num_frames": len(crops), "note": "; ".join(notes), "outputs": outputs,
                "face_frames": found}


class _DetectorVideoPrep(FaceVideoPrep):
    """FaceVideoPrep whose landmarks come from a detector backend."""

    backend = ""

    def __init__(self, video_dir: str, backend_conf: Optional[Dict] = None,
                 landmarker: Optional[AbsFaceLandmarker] = None, **conf):
        super().__init__(video_dir, **conf)
        if landmarker is not None and backend_conf:
            raise PrepError("give backend_conf or a built landmarker, not both")
        self.landmarker: AbsFaceLandmarker = landmarker or build_landmarker(self.backend, **dict(backend_conf or {}))

    def config(self) -> Dict:
        return dict(super().config(), landmarker=self.landmarker.config())

    def track(self, item: WorkItem, frames: Iterable[np.ndarray]) -> np.ndarray:
        return self.landmarker(frames)


class MediapipeVideoPrep(_DetectorVideoPrep):
    """``--mode mediapipe``: MediaPipe Face Mesh landmarks (``backend_conf``:
    min_detection_confidence, min_tracking_confidence)."""

    backend = "mediapipe"


class DlibVideoPrep(_DetectorVideoPrep):
    """``--mode dlib``: dlib HOG detector + 68-point predictor (``backend_conf``: predictor_path,
    upsample)."""

    backend = "dlib"


class LandmarksVideoPrep(FaceVideoPrep):
    """``--mode landmarks``: precomputed landmark tracks under ``landmarks_dir`` (.npy or .pkl;
    see :func:`~espnet_omni_avsr.prep.face.landmarks.find_landmark_file`)."""

    def __init__(self, video_dir: str, landmarks_dir: Optional[str] = None, **conf):
        conf.setdefault("save_landmarks", False)
        super().__init__(video_dir, **conf)
        if not landmarks_dir:
            raise PrepError("--mode landmarks needs landmarks_dir (in --mode_conf '{landmarks_dir: DIR}')")
        if not os.path.isdir(landmarks_dir):
            raise PrepError(f"landmarks_dir {landmarks_dir} does not exist")
        self.landmarks_dir = os.path.abspath(landmarks_dir)

    def config(self) -> Dict:
        return dict(super().config(), landmarks_dir=self.landmarks_dir)

    def track(self, item: WorkItem, frames: np.ndarray) -> np.ndarray:
        return load_landmarks(find_landmark_file(self.landmarks_dir, item.path, item.uid), len(frames))


register_video_prep("mediapipe", MediapipeVideoPrep)
register_video_prep("dlib", DlibVideoPrep)
register_video_prep("landmarks", LandmarksVideoPrep)
