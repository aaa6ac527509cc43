import re

import av
import kaldiio
import numpy as np
import pytest

from espnet_omni_avsr.data.video_io import (
    VideoReadError,
    VideoScpReader,
    read_video,
    video_info,
    write_video,
)


def smooth_frames(num_frames: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    """(T, size, size) uint8 moving gradients: compressible content, like a mouth crop."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames)[:, None, None]
    y = np.arange(size)[None, :, None]
    x = np.arange(size)[None, None, :]
    phase = rng.uniform(0, 3)
    frames = 128 + 60 * np.sin(x / 5 + t / 3 + phase) + 50 * np.cos(y / 4 - t / 5)
    return frames.clip(0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_container_round_trip(tmp_path, suffix):
    frames = smooth_frames()
    path = tmp_path / f"a{suffix}"
    write_video(path, frames, fps=25)
    back = read_video(path)
    assert back.dtype == np.uint8 and back.shape == frames.shape
    assert psnr(back, frames) > 30
    assert video_info(path) == (12, 25.0, 32, 32)
    assert video_info(path, exact=True) == (12, 25.0, 32, 32)


def test_colour_video_is_converted_to_gray(tmp_path):
    path = str(tmp_path / "colour.mp4")
    red = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for frame in red:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    gray = read_video(path)
    assert gray.shape == (4, 16, 16)
    assert abs(float(gray.mean()) - 0.299 * 255) < 4  # BT.601 luma of pure red


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuvj420p", "yuv444p", "gray", "rgb24"])
@pytest.mark.parametrize("color_range", [0, 1, 2])
def test_luma_plane_shortcut_gives_ffmpegs_gray_pixels(pix_fmt, color_range):
    """read_video takes the luma plane through a lookup table: the same pixels as FFmpeg's scaler,
    for every value, format and range (width 34: the plane's padded rows must be cut)."""
    from espnet_omni_avsr.data.video_io import _frame_to_gray

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (18, 34, 3), dtype=np.uint8)
    rgb[0, :, :] = np.arange(34)[:, None] * 7 % 256  # extremes of the range included
    rgb[1, :, :] = 255 - rgb[0]
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
    frame.color_range = color_range
    gray = _frame_to_gray(frame)
    assert gray.dtype == np.uint8 and gray.shape == (18, 34)
    assert np.array_equal(gray, frame.to_ndarray(format="gray"))


def test_npy_round_trip_exact(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    write_video(tmp_path / "a.npy", frames)
    np.testing.assert_array_equal(read_video(tmp_path / "a.npy"), frames)
    assert video_info(tmp_path / "a.npy") == (5, None, 8, 8)
    # other integer dtypes holding 0..255 and (T, H, W, 1) are accepted
    np.save(tmp_path / "b.npy", frames.astype(np.int64)[..., None])
    np.testing.assert_array_equal(read_video(tmp_path / "b.npy"), frames)


def test_npy_rgb_to_luma(tmp_path):
    rgb = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    np.save(tmp_path / "rgb.npy", rgb)
    assert np.all(read_video(tmp_path / "rgb.npy") == round(0.587 * 200))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 8), dtype=np.uint8), "not grayscale-convertible"),
        (np.zeros((4, 8, 8, 2), dtype=np.uint8), "not grayscale-convertible"),
        (np.full((4, 8, 8), 0.5, dtype=np.float32), "[0, 1]"),
        (np.full((4, 8, 8), 300, dtype=np.int32), "not pixel values"),
        (np.zeros((0, 8, 8), dtype=np.uint8), "zero frames"),
    ],
)
def test_npy_bad_content(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(VideoReadError, match=re.escape(str(path))) as info:
        read_video(path)
    assert message in str(info.value)


def test_kaldi_ark_round_trip_exact(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    ark, scp = str(tmp_path / "v.ark"), str(tmp_path / "v.scp")
    kaldiio.save_ark(
        ark,
        {"u1": frames.reshape(6, -1).astype(np.float32), "u2": frames[:3].reshape(3, -1).astype(np.float32)},
        scp=scp,
    )
    specs = dict(line.split() for line in open(scp))
    np.testing.assert_array_equal(read_video(specs["u1"]), frames)
    np.testing.assert_array_equal(read_video(specs["u2"]), frames[:3])
    assert video_info(specs["u2"]) == (3, None, 8, 8)
    np.testing.assert_array_equal(VideoScpReader(scp)["u1"], frames)


def test_kaldi_ark_not_square(tmp_path):
    ark = str(tmp_path / "v.ark")
    kaldiio.save_ark(ark, {"u1": np.zeros((3, 10), dtype=np.float32)})
    with pytest.raises(VideoReadError, match="not a square number"):
        read_video(ark + ":3")
    with pytest.raises(VideoReadError, match="missing.ark not found"):
        read_video(str(tmp_path / "missing.ark") + ":3")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoReadError, match=f"{re.escape(str(path))}: file not found"):
        read_video(path)
    with pytest.raises(VideoReadError, match="file not found"):
        video_info(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match=f"{re.escape(str(path))}: not a decodable video"):
        read_video(path)


def test_truncated_mp4(tmp_path):
    path = tmp_path / "full.mp4"
    write_video(path, smooth_frames(25))
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match=f"{re.escape(str(cut))}: .*truncated"):
        read_video(cut)


def test_truncated_mp4_with_index_first(tmp_path):
    """moov before mdat (faststart): the demuxer finds the sample data cut short."""
    path = str(tmp_path / "fast.mp4")
    with av.open(path, "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in smooth_frames(25):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())
    data = open(path, "rb").read()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(VideoReadError, match=f"{re.escape(str(cut))}: corrupt or truncated"):
        read_video(cut)


def test_truncated_mkv(tmp_path):
    """mkv keeps no sample table; the duration in its header gives the truncation away."""
    path = tmp_path / "full.mkv"
    write_video(path, smooth_frames(50))
    data = path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(VideoReadError, match=f"{re.escape(str(cut))}: (truncated|zero frames)"):
        read_video(cut)


def test_zero_frames(tmp_path):
    path = str(tmp_path / "empty.avi")
    container = av.open(path, "w")
    stream = container.add_stream("mjpeg", rate=25)
    stream.width, stream.height, stream.pix_fmt = 16, 16, "yuvj420p"
    container.start_encoding()
    container.close()
    with pytest.raises(VideoReadError, match=f"{re.escape(str(path))}: zero frames"):
        read_video(path)


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        write_video(tmp_path / "e.mp4", np.zeros((0, 16, 16), dtype=np.uint8))


def test_scp_reader(tmp_path):
    a = smooth_frames(4, 16)
    np.save(tmp_path / "a.npy", a)
    scp = tmp_path / "video.scp"
    scp.write_text(f"utt_a {tmp_path / 'a.npy'}\n\nutt_b {tmp_path / 'b.npy'}\n")
    reader = VideoScpReader(scp)
    assert len(reader) == 2 and list(reader) == ["utt_a", "utt_b"] and list(reader.keys()) == ["utt_a", "utt_b"]
    assert "utt_b" in reader and "utt_c" not in reader  # no file is opened for this
    np.testing.assert_array_equal(reader["utt_a"], a)
    with pytest.raises(VideoReadError, match=f"utterance 'utt_b' in {re.escape(str(scp))}: .*b.npy: file not found"):
        reader["utt_b"]
    with pytest.raises(KeyError, match=f"'utt_c' is not in {re.escape(str(scp))}"):
        reader["utt_c"]


def test_scp_reader_format_errors(tmp_path):
    scp = tmp_path / "bad.scp"
    scp.write_text("utt_a a.npy\nutt_a b.npy\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(scp))}:2: utterance id 'utt_a' is duplicated"):
        VideoScpReader(scp)
    scp.write_text("utt_a a.npy\nlonely\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(scp))}:2: expected 'utt_id path'"):
        VideoScpReader(scp)
    with pytest.raises(FileNotFoundError, match="missing.scp"):
        VideoScpReader(tmp_path / "missing.scp")
