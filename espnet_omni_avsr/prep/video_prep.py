"""Stage 2: source videos -> 96x96 grayscale 25 fps mouth-ROI videos, sharded and resumable.

A *mode* turns one source video into the mouth ROI (``VIDEO_PREP_MODES``, chosen with
``--mode``):

- ``precropped``: the corpus already ships mouth ROIs (the embedded AVGRID corpus). Each video is
  checked (it decodes, is grayscale-convertible, runs at ``fps``, has ``min_frames`` frames, shows
  a mouth) and resized to ``size`` x ``size`` when it is not that size already.
- ``mediapipe``, ``dlib``, ``landmarks``: raw LRS2/LRS3 face tracks -> face landmarks (detected, or
  precomputed) -> mean-face alignment -> mouth crop (:mod:`espnet_omni_avsr.prep.face`).

Another mode: subclass :class:`AbsVideoPrep`, implement ``process`` (``write_roi`` /
``check_length`` help), add it with :func:`register_video_prep`, and import heavy dependencies
inside its constructor so that other modes do not need them.

:func:`preprocess_video` runs a mode over ``data/<set>/video.scp`` with
:func:`~espnet_omni_avsr.prep.sharding.run_sharded` and merges into ``dump/<set>/``:

- ``video.scp``: the source path when the video needs no change, else ``<out_dir>/video/<id>.mp4``
  (H.264, crf 18); with ``roi_format: npy``, ``<out_dir>/video/<id>.npy`` for every kept video: the
  decoded (T, size, size) uint8 frames, about 9 KB a frame, which the training loader reads about 12
  times faster than it decodes an mp4 (`benchmarks/video_loading.py`), for when decoding is what
  the training steps wait for;
- ``utt2num_frames``: frames of each kept video;
- ``text``, ``utt2spk``, ``spk2utt``: copied from ``data/<set>``;
- ``bad_items.tsv``: its stage ``video`` lines replaced by this run's rejections;
- ``notes.tsv``: stage ``video`` lines for changed videos (``resized 128x128 -> 96x96``).

Merging rewrites the lists of ``dump/<set>``; if the filtering stage had filtered it, its unfiltered lists are
restored first (filtering must then run again).
"""
import logging
import os
from abc import ABC, abstractmethod
from typing import Dict, Mapping, Optional, Type

import numpy as np

from espnet_omni_avsr.data.video_io import VideoReadError, read_video, video_info, write_video
from espnet_omni_avsr.prep import kaldi_dir
from espnet_omni_avsr.prep.errors import ItemError, PrepError
from espnet_omni_avsr.prep.sharding import StageResult, WorkItem, run_sharded

logger = logging.getLogger(__name__)

STAGE = "video"


class AbsVideoPrep(ABC):
    """One source video -> the mouth ROI. Instances are called by the sharded runner (in worker
    processes, so they must be picklable) and return the result fields of one item.

    Args:
        video_dir: where rewritten ROI videos go (``<out_dir>/video``).
        size: side of the square ROI in pixels.
        fps: the frame rate the ROI must have.
        min_frames: shorter videos are bad items.
        crf: x264 quality of rewritten videos (0 best .. 51 worst).
        roi_format: ``mp4`` (H.264 at ``crf``; only videos that change are rewritten) or ``npy``
            (every kept video as its decoded uint8 frames: lossless and cheap to read, about 30x
            the disk of the embedded corpus's mp4s).
    """

    ROI_FORMATS = ("mp4", "npy")

    def __init__(self, video_dir: str, size: int = 96, fps: float = 25.0, min_frames: int = 5, crf: int = 18,
                 roi_format: str = "mp4"):
        if size < 2 or size % 2:
            raise PrepError(f"--size must be an even number >= 2 (H.264 in yuv420p), got {size}")
        if fps <= 0:
            raise PrepError(f"--fps must be positive, got {fps}")
        if min_frames < 1:
            raise PrepError(f"--min_frames must be >= 1, got {min_frames}")
        if not 0 <= crf <= 51:
            raise PrepError(f"crf must be in [0, 51], got {crf}")
        if roi_format not in self.ROI_FORMATS:
            raise PrepError(f"roi_format must be one of {', '.join(self.ROI_FORMATS)}, got {roi_format!r}")
        self.video_dir, self.size, self.fps, self.min_frames, self.crf = video_dir, size, fps, min_frames, crf
        self.roi_format = roi_format

    def config(self) -> Dict:
        """Every option that changes the output (part of the resume fingerprint)."""
        return {"class": type(self).__name__, "video_dir": self.video_dir, "size": self.size,
                "fps": self.fps, "min_frames": self.min_frames, "crf": self.crf, "roi_format": self.roi_format}

    @abstractmethod
    def process(self, item: WorkItem) -> Dict:
        """Return {"path", "num_frames", "note", "outputs"} for a good item; raise ItemError
        (the reason names the file) for a bad one."""

    def __call__(self, item: WorkItem) -> Dict:
        return self.process(item)

    # ---- helpers for modes ------------------------------------------------------------------
    def check_length(self, frames: np.ndarray, path: str) -> None:
        if len(frames) < self.min_frames:
            raise ItemError(f"{path}: too short: {len(frames)} frames < --min_frames {self.min_frames}")

    def write_roi(self, uid: str, frames: np.ndarray) -> str:
        """Write (T, size, size) uint8 frames to ``<video_dir>/<uid>.<roi_format>`` atomically; its path."""
        os.makedirs(self.video_dir, exist_ok=True)
        ext = self.roi_format
        path = os.path.join(self.video_dir, f"{uid}.{ext}")
        tmp = os.path.join(self.video_dir, f"{uid}.tmp{os.getpid()}.{ext}")
        try:
            if ext == "npy":
                np.save(tmp, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
            else:
                write_video(tmp, frames, fps=self.fps, crf=self.crf)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path


class PrecroppedVideoPrep(AbsVideoPrep):
    """Videos that are already mouth ROIs: check them, resize to ``size`` when needed.

    "No detectable mouth" means, for an ROI, a picture without structure: a *flat frame* is one
    whose pixel standard deviation (over the frame) is below ``blank_frame_std`` grey levels (the
    embedded corpus's mouths are above 6, a black or grey frame is about 0). A video is rejected as
    blank when every frame is flat, when its pixels hardly change over time (the per-pixel standard
    deviation over time, averaged over the frame, is below ``min_motion_std``: a frozen or constant
    picture; rendered and real mouths move by 2 or more), or when more than
    ``max_blank_fraction`` of its frames are flat (a lost face track).

    Args:
        min_motion_std: grey levels; see above.
        blank_frame_std: grey levels; see above.
        max_blank_fraction: in [0, 1]; see above.
        (the others: :class:`AbsVideoPrep`)
    """

    def __init__(
        self,
        video_dir: str,
        size: int = 96,
        fps: float = 25.0,
        min_frames: int = 5,
        crf: int = 18,
        roi_format: str = "mp4",
        min_motion_std: float = 1.0,
        blank_frame_std: float = 2.0,
        max_blank_fraction: float = 0.1,
    ):
        super().__init__(video_dir, size=size, fps=fps, min_frames=min_frames, crf=crf, roi_format=roi_format)
        if min_motion_std < 0 or blank_frame_std < 0:
            raise PrepError("min_motion_std and blank_frame_std must be >= 0")
        if not 0 <= max_blank_fraction <= 1:
            raise PrepError(f"max_blank_fraction must be in [0, 1], got {max_blank_fraction}")
        self.min_motion_std = float(min_motion_std)
        self.blank_frame_std = float(blank_frame_std)
        self.max_blank_fraction = float(max_blank_fraction)

    def config(self) -> Dict:
        return dict(super().config(), min_motion_std=self.min_motion_std,
                    blank_frame_std=self.blank_frame_std, max_blank_fraction=self.max_blank_fraction)

    def process(self, item: WorkItem) -> Dict:
        path = item.path
        try:
            frames = read_video(path)
            _, fps, _, _ = video_info(path)
        except VideoReadError as e:
            raise ItemError(f"video does not decode: {e}") from None
        if fps is not None and abs(fps - self.fps) > 0.01 * self.fps:
            raise ItemError(
                f"{path}: {fps:g} fps, expected {self.fps:g} (precropped mode does not change the frame rate)"
            )
        self.check_length(frames, path)
        self.check_mouth(frames, path)
        height, width = frames.shape[1:]
        if (height, width) == (self.size, self.size):
            if self.roi_format == "mp4":  # the source as it is
                return {"path": path, "num_frames": len(frames), "note": "", "outputs": []}
            out = self.write_roi(item.uid, frames)  # the same pixels, stored decoded
            return {"path": out, "num_frames": len(frames), "note": "", "outputs": [out]}
        out = self.write_roi(item.uid, resize_frames(frames, self.size))
        note = f"resized {height}x{width} -> {self.size}x{self.size} ({path})"
        return {"path": out, "num_frames": len(frames), "note": note, "outputs": [out]}

    def check_mouth(self, frames: np.ndarray, path: str) -> None:
        """ItemError "no visible mouth ..." for a blank, frozen or mostly flat video."""
        pixels = frames.reshape(len(frames), -1).astype(np.float32)
        flat = pixels.std(axis=1) < self.blank_frame_std
        if flat.all():
            raise ItemError(
                f"no visible mouth (blank video): all {len(frames)} frames of {path} are flat "
                f"(pixel std < {self.blank_frame_std:g})"
            )
        if len(frames) > 1:
            motion = float(pixels.std(axis=0).mean())
            if motion < self.min_motion_std:
                raise ItemError(
                    f"no visible mouth (blank video): the pixels of {path} hardly change over time "
                    f"(mean temporal std {motion:.2f} < {self.min_motion_std:g})"
                )
        if flat.mean() > self.max_blank_fraction:
            idx = np.flatnonzero(flat)
            raise ItemError(
                f"no visible mouth in {len(idx)} of {len(frames)} frames of {path} (flat frames, "
                f"first {idx[0]}, last {idx[-1]}; more than {self.max_blank_fraction:.0%} allowed)"
            )


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W) uint8 -> (T, size, size) uint8 (area averaging to shrink, bicubic to enlarge)."""
    import cv2

    shrink = frames.shape[1] >= size and frames.shape[2] >= size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (size, size), interpolation=interpolation) for f in frames])


VIDEO_PREP_MODES: Dict[str, Type[AbsVideoPrep]] = {"precropped": PrecroppedVideoPrep}


def register_video_prep(name: str, cls: Type[AbsVideoPrep]) -> None:
    """Make ``cls`` available as ``--mode name``."""
    if not (isinstance(cls, type) and issubclass(cls, AbsVideoPrep)):
        raise TypeError(f"{cls!r} is not an AbsVideoPrep subclass")
    if name in VIDEO_PREP_MODES and VIDEO_PREP_MODES[name] is not cls:
        raise ValueError(f"video prep mode {name!r} is already registered ({VIDEO_PREP_MODES[name].__name__})")
    VIDEO_PREP_MODES[name] = cls


def build_video_prep(mode: str, video_dir: str, **conf) -> AbsVideoPrep:
    if mode not in VIDEO_PREP_MODES:
        raise PrepError(f"unknown --mode {mode!r}; choose from {sorted(VIDEO_PREP_MODES)}")
    try:
        return VIDEO_PREP_MODES[mode](video_dir=video_dir, **conf)
    except TypeError as e:  # an unknown option in --mode_conf
        raise PrepError(f"--mode {mode}: bad options {conf}: {e}") from None


def preprocess_video(
    data_dir: str,
    out_dir: str,
    mode: str = "precropped",
    nj: int = 1,
    shard: Optional[int] = None,
    mode_conf: Optional[Mapping] = None,
) -> StageResult:
    """Stage 2 on ``data_dir/video.scp``; merge into ``out_dir`` (module docstring).

    Args:
        data_dir: ``data/<set>`` (video.scp, text, utt2spk, spk2utt).
        out_dir: ``dump/<set>``.
        mode: a key of ``VIDEO_PREP_MODES``.
        nj: shards / processes.
        shard: process only this shard (1-based) and do not merge (see sharding.py).
        mode_conf: keyword arguments of the mode (size, fps, min_frames, crf, and its own).

    Returns:
        a StageResult; ``run.complete`` is False (and nothing merged) while other shards are
        pending after ``shard``.
    """
    if os.path.abspath(data_dir) == os.path.abspath(out_dir):
        raise PrepError(f"--data_dir and --out_dir are the same folder ({data_dir})")
    scp = kaldi_dir.read_table(os.path.join(data_dir, "video.scp"))
    os.makedirs(out_dir, exist_ok=True)
    prep = build_video_prep(mode, os.path.join(out_dir, "video"), **dict(mode_conf or {}))
    items = [WorkItem(uid, path) for uid, path in scp.items()]
    run = run_sharded(items, prep, os.path.join(out_dir, ".work", STAGE), nj, prep.config(), shard, desc="video")
    logger.info("%s: %d videos processed, %d reused from an earlier run", out_dir, run.processed, run.reused)
    if not run.complete:
        logger.info("shard %s done; other shards are pending: run again without --shard to merge", shard)
        return StageResult(run)
    if kaldi_dir.restore_unfiltered(out_dir):
        logger.warning("%s had been filtered; its unfiltered lists are restored: run the filtering stage (filter_data) again", out_dir)
    ok = {uid: r for uid, r in run.results.items() if r["ok"]}
    kaldi_dir.write_table(os.path.join(out_dir, "video.scp"), {u: r["path"] for u, r in ok.items()})
    kaldi_dir.write_table(os.path.join(out_dir, "utt2num_frames"), {u: r["num_frames"] for u, r in ok.items()})
    kaldi_dir.copy_lists(data_dir, out_dir, ["text", "utt2spk", "spk2utt"])
    bad = [kaldi_dir.ItemRecord(u, STAGE, r["reason"]) for u, r in run.results.items() if not r["ok"]]
    notes = [kaldi_dir.ItemRecord(u, STAGE, r["note"]) for u, r in ok.items() if r.get("note")]
    kaldi_dir.replace_stage_records(os.path.join(out_dir, kaldi_dir.BAD_ITEMS), STAGE, bad)
    kaldi_dir.replace_stage_records(os.path.join(out_dir, kaldi_dir.NOTES), STAGE, notes)
    logger.info("%s: %d of %d videos kept, %d rewritten", out_dir, len(ok), len(run.results), len(notes))
    if bad:
        logger.warning("%s: %d videos rejected, see %s", out_dir, len(bad), os.path.join(out_dir, kaldi_dir.BAD_ITEMS))
    return StageResult(run, kept=sorted(ok), bad=sorted(bad))


# the face modes register themselves (mediapipe, dlib, landmarks); imported last because they
# subclass AbsVideoPrep. Their heavy dependencies load only when a mode is built.
import espnet_omni_avsr.prep.face.face_video_prep  # noqa: E402,F401
