"""Fuzzing the video readers (data/video_io.py) and ESPnet's `video` data type (data/espnet_video_type.py):
random bytes, truncated and corrupted containers, zero frames, 1x1 and 4000x4000 frames, odd pixel
formats and channel counts, variable frame rates, .npy arrays of any shape and dtype, Kaldi arks,
malformed scp lists. Every case reads fine or raises a VideoReadError / ValueError naming the file
(and, through an scp, the utterance)."""
import fractions
import os

import av
import kaldiio
import numpy as np
import pytest

from espnet_omni_avsr.data.espnet_video_type import VideoFramesLoader, register_video_data_type
from espnet_omni_avsr.data.video_io import read_video, video_info, write_video
from tests.fuzz.fuzzlib import case

EXTS = (".mp4", ".mkv", ".avi", ".webm", ".mov")
CODEC = {".webm": "libvpx-vp9"}


def _frames(rng, t=10, size=16):
    return rng.integers(0, 256, (t, size, size), dtype=np.uint8)


def _check_frames(out, path, shape=None):
    assert out.dtype == np.uint8 and out.ndim == 3 and min(out.shape) >= 1, (path, out.shape, out.dtype)
    if shape is not None:
        assert out.shape == shape, (path, out.shape, shape)


def _both(reader, name, path, expect=None, shape=None, min_frames=None):
    """read_video and video_info of one file."""
    out = case(reader, name, lambda: read_video(path), [path], expect=expect)
    if out is not None:
        _check_frames(out, path, shape)
        if min_frames is not None:
            assert len(out) >= min_frames, (path, out.shape)
    info = case(reader + ".info", name, lambda: video_info(path), [path], expect=None if expect == "error" else expect)
    if info is not None:
        assert info[0] >= 1 and info[2] >= 1 and info[3] >= 1, (path, info)


def _write_raw(path, codec, pix_fmt, width, height, n, rng, pts_ms=None):
    """Frames of random planes with PyAV (any codec / pixel format); pts_ms: timestamps in ms (VFR)."""
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            s.codec_context.time_base = fractions.Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame(width, height, pix_fmt)
            for plane in frame.planes:
                plane.update(rng.integers(0, 256, plane.buffer_size, dtype=np.uint8).tobytes())
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
            c.mux(s.encode(frame))
        c.mux(s.encode())


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(1)
    magic = {".mp4": b"\x00\x00\x00\x18ftypmp42", ".mov": b"\x00\x00\x00\x14ftypqt  ", ".mkv": b"\x1aE\xdf\xa3",
             ".webm": b"\x1aE\xdf\xa3", ".avi": b"RIFF\x00\x10\x00\x00AVI LIST"}
    for ext in EXTS:
        for seed in range(6):
            head = magic[ext] if seed % 2 else b""
            path = str(tmp_path / f"rand{seed}{ext}")
            with open(path, "wb") as f:
                f.write(head + rng.bytes(int(rng.integers(0, 4000))))
            _both("video_io.container", f"random bytes {seed}{ext}", path, expect="error")


def test_truncated_and_corrupted_containers(tmp_path):
    rng = np.random.default_rng(2)
    for ext in EXTS:
        good = str(tmp_path / f"good{ext}")
        write_video(good, _frames(rng), codec=CODEC.get(ext, "libx264"))
        data = open(good, "rb").read()
        _both("video_io.container", f"valid{ext}", good, expect="ok", shape=(10, 16, 16))
        for k, frac in enumerate(np.concatenate([[0.0, 0.02, 0.5, 0.999], rng.uniform(0, 1, 4)])):
            path = str(tmp_path / f"trunc{k}{ext}")
            with open(path, "wb") as f:
                f.write(data[: int(len(data) * frac)])
            # what decodes is at least 90 % of the declared frames, less one (video_io's rule)
            _both("video_io.container", f"truncated at {frac:.3f}{ext}", path, min_frames=8)
        for k in range(4):
            b = bytearray(data)
            for i in rng.integers(0, len(b), int(rng.integers(1, 40))):
                b[i] = int(rng.integers(0, 256))
            path = str(tmp_path / f"corrupt{k}{ext}")
            with open(path, "wb") as f:
                f.write(bytes(b))
            _both("video_io.container", f"corrupted bytes {k}{ext}", path)


def test_zero_frames_and_audio_only(tmp_path):
    for ext in (".mp4", ".mkv"):
        path = str(tmp_path / f"empty{ext}")
        with av.open(path, "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.width = s.height = 16
            s.pix_fmt = "yuv420p"
            c.mux(s.encode())
        _both("video_io.container", f"no frames{ext}", path, expect="error")
        path = str(tmp_path / f"audio{ext}")
        with av.open(path, "w") as c:
            s = c.add_stream("aac", rate=16000)
            for _ in range(4):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate = 16000
                c.mux(s.encode(frame))
            c.mux(s.encode())
        _both("video_io.container", f"audio only{ext}", path, expect="error")


@pytest.mark.parametrize("codec,pix_fmt,ext,width,height", [
    ("rawvideo", "gray", ".avi", 1, 1), ("ffv1", "gray", ".mkv", 1, 1), ("rawvideo", "gray", ".mkv", 5, 7),
    ("libx264", "yuv420p", ".mp4", 2, 2), ("ffv1", "gray", ".mkv", 4000, 4000),
    ("ffv1", "bgra", ".mkv", 8, 6), ("rawvideo", "rgb24", ".avi", 5, 5), ("ffv1", "gray16le", ".mkv", 8, 8),
    ("ffv1", "yuva420p", ".mkv", 8, 8), ("libx264", "yuv444p", ".mp4", 6, 4), ("ffv1", "rgb48le", ".mkv", 4, 4),
    ("rawvideo", "pal8", ".avi", 4, 4), ("rawvideo", "monob", ".avi", 8, 8),
])
def test_frame_sizes_and_pixel_formats(tmp_path, codec, pix_fmt, ext, width, height):
    path = str(tmp_path / f"{codec}_{pix_fmt}{ext}")
    _write_raw(path, codec, pix_fmt, width, height, 2, np.random.default_rng(3))
    _both("video_io.container", f"{codec} {pix_fmt} {width}x{height}{ext}", path, expect="ok", shape=(2, height, width))


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_variable_frame_rate(tmp_path, ext):
    rng = np.random.default_rng(4)
    for k in range(3):
        n = int(rng.integers(5, 30))
        pts = np.cumsum(np.concatenate([[0], rng.choice([10, 40, 120, 300], n - 1)]))
        path = str(tmp_path / f"vfr{k}{ext}")
        _write_raw(path, "libx264", "yuv420p", 16, 16, n, rng, pts_ms=pts)
        _both("video_io.container", f"variable frame rate {k}{ext}", path, expect="ok", shape=(n, 16, 16))
        data = open(path, "rb").read()
        cut = str(tmp_path / f"vfr{k}_cut{ext}")
        with open(cut, "wb") as f:
            f.write(data[: len(data) // 2])
        out = case("video_io.container", f"variable frame rate {k}, truncated{ext}", lambda: read_video(cut), [cut])
        assert out is None or len(out) < n  # refused, or fewer frames (at least 90 % of the declared ones)


def _random_array(rng):
    ndim = int(rng.choice([0, 1, 2, 3, 3, 3, 4, 4, 5]))
    shape = tuple(int(rng.choice([0, 1, 2, 3, 5])) if rng.random() < 0.2 else int(rng.integers(1, 9)) for _ in range(ndim))
    if ndim == 4 and rng.random() < 0.6:
        shape = shape[:3] + (int(rng.choice([1, 2, 3, 4])),)
    dtype = rng.choice(["u1", "u2", "i2", "i8", "f4", "f8", "f2", "?", "c8", ">u2", "U1", "M8[s]"])
    if dtype in ("U1",):
        return np.full(shape, "a", dtype=dtype)
    if dtype == "M8[s]":
        return np.zeros(shape, dtype=dtype)
    kind = rng.choice(["pixels", "unit", "negative", "large", "nan", "inf"])
    values = {"pixels": rng.integers(0, 256, shape), "unit": rng.random(shape), "negative": -rng.integers(1, 50, shape),
              "large": rng.integers(256, 70000, shape), "nan": np.full(shape, np.nan), "inf": np.full(shape, np.inf)}[kind]
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(values).astype(dtype)


def test_npy_arrays(tmp_path):
    rng = np.random.default_rng(5)
    fixed = {"1x1": np.zeros((3, 1, 1), np.uint8), "4000x4000": np.zeros((1, 4000, 4000), np.uint8),
             "zero frames": np.zeros((0, 8, 8), np.uint8), "zero height": np.zeros((2, 0, 8), np.uint8),
             "rgb": rng.integers(0, 256, (2, 4, 4, 3)).astype(np.uint8), "two channels": np.zeros((2, 4, 4, 2), np.uint8),
             "fortran order": np.asfortranarray(rng.integers(0, 256, (2, 4, 6)).astype(np.uint8))}
    for name, array in fixed.items():
        path = str(tmp_path / f"{name.replace(' ', '_')}.npy")
        np.save(path, array)
        ok = name in ("1x1", "4000x4000", "rgb", "fortran order")
        _both("video_io.npy", name, path, expect="ok" if ok else "error", shape=array.shape[:3] if ok else None)
    for k in range(60):
        array = _random_array(rng)
        path = str(tmp_path / f"random{k}.npy")
        np.save(path, array)
        out = case("video_io.npy", f"random array {k} {array.shape} {array.dtype}", lambda: read_video(path), [path])
        if out is not None:
            _check_frames(out, path, array.shape[:3])
        case("video_io.npy.info", f"random array {k}", lambda: video_info(path), [path])
    # broken files: object arrays (pickles), random bytes, empty, truncated, a header promising 1.5 TiB
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "random.npy").write_bytes(rng.bytes(500))
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "good.npy", rng.integers(0, 256, (5, 8, 8), dtype=np.uint8))
    good = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(good[: len(good) // 2])
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 4000, 4000), }"
    (tmp_path / "huge_header.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header.ljust(118) + b"\n").to_bytes(2, "little")
                                                + header.ljust(118) + b"\n")
    for name in ("object", "random", "empty", "truncated", "huge_header"):
        _both("video_io.npy", name, str(tmp_path / f"{name}.npy"), expect="error")


def test_kaldi_arks(tmp_path):
    rng = np.random.default_rng(6)
    ark, scp = str(tmp_path / "v.ark"), str(tmp_path / "v.scp")
    mats = {f"m{k}": rng.integers(0, 256, (int(rng.integers(1, 5)), int(rng.choice([16, 15, 64, 1, 4])))).astype(np.float32)
            for k in range(10)}
    mats.update(vector=np.zeros(16, np.float32), out_of_range=np.full((2, 16), 1000, np.float32))
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        for key, m in mats.items():
            w(key, m)
        w("audio", (16000, np.zeros(100, np.int16)))
    specs = dict(line.split() for line in open(scp))
    for key, spec in specs.items():
        out = case("video_io.ark", key, lambda: read_video(spec), [spec])
        if out is not None:
            m = mats[key]
            side = int(np.sqrt(m.shape[1]))
            _check_frames(out, spec, (m.shape[0], side, side))
    data = open(ark, "rb").read()
    offsets = sorted(int(s.rsplit(":", 1)[1]) for s in specs.values())
    for k in range(6):
        cut = str(tmp_path / f"cut{k}.ark")
        with open(cut, "wb") as f:
            f.write(data[: int(rng.integers(0, len(data)))])
        spec = f"{cut}:{int(rng.choice(offsets))}"
        case("video_io.ark", f"truncated ark {k}", lambda: read_video(spec), [spec])
    junk = str(tmp_path / "junk.ark")
    with open(junk, "wb") as f:
        f.write(rng.bytes(300))
    for offset in (0, 7, 299, 10 ** 6):
        spec = f"{junk}:{offset}"
        case("video_io.ark", f"random bytes at {offset}", lambda: read_video(spec), [spec], expect="error")
    spec = f"{tmp_path / 'missing.ark'}:0"
    case("video_io.ark", "missing ark", lambda: read_video(spec), [spec], expect="error")


def test_scp_lists_through_the_espnet_loader(tmp_path):
    """VideoFramesLoader (ESPnet's `video` type) and ESPnetDataset over malformed scp lists."""
    from espnet2.train.dataset import ESPnetDataset

    register_video_data_type()
    rng = np.random.default_rng(7)
    good = str(tmp_path / "good.npy")
    np.save(good, rng.integers(0, 256, (3, 4, 4), dtype=np.uint8))
    bad = str(tmp_path / "bad.mp4")
    with open(bad, "wb") as f:
        f.write(rng.bytes(100))
    np.save(tmp_path / "with space.npy", np.zeros((2, 4, 4), np.uint8))
    entries = [good, bad, "/nonexistent/x.mp4", f"{tmp_path}/with space.npy", f"{good}\r", f"{bad}:12"]
    malformed = [b"idonly", "café.npy".encode("latin-1"), None]  # None: random bytes
    for k in range(40):
        picked = []
        for i in range(int(rng.integers(1, 6))):
            if rng.random() < 0.85:
                picked.append(f"u{i} {entries[int(rng.integers(len(entries)))]}".encode())
            else:
                line = malformed[int(rng.integers(len(malformed)))]
                picked.append(rng.bytes(30).replace(b"\n", b"") if line is None else f"u{i} ".encode() + line)
            if rng.random() < 0.1:
                picked.append(b"   ")
        if rng.random() < 0.1:
            picked.append(picked[0])  # a duplicated id
        scp = str(tmp_path / f"list{k}.scp")
        with open(scp, "wb") as f:
            f.write(b"\n".join(picked) + b"\n")
        loader = case("espnet_video_type.scp", f"scp {k}", lambda: VideoFramesLoader(scp), [scp])
        if loader is None:
            continue
        for uid in loader:
            frames = case("espnet_video_type.item", f"scp {k} {uid}", lambda: loader[uid], [uid])
            if frames is not None:
                assert frames.dtype == np.int16 and frames.ndim == 3
        dataset = case("espnet_video_type.dataset", f"scp {k}", lambda: ESPnetDataset([(scp, "video", "video")]),
                       [scp], allowed=(ValueError, RuntimeError))  # ESPnet's own: "<scp> has no samples"
        for uid in loader if dataset is not None else []:
            item = case("espnet_video_type.dataset", f"scp {k} {uid}", lambda: dataset[uid], [uid])
            if item is not None:
                assert item[1]["video"].ndim == 3
    assert os.path.isfile(good)
