"""Reading and writing grayscale mouth-ROI video: containers (PyAV), .npy and Kaldi ark.

Every reader returns frames as a ``(T, H, W)`` uint8 array (0..255, grayscale):

- video containers (.mp4, .avi, .mkv, .webm, .mov, ...): decoded with PyAV; colour frames are
  converted to gray (luma) by FFmpeg's scaler;
- ``.npy``: ``(T, H, W)`` arrays, also ``(T, H, W, 1)`` and ``(T, H, W, 3)`` (RGB, converted to
  luma with the ITU-R BT.601 weights); integer or float dtypes holding pixel values 0..255;
- Kaldi ark specifiers (``foo.ark:123``, as written by kaldiio): a 2-D ``(T, H * W)`` float matrix
  of pixel values is reshaped to square ``(T, S, S)`` frames; 3-D arrays are taken as they are.

Failures raise :class:`VideoReadError` (a ``ValueError``) whose message names the file and the
problem. :class:`VideoScpReader` reads a Kaldi-style scp lazily and adds the utterance id and the
scp file to those messages.
"""
import collections.abc
import math
import os
import re
from fractions import Fraction
from typing import Dict, Iterator, Optional, Tuple, Union

import av
import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

# A Kaldi ark specifier: "<ark path>:<byte offset>", optionally followed by a kaldiio slice.
_KALDI_SPEC = re.compile(r"^(?P<ark>.+):(?P<offset>\d+)(?P<slice>\[[^\]]*\])?$")

# Truncation check for containers that keep no sample table (mkv, webm): the file is called
# truncated when its decoded frames cover less than this fraction of the duration its header
# declares (less one frame). Cut-with-copy mp4 files decode a few frames fewer than their edit
# list's duration, so the check leaves slack. A variable-frame-rate file has fewer frames than
# duration x nominal rate; it passes when its frames' timestamps span the duration just as far.
_MIN_DECODED_FRACTION = 0.9
MIN_DECODED_FRACTION = _MIN_DECODED_FRACTION  # public: inference/media.py applies it to whole containers

# ITU-R BT.601 luma weights, the ones FFmpeg's scaler uses for RGB -> gray.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class VideoReadError(ValueError):
    """A video could not be read; the message names the file (and utterance) and the problem."""


# ---- reading -------------------------------------------------------------------------------
def read_video(path_or_spec: PathLike) -> np.ndarray:
    """Read grayscale frames from a video file, an .npy file or a Kaldi ark specifier.

    Args:
        path_or_spec: a file path (.mp4, .avi, .mkv, .webm, .npy, ...) or ``foo.ark:123``.

    Returns:
        frames: (T, H, W) uint8, T >= 1.

    Raises:
        VideoReadError: missing file, undecodable/corrupt/truncated data, zero frames, or data that
            is not grayscale-convertible pixel values.
    """
    spec = os.fspath(path_or_spec)
    if _is_kaldi_spec(spec):
        return _read_kaldi(spec)
    if not os.path.exists(spec):
        raise VideoReadError(f"{spec}: file not found")
    if not os.path.isfile(spec):
        raise VideoReadError(f"{spec}: not a regular file")
    suffix = os.path.splitext(spec)[1].lower()
    if suffix == ".npy":
        return _read_npy(spec)
    if suffix == ".ark":
        raise VideoReadError(
            f"{spec}: a Kaldi ark needs a byte offset (foo.ark:123, as listed in its scp)"
        )
    return _read_container(spec)


def video_info(path_or_spec: PathLike, exact: bool = False) -> Tuple[int, Optional[float], int, int]:
    """Frame count, frame rate and frame size, without decoding where the format allows it.

    Args:
        path_or_spec: as for :func:`read_video`.
        exact: decode a container to count its frames. Otherwise the count comes from the header
            (mp4/avi sample tables, else duration x rate, else the number of packets); a file with
            an edit list (cut with ``-c copy``) may decode fewer frames than its header lists.

    Returns:
        (num_frames, fps, height, width); fps is None for .npy and ark data (no rate stored).
    """
    spec = os.fspath(path_or_spec)
    if _is_kaldi_spec(spec):
        frames = _read_kaldi(spec)
        return frames.shape[0], None, frames.shape[1], frames.shape[2]
    if not os.path.isfile(spec):
        raise VideoReadError(f"{spec}: file not found")
    suffix = os.path.splitext(spec)[1].lower()
    if suffix == ".npy":
        try:
            array = np.load(spec, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise VideoReadError(f"{spec}: not a readable .npy array: {e}") from e
        _check_frame_shape(array.shape, spec)
        if array.shape[0] == 0:
            raise VideoReadError(f"{spec}: zero frames")
        return int(array.shape[0]), None, int(array.shape[1]), int(array.shape[2])
    if exact:
        frames = _read_container(spec)
        with _open_container(spec) as container:
            fps = _stream_rate(container.streams.video[0])
        return frames.shape[0], fps, frames.shape[1], frames.shape[2]
    with _open_container(spec) as container:
        stream = _first_video_stream(container, spec)
        fps = _stream_rate(stream)
        if stream.codec_context is None:
            raise VideoReadError(f"{spec}: the video stream's codec is unknown to FFmpeg (corrupt header?)")
        height, width = stream.codec_context.height, stream.codec_context.width
        num_frames = int(stream.frames)
        if num_frames <= 0:
            declared = _declared_num_frames(container, stream)
            num_frames = round(declared) if declared is not None else 0
        if num_frames <= 0:
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
            except av.FFmpegError as e:
                raise VideoReadError(f"{spec}: corrupt or truncated: {e}") from e
        if num_frames <= 0:
            raise VideoReadError(f"{spec}: zero frames")
        return num_frames, fps, height, width


def _is_kaldi_spec(spec: str) -> bool:
    return _KALDI_SPEC.match(spec) is not None and not os.path.exists(spec)


def _open_container(path: str) -> "av.container.InputContainer":
    try:
        return av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as e:  # corrupt metadata strings are not UTF-8
        raise VideoReadError(f"{path}: not a decodable video file (corrupt or truncated): {e}") from e


def _first_video_stream(container, path: str):
    if not container.streams.video:
        raise VideoReadError(f"{path}: no video stream (zero frames, or an audio-only file)")
    return container.streams.video[0]


def _stream_rate(stream) -> Optional[float]:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _declared_seconds(container, stream) -> Optional[float]:
    """The video stream's duration, else (single-stream files only) the container's; None when
    the header says nothing usable."""
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        seconds = container.duration / av.time_base
    else:
        return None
    return seconds if seconds > 0 else None


def _declared_num_frames(container, stream) -> Optional[float]:
    """Frames the header promises: its duration (`_declared_seconds`) times the frame rate."""
    fps = _stream_rate(stream)
    seconds = _declared_seconds(container, stream)
    return seconds * fps if fps and seconds else None


def _read_container(path: str) -> np.ndarray:
    frames = []
    times = []  # presentation times (s) of the decoded frames, where the container gives them
    with _open_container(path) as container:
        stream = _first_video_stream(container, path)
        try:
            for frame in container.decode(stream):
                if frame.time is not None:
                    times.append(frame.time)
                try:
                    frames.append(_frame_to_gray(frame))
                except (ValueError, av.FFmpegError) as e:
                    raise VideoReadError(
                        f"{path}: frame {len(frames)} (pixel format {frame.format.name}) cannot be "
                        f"converted to grayscale: {e}"
                    ) from e
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise VideoReadError(
                f"{path}: corrupt or truncated: decoding failed after {len(frames)} frames: {e}"
            ) from e
        if not frames:
            raise VideoReadError(f"{path}: zero frames decoded")
        declared = _declared_num_frames(container, stream)
        if declared is not None and len(frames) < _MIN_DECODED_FRACTION * declared - 1 and _covers_declared_time(
            container, stream, times
        ):
            declared = None  # a variable frame rate: fewer frames than duration x rate, but no gap at the end
    if declared is not None and len(frames) < _MIN_DECODED_FRACTION * declared - 1:
        raise VideoReadError(
            f"{path}: truncated: the header declares about {declared:.0f} frames, only "
            f"{len(frames)} could be decoded"
        )
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise VideoReadError(f"{path}: the frame size changes inside the video: {sorted(sizes)}")
    return np.stack(frames)


def _covers_declared_time(container, stream, times) -> bool:
    """Whether the decoded frames' timestamps span the declared duration (as far as the frame
    count check allows, measured from the first decoded frame): true for a variable-frame-rate
    file, false for a truncated one (for a constant rate, the same rule as the count check)."""
    seconds, fps = _declared_seconds(container, stream), _stream_rate(stream)
    if not seconds or not fps or len(times) < 2:
        return False
    covered = max(times) - min(times) + 1.0 / fps
    return covered >= _MIN_DECODED_FRACTION * seconds - 1.0 / fps


# Planar formats whose first plane is the luma: their gray picture is that plane through FFmpeg's
# range mapping (limited-range 16..235 stretched to 0..255), read from a lookup table instead of
# a scaler call per frame (a 96x96 mouth video reads 5x faster; same pixels, tested).
_LUMA_PLANE_FORMATS = frozenset(
    ["gray", "yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"]
)
_gray_tables: Dict[Tuple[str, int], np.ndarray] = {}


def _frame_to_gray(frame: "av.VideoFrame") -> np.ndarray:
    """One decoded frame as (H, W) uint8 gray, the same pixels as ``to_ndarray(format="gray")``."""
    name = frame.format.name
    if name not in _LUMA_PLANE_FORMATS:
        return frame.to_ndarray(format="gray")
    key = (name, int(frame.color_range))
    table = _gray_tables.get(key)
    if table is None:
        table = _gray_tables[key] = _luma_to_gray_table(*key)
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : frame.width]
    return table[luma]


def _luma_to_gray_table(format_name: str, color_range: int) -> np.ndarray:
    """FFmpeg's luma -> gray mapping for this format and range, read off a frame holding 0..255."""
    frame = av.VideoFrame(256, 2, format_name)
    for i, plane in enumerate(frame.planes):
        values = np.full((plane.height, plane.line_size), 128, np.uint8)
        if i == 0:
            values[:, :256] = np.arange(256, dtype=np.uint8)
        plane.update(values.tobytes())
    frame.color_range = color_range
    return frame.to_ndarray(format="gray")[0].copy()


def _read_npy(path: str) -> np.ndarray:
    try:
        # memory-mapped first: a header that promises more data than the file holds is refused
        # here instead of allocating what it promises
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise VideoReadError(f"{path}: not a readable .npy array (corrupt or truncated): {e}") from e
    _check_frame_shape(array.shape, path)
    return _to_gray_uint8(np.array(array), path)  # read into memory (not a view of the file)


def _read_kaldi(spec: str) -> np.ndarray:
    import kaldiio

    ark = _KALDI_SPEC.match(spec).group("ark")
    if not os.path.isfile(ark):
        raise VideoReadError(f"{spec}: ark file {ark} not found")
    try:
        value = kaldiio.load_mat(spec)
    except Exception as e:  # kaldiio raises ValueError, AssertionError, EOFError, struct.error, ...
        raise VideoReadError(f"{spec}: not a readable Kaldi matrix (corrupt or truncated): {e}") from e
    if isinstance(value, tuple):
        raise VideoReadError(f"{spec}: holds audio (rate, samples), not video frames")
    array = np.asarray(value)
    if array.ndim == 2:
        num_frames, dim = array.shape
        side = math.isqrt(dim)
        if side * side != dim:
            raise VideoReadError(
                f"{spec}: a (T, {dim}) matrix cannot be reshaped to square frames "
                f"({dim} is not a square number); store (T, H*W) with H == W"
            )
        array = array.reshape(num_frames, side, side)
    return _to_gray_uint8(array, spec)


def _check_frame_shape(shape: Tuple[int, ...], path: str) -> None:
    if len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3)):
        if shape[1] == 0 or shape[2] == 0:
            raise VideoReadError(f"{path}: frames of size {shape[1]}x{shape[2]}: no pixels")
        return
    raise VideoReadError(
        f"{path}: array of shape {tuple(shape)} is not grayscale-convertible video; "
        "expected (T, H, W), (T, H, W, 1) or (T, H, W, 3)"
    )


def _to_gray_uint8(array: np.ndarray, path: str) -> np.ndarray:
    """(T, H, W[, 1 or 3]) pixel values 0..255 of any numeric dtype -> (T, H, W) uint8."""
    _check_frame_shape(array.shape, path)
    if array.shape[0] == 0:
        raise VideoReadError(f"{path}: zero frames")
    if array.dtype == np.uint8 and array.ndim == 3:
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "uif":
        raise VideoReadError(f"{path}: dtype {array.dtype} is not pixel data")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise VideoReadError(f"{path}: holds NaN or infinite values, not pixel data")
        # Compressed Kaldi matrices are off by a fraction of a level: accept +-0.5.
        low, high = float(array.min()), float(array.max())
        if low < -0.5 or high > 255.5:
            raise VideoReadError(f"{path}: values span [{low:g}, {high:g}], not pixel values 0..255")
        if high <= 1.0 and not np.all(array == np.round(array)):
            raise VideoReadError(
                f"{path}: values lie in [0, 1]; store unnormalised pixel values 0..255"
            )
    else:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise VideoReadError(f"{path}: values span [{low}, {high}], not pixel values 0..255")
    if array.ndim == 4:
        if array.shape[3] == 3:
            array = array.astype(np.float64) @ _LUMA_WEIGHTS
        else:
            array = array[..., 0]
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


# ---- writing -------------------------------------------------------------------------------
def write_video(
    path: PathLike,
    frames: np.ndarray,
    fps: Union[int, float, Fraction] = 25,
    crf: int = 18,
    codec: str = "libx264",
) -> None:
    """Write (T, H, W) uint8 grayscale frames.

    ``.npy`` is saved exactly (np.save). Any other extension is a container muxed by PyAV
    (.mp4, .mkv, .avi, ...) with ``codec`` (libx264 by default) in yuv420p, which is lossy
    (crf 18 gives about 38-45 dB PSNR on mouth crops) and needs even H and W.

    Args:
        path: output file; its extension picks the format.
        frames: (T, H, W) uint8, T >= 1.
        fps: frame rate written to the container.
        crf: x264 constant rate factor (0 = best, 51 = worst); ignored by other codecs.
        codec: an FFmpeg encoder name available to PyAV.
    """
    path = os.fspath(path)
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] == 0:
        raise ValueError(f"{path}: frames must be (T, H, W) with T >= 1, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 (0..255), got {frames.dtype}")
    if os.path.splitext(path)[1].lower() == ".npy":
        np.save(path, frames)
        return
    height, width = frames.shape[1:]
    if height % 2 or width % 2:
        raise ValueError(
            f"{path}: yuv420p needs even frame sizes, got {height}x{width}; crop or pad first"
        )
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf}")
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf)}
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray")
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


# ---- scp -----------------------------------------------------------------------------------
class VideoScpReader(collections.abc.Mapping):
    """Lazy ``utt_id -> (T, H, W) uint8`` mapping over a Kaldi-style scp.

    Each line is ``utt_id path_or_spec`` (the path may contain spaces); the file is parsed at
    construction, videos are read on access. Read errors are :class:`VideoReadError` naming the
    utterance id and the scp file; unknown ids raise ``KeyError``.

    Example:
        >>> reader = VideoScpReader("dump/video.scp")
        >>> frames = reader["spk1_utt1"]  # (T, H, W) uint8
    """

    def __init__(self, scp_path: PathLike):
        self.scp_path = os.fspath(scp_path)
        self._specs: Dict[str, str] = {}
        try:
            with open(self.scp_path, "rb") as f:  # bytes: a line that is not UTF-8 is named
                for line_number, raw in enumerate(f.read().splitlines(), 1):
                    try:
                        line = raw.decode("utf-8").strip()
                    except UnicodeDecodeError as e:
                        raise ValueError(f"{self.scp_path}:{line_number}: not UTF-8 text ({e})") from None
                    if not line:
                        continue
                    parts = line.split(maxsplit=1)
                    if len(parts) != 2:
                        raise ValueError(
                            f"{self.scp_path}:{line_number}: expected 'utt_id path', got {line!r}"
                        )
                    uid, spec = parts
                    if uid in self._specs:
                        raise ValueError(
                            f"{self.scp_path}:{line_number}: utterance id {uid!r} is duplicated"
                        )
                    self._specs[uid] = spec
        except FileNotFoundError as e:
            raise FileNotFoundError(f"video scp {self.scp_path} not found") from e

    def path(self, uid: str) -> str:
        """The scp entry (path or ark specifier) of ``uid``."""
        try:
            return self._specs[uid]
        except KeyError:
            raise KeyError(f"utterance {uid!r} is not in {self.scp_path}") from None

    def __getitem__(self, uid: str) -> np.ndarray:
        spec = self.path(uid)
        try:
            return read_video(spec)
        except VideoReadError as e:
            raise VideoReadError(f"utterance {uid!r} in {self.scp_path}: {e}") from e

    def __contains__(self, uid: object) -> bool:
        return uid in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.scp_path!r}, {len(self)} utterances)"
