"""Fuzzing what reaches the training preprocessor (data/preprocessor.py) and the audio readers:
transcripts (empty, whitespace, non-UTF-8 bytes, lone surrogates, 10,000 characters, characters
the LLM's vocabulary lacks), audio arrays (NaN / inf samples, all zeros, stereo, wrong dtypes, a
2-hour clip as a zero-copy view), video arrays, and wav files through the `audio16k` loader
(ESPnet's `sound` reader with a rate check) and through stage 3's formatter (prep/audio_prep.py): random bytes, truncated headers, a header that
declares 2 hours, 8 kHz, stereo, NaN. Each case passes or raises a ValueError naming the
utterance (ESPnet's loader and stage 3: an error naming the file)."""
import struct

import numpy as np
import pytest
import soundfile

from espnet_omni_avsr.data.preprocessor import AVSRPreprocessor
from tests.fuzz.fuzzlib import case

TWO_HOURS = 2 * 3600 * 16000


@pytest.fixture(scope="module")
def pre(tiny_llm_dir):
    return AVSRPreprocessor(train=False, tokenizer_dir=tiny_llm_dir, max_av_offset=0.2)


def _random_text(rng):
    kind = rng.choice(["ascii", "unicode", "astral", "controls", "surrogates", "whitespace", "bytes", "long"])
    n = int(rng.integers(0, 60))
    if kind == "ascii":
        return "".join(chr(c) for c in rng.integers(32, 127, n))
    if kind == "unicode":
        return "".join(chr(c) for c in rng.integers(0xA0, 0xD7FF, n))
    if kind == "astral":  # emoji, CJK extensions, private use: outside a small BPE vocabulary
        return "".join(chr(c) for c in rng.integers(0x10000, 0x10FFFF, n))
    if kind == "controls":
        return "".join(chr(c) for c in rng.integers(0, 32, n)) + "a"
    if kind == "surrogates":
        return "ab" + "".join(chr(c) for c in rng.integers(0xD800, 0xE000, max(n, 1)))
    if kind == "whitespace":
        return "".join(rng.choice([" ", "\t", "\n", "\u00a0", "\u3000", "\u2028"], n))
    if kind == "bytes":
        return rng.bytes(n)
    return "".join(rng.choice(list("abc xyz"), 10_000))


def test_transcripts(pre):
    fixed = {"empty": "", "whitespace": " \t\n\u3000 ", "10000 characters": "word " * 2000, "emoji": "hi 🤖 wörld ∑ 中文",
             "lone surrogate": "abc\udcff", "non-UTF-8 bytes": b"caf\xe9", "UTF-8 bytes": "café".encode(),
             "numpy string": np.array("HELLO"), "None": None, "int": 7, "special tokens": "<audio> </s> <pad>"}
    errors = {"empty", "whitespace", "lone surrogate", "non-UTF-8 bytes", "None", "int"}
    rng = np.random.default_rng(10)
    cases = list(fixed.items()) + [(f"random {k}", _random_text(rng)) for k in range(120)]
    vocab = len(pre.tokenizer)
    for name, text in cases:
        uid = f"utt-{name.replace(' ', '_')}"
        expect = ("error" if name in errors else "ok") if name in fixed else None
        out = case("preprocessor.text", name, lambda: pre(uid, {"text": text}), [uid], expect=expect)
        if out is not None:
            ids = out["text"]
            assert ids.dtype == np.int64 and ids.ndim == 1 and len(ids) >= 1 and ids.max() < vocab, (name, ids)


def _random_audio(rng):
    n = int(rng.choice([0, 1, 100, 16000, 32000]))
    layout = rng.choice(["mono", "mono", "column", "stereo", "channels first", "scalar", "3d"])
    shape = {"mono": (n,), "column": (n, 1), "stereo": (n, 2), "channels first": (2, n), "scalar": (), "3d": (1, n, 1)}[layout]
    dtype = rng.choice(["f4", "f4", "f8", "i2", "c8", "?", "O"])
    x = (rng.standard_normal(shape) * 0.1).astype(dtype)
    if dtype in ("f4", "f8") and x.size and rng.random() < 0.4:
        x.flat[int(rng.integers(0, x.size))] = rng.choice([np.nan, np.inf, -np.inf])
    if rng.random() < 0.15:
        x = np.zeros_like(x)
    return x


def test_audio_arrays(pre):
    rng = np.random.default_rng(11)
    fixed = {"NaN": np.full(16000, np.nan, np.float32), "inf": np.full(16000, np.inf, np.float32),
             "one NaN": np.concatenate([np.zeros(15999, np.float32), [np.nan]]).astype(np.float32),
             "all zeros": np.zeros(16000, np.float32), "stereo": np.zeros((16000, 2), np.float32),
             "(N, 1)": np.zeros((16000, 1), np.float32), "empty": np.zeros(0, np.float32)}
    errors = {"NaN", "inf", "one NaN", "stereo", "empty"}
    cases = list(fixed.items()) + [(f"random {k}", _random_audio(rng)) for k in range(80)]
    for name, speech in cases:
        uid = f"utt-{name.replace(' ', '_')}"
        expect = ("error" if name in errors else "ok") if name in fixed else None
        out = case("preprocessor.audio", name, lambda: pre(uid, {"speech": speech}), [uid], expect=expect)
        if out is not None:
            assert out["speech"].dtype == np.float32 and out["speech"].ndim == 1
            assert np.isfinite(out["speech"]).all()


def test_two_hour_audio_is_not_copied(tiny_llm_dir, pre):
    """A 2-hour clip as a zero-copy view of one sample (4 bytes): it passes unchanged, or, with
    max_duration, is refused before anything is allocated."""
    two_hours = np.broadcast_to(np.float32(0.1), (TWO_HOURS,))
    out = case("preprocessor.audio", "2 hours", lambda: pre("utt-long", {"speech": two_hours}), ["utt-long"], expect="ok")
    assert np.shares_memory(out["speech"], two_hours)
    capped = AVSRPreprocessor(train=False, tokenizer_dir=tiny_llm_dir, max_duration=30)
    case("preprocessor.audio", "2 hours, max_duration 30", lambda: capped("utt-long", {"speech": two_hours}),
         ["utt-long"], expect="error")
    frames = np.broadcast_to(np.int64(7), (2 * 3600 * 25, 96, 96))
    case("preprocessor.video", "2 hours, max_duration 30", lambda: capped("utt-long", {"video": frames}),
         ["utt-long"], expect="error")


def test_video_arrays(pre):
    rng = np.random.default_rng(12)
    for k in range(40):
        ndim = int(rng.choice([1, 2, 3, 3, 4]))
        shape = tuple(int(rng.choice([0, 1, 4, 96])) for _ in range(ndim))
        video = np.zeros(shape, dtype=rng.choice(["i8", "u1", "f4"]))
        data = {"video": video}
        if rng.random() < 0.5:
            data["speech"] = np.zeros(int(rng.integers(1, 4 * 640)), np.float32)
        out = case("preprocessor.video", f"random {k} {shape}", lambda: pre(f"utt-v{k}", data), [f"utt-v{k}"],
                   expect="ok" if ndim == 3 and 0 not in shape and "speech" not in data else None)
        if out is not None:
            assert out["video"].ndim == 3 and 0 not in out["video"].shape


def _wav_header(n_frames, rate=16000, channels=1):
    size = n_frames * channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
            + b"data" + struct.pack("<I", size))


def _audio_files(tmp_path):
    """name -> (path, whether ESPnet's loader + the preprocessor must refuse it)"""
    rng = np.random.default_rng(13)
    files = {}

    def write(name, samples, rate=16000, subtype=None):
        path = str(tmp_path / f"{name.replace(' ', '_')}.wav")
        soundfile.write(path, samples, rate, subtype=subtype)
        return path

    files["valid"] = write("valid", (rng.standard_normal(16000) * 0.1).astype(np.float32))
    files["NaN"] = write("NaN", np.full(16000, np.nan, np.float32), subtype="FLOAT")
    files["inf"] = write("inf", np.full(16000, np.inf, np.float32), subtype="FLOAT")
    files["all zeros"] = write("all zeros", np.zeros(16000, np.float32))
    files["8 kHz"] = write("8 kHz", (rng.standard_normal(8000) * 0.1).astype(np.float32), rate=8000)
    files["stereo"] = write("stereo", (rng.standard_normal((16000, 2)) * 0.1).astype(np.float32))
    files["no samples"] = write("no samples", np.zeros(0, np.float32))
    for k in range(4):
        path = str(tmp_path / f"random{k}.wav")
        with open(path, "wb") as f:
            f.write((b"RIFF" if k % 2 else b"") + rng.bytes(int(rng.integers(0, 2000))))
        files[f"random bytes {k}"] = path
    valid = open(files["valid"], "rb").read()
    for k, cut in enumerate((8, 30, 44, 45, 1001)):
        path = str(tmp_path / f"cut{k}.wav")
        with open(path, "wb") as f:
            f.write(valid[:cut])
        files[f"cut at byte {cut}"] = path
    path = str(tmp_path / "two_hours_declared.wav")  # the header declares 2 h, 0.1 s follow
    with open(path, "wb") as f:
        f.write(_wav_header(TWO_HOURS) + rng.bytes(3200))
    files["header declaring 2 hours"] = path
    return files


def test_wav_files_through_the_audio16k_loader(tmp_path, pre):
    """The training data path: ESPnetDataset with the `audio16k` type, then the preprocessor."""
    from espnet2.train.dataset import ESPnetDataset

    from espnet_omni_avsr.data.espnet_audio_type import AUDIO_DATA_TYPE, register_audio_data_type

    register_audio_data_type()
    must_refuse = {"NaN", "inf", "stereo", "no samples", "8 kHz"}
    for name, path in _audio_files(tmp_path).items():
        uid = f"utt-{name.replace(' ', '_')}"
        scp = tmp_path / f"{uid}.scp"
        scp.write_text(f"{uid} {path}\n")

        def load():
            dataset = ESPnetDataset([(str(scp), "speech", AUDIO_DATA_TYPE)], preprocess=pre)
            return dataset[uid][1]

        # the loader's errors name the utterance and the file; the preprocessor's the utterance
        out = case("audio16k+preprocessor", name, load, [uid], allowed=(ValueError,),
                   expect="error" if name in must_refuse else ("ok" if name in ("valid", "all zeros") else None))
        if out is not None:
            assert out["speech"].dtype == np.float32 and out["speech"].ndim == 1 and len(out["speech"]) > 0
    # 8 kHz samples that reached the preprocessor some other way (ESPnet's `sound` type gives no
    # rate): a video beside them shows the length mismatch
    files = _audio_files(tmp_path)
    speech, _ = soundfile.read(files["8 kHz"], dtype="float32")
    case("sound+preprocessor", "8 kHz beside 1 s of video",
         lambda: pre("utt-8k", {"speech": speech, "video": np.zeros((25, 96, 96), np.int64)}), ["utt-8k"], expect="error")


def test_wav_files_through_stage_3(tmp_path):
    """Stage 3 (prep/audio_prep.AudioFormatter): any source -> 16 kHz mono PCM16, or an ItemError naming it."""
    from espnet_omni_avsr.prep.audio_prep import AudioFormatter
    from espnet_omni_avsr.prep.errors import ItemError
    from espnet_omni_avsr.prep.sharding import WorkItem

    formatter = AudioFormatter(str(tmp_path / "out"))
    files = _audio_files(tmp_path)
    rng = np.random.default_rng(14)
    for k in range(3):  # containers: the audio stream is decoded with PyAV
        path = str(tmp_path / f"random{k}.mp4")
        with open(path, "wb") as f:
            f.write(rng.bytes(int(rng.integers(0, 3000))))
        files[f"random bytes {k}.mp4"] = path
    must_refuse = {"NaN", "inf", "all zeros", "no samples"}
    for name, path in files.items():
        out = case("prep.audio_prep", name, lambda: formatter(WorkItem(uid=f"u{len(name)}", path=path)), [path],
                   allowed=(ItemError,), expect="error" if name in must_refuse else ("ok" if name in ("valid", "8 kHz", "stereo") else None))
        if out is not None:
            info = soundfile.info(out["path"])
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16") and info.frames > 0


def test_transcript_files(tmp_path):
    """Text files as ESPnet's `text` type reads them: a line that is not UTF-8 is named (file and
    line) by the task's argument checks before ESPnet's loader, whose UnicodeDecodeError names neither."""
    import argparse

    from espnet_omni_avsr.tasks.arg_checks import check_text_files

    rng = np.random.default_rng(15)
    for k in range(20):
        lines = []
        for i in range(int(rng.integers(1, 6))):
            words = rng.choice(["hello", "wörld", "中文", "caf\xe9", "🤖", ""], int(rng.integers(0, 4)))
            line = f"u{i} {' '.join(words)}".encode()
            if rng.random() < 0.25:
                line += rng.choice([b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80"])  # not UTF-8
            lines.append(line)
        path = tmp_path / f"text{k}"
        path.write_bytes(b"\n".join(lines) + b"\n")
        args = argparse.Namespace(train_data_path_and_name_and_type=[(str(path), "text", "text")],
                                  valid_data_path_and_name_and_type=None)
        bad = [n for n, line in enumerate(lines, 1) if not _is_utf8(line)]
        case("text files", f"text file {k}", lambda: check_text_files(args),
             [f"{path}:{bad[0]}" if bad else str(path)], expect="error" if bad else "ok")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
