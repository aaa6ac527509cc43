"""A tiny corpus in the LRS3 release layout, with one of every kind of bad item, for the prep tests.

    <root>/trainval/<spk>/<utt>.mp4 + .txt (+ .wav / .flac), <root>/test/..., <root>/valid.id

Speakers (4 characters each): aaaa, bbbb, cccc (train), dddd (validation, listed in valid.id),
eeee (an empty folder), tttt (test). Videos are 96x96 gray, 25 fps, 25 frames (1 s) of moving
random texture; audio is 1 s of a tone with noise.
"""
import os
from typing import Dict

import numpy as np
import soundfile

from espnet_omni_avsr.data.video_io import write_video

FPS = 25
NUM_FRAMES = 25
RATE = 16000

TRANSCRIPTS = {
    "aaaa/50001": "BIN BLUE AT F TWO NOW",
    "aaaa/50002": "LAY GREEN BY A NINE AGAIN",
    "aaaa/50003": "PLACE RED IN Z SEVEN PLEASE",  # 22.05 kHz wav
    "aaaa/50004": "SET WHITE WITH Q ONE SOON",  # 128x128 video
    "bbbb/50001": "BIN RED AT G ONE NOW",
    "bbbb/50002": "LAY BLUE IN H TWO SOON",  # stereo flac
    "bbbb/50003": "PLACE GREEN BY J SIX NOW",  # corrupt mp4
    "cccc/50002": "SET RED AT K FIVE AGAIN",  # no mp4 (missing video)
    "cccc/50003": "BIN WHITE BY L FOUR NOW",  # constant video
    "cccc/50004": "LAY RED WITH M EIGHT SOON",  # AV length mismatch
    "cccc/50005": "PLACE BLUE AT N ZERO PLEASE",
    "cccc/50006": "SET GREEN IN P THREE NOW",  # a run of black frames (lost face track)
    "dddd/50001": "BIN GREEN WITH R ONE AGAIN",
    "dddd/50002": "LAY WHITE AT S TWO NOW",
    "tttt/00001": "PLACE WHITE IN T THREE SOON",
    "tttt/00002": "SET BLUE BY U FOUR PLEASE",
}

# prepared train/dev/test ids and the stage that rejects each bad item
TRAIN_IDS = ["aaaa-50001", "aaaa-50002", "aaaa-50003", "aaaa-50004", "bbbb-50001", "bbbb-50002",
             "bbbb-50003", "cccc-50003", "cccc-50004", "cccc-50005", "cccc-50006"]
DEV_IDS = ["dddd-50001", "dddd-50002"]
TEST_IDS = ["tttt-00001", "tttt-00002"]
STAGE1_BAD = {  # id -> words the reason must hold
    "bbbb-50004": "missing transcript",
    "bbbb-50005": "no 'Text:' line",
    "cccc-50001": "audio without video",
    "cccc-50002": "missing video",
}
VIDEO_BAD = {"bbbb-50003": "does not decode", "cccc-50003": "no visible mouth (blank video)",
             "cccc-50006": "no visible mouth in"}
AUDIO_BAD = {"cccc-50004": "audio and video lengths differ"}
TRAIN_KEPT = ["aaaa-50001", "aaaa-50002", "aaaa-50003", "aaaa-50004", "bbbb-50001", "bbbb-50002", "cccc-50005"]


def moving_texture(seed: int, num_frames: int = NUM_FRAMES, size: int = 96) -> np.ndarray:
    """(T, size, size) uint8: a smooth random texture sliding down by 2 pixels a frame."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (num_frames * 2 // 8 + size // 8 + 2, size // 8 + 1)).astype(np.float32)
    fine = np.kron(coarse, np.ones((8, 8), np.float32))[:, :size]
    return np.stack([fine[2 * t : 2 * t + size] for t in range(num_frames)]).astype(np.uint8)


def tone(seed: int, seconds: float = 1.0, rate: int = RATE, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed % 300) * t) + 0.02 * rng.standard_normal(len(t))
    return np.stack([wave * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_av_mp4(path: str, frames: np.ndarray, audio: np.ndarray, rate: int = RATE) -> None:
    """An mp4 with H.264 video and AAC audio (like LRS3's files, which ship no wav)."""
    import av
    from fractions import Fraction

    with av.open(path, mode="w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=rate)
        sound.layout = "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(video.encode())
        block = 1024
        for i, start in enumerate(range(0, len(audio), block)):
            chunk = np.ascontiguousarray(audio[start : start + block, :1].T)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


def build_fake_lrs3(root: str) -> Dict[str, str]:
    """Write the corpus under ``root``; returns {"<spk>/<utt>": base path without extension}."""
    bases = {}

    def base(split: str, key: str) -> str:
        path = os.path.join(root, split, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        bases[key] = path
        return path

    for i, key in enumerate(sorted(set(TRANSCRIPTS) | {"bbbb/50004", "bbbb/50005", "cccc/50001"})):
        split = "test" if key.startswith("tttt") else "trainval"
        b = base(split, key)
        seed = i + 1
        frames = moving_texture(seed)
        if key in TRANSCRIPTS:
            with open(b + ".txt", "w") as f:
                f.write(f"Text:  {TRANSCRIPTS[key]}\nConf:  4\n\nWORD START END CONF\nX 0.1 0.2 1.0\n")
        if key == "aaaa/50003":
            soundfile.write(b + ".wav", tone(seed, rate=22050), 22050, subtype="PCM_16")
        elif key == "bbbb/50002":
            soundfile.write(b + ".flac", tone(seed, channels=2), RATE)
        elif key == "cccc/50004":
            soundfile.write(b + ".wav", tone(seed, seconds=2.0), RATE, subtype="PCM_16")
        else:
            soundfile.write(b + ".wav", tone(seed), RATE, subtype="PCM_16")
        if key in ("cccc/50001", "cccc/50002"):
            continue  # no video
        if key == "bbbb/50003":
            with open(b + ".mp4", "wb") as f:
                f.write(np.random.default_rng(seed).integers(0, 256, 5000, dtype=np.uint8).tobytes())
            continue
        if key == "aaaa/50004":
            frames = moving_texture(seed, size=128)
        elif key == "cccc/50003":
            frames = np.full_like(frames, 120)
        elif key == "cccc/50006":
            frames = frames.copy()
            frames[8:16] = 0
        write_video(b + ".mp4", frames, fps=FPS)
    with open(os.path.join(root, "trainval", "bbbb", "50005.txt"), "w") as f:
        f.write("Conf:  3\nWORD START END\n")
    os.makedirs(os.path.join(root, "trainval", "eeee"))
    with open(os.path.join(root, "valid.id"), "w") as f:
        f.write("trainval/dddd/50001\ntrainval/dddd/50002\n")
    return bases
