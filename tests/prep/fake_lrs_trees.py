"""Small fake LRS3 and LRS2 release trees with real face video, for the face-mode and recipe tests.

Each clip shows the face of scikit-image's astronaut photograph (a real face, public domain),
moved and scaled over time inside a 160 x 160 frame, with a synthetic dark mouth (an ellipse whose
opening changes over time) drawn over her lips, at 25 fps; the audio (espeak-ng speech of the
transcript, or a tone when espeak-ng is missing, cut or padded to the clip's length) is muxed into
the mp4 as AAC, as in the real releases, which ship no wav. Because the frame is a known affine
map of the photograph, the mouth centre of every frame is known (:func:`mouth_track`).

LRS3 (``build_fake_lrs3``)::

    trainval/<spk>/<utt>.mp4|.txt, pretrain/<spk>/..., test/<spk>/..., lrs3-valid.id

LRS2 (``build_fake_lrs2``)::

    main/<folder>/<utt>.mp4|.txt, pretrain/<folder>/..., train.txt, val.txt, test.txt (" NF" tags),
    pretrain.txt

Bad items in both: a truncated mp4, a clip without a face, a transcript without a ``Text:`` line,
a speaker folder with no files.
"""
import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from typing import Dict, List, Tuple

import numpy as np

FPS = 25
SIZE = 160
RATE = 16000
# the astronaut photograph (512 x 512): face centre and lip centre (dlib landmarks 48-67)
FACE_CENTRE = np.array([222.0, 127.0])
MOUTH_CENTRE = np.array([223.0, 146.0])

_ASTRONAUT = None


def astronaut() -> np.ndarray:
    global _ASTRONAUT
    if _ASTRONAUT is None:
        from skimage import data

        _ASTRONAUT = data.astronaut()
    return _ASTRONAUT


def clip_matrices(num_frames: int, seed: int) -> np.ndarray:
    """(T, 2, 3) maps photograph -> frame: scale 0.95..1.15, the face centre drifting +-8 px."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    t = np.arange(num_frames) / FPS
    scale = 1.05 + 0.10 * np.sin(2 * np.pi * 0.5 * t + phase[0])
    dx = 8 * np.sin(2 * np.pi * 0.7 * t + phase[1])
    dy = 6 * np.sin(2 * np.pi * 0.6 * t + phase[2])
    mats = np.zeros((num_frames, 2, 3))
    mats[:, 0, 0] = mats[:, 1, 1] = scale
    mats[:, 0, 2] = SIZE / 2 + dx - scale * FACE_CENTRE[0]
    mats[:, 1, 2] = SIZE / 2 - 5 + dy - scale * FACE_CENTRE[1]
    return mats


def mouth_track(num_frames: int, seed: int) -> np.ndarray:
    """(T, 2) the drawn mouth's centre in each frame."""
    mats = clip_matrices(num_frames, seed)
    return mats[:, :, :2] @ MOUTH_CENTRE + mats[:, :, 2]


def face_frames(num_frames: int, seed: int) -> np.ndarray:
    """(T, SIZE, SIZE, 3) uint8 RGB frames of the moving face with an opening and closing mouth."""
    import cv2

    src = astronaut()
    frames = []
    for k, m in enumerate(clip_matrices(num_frames, seed)):
        face = src.copy()
        opening = 4 + 5 * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * k / FPS + seed))
        cv2.ellipse(face, tuple(int(v) for v in MOUTH_CENTRE), (19, int(round(opening))), 0, 0, 360,
                    (25, 15, 15), -1, cv2.LINE_AA)
        frames.append(cv2.warpAffine(face, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(frames)


def speech(text: str, seconds: float, seed: int) -> np.ndarray:
    """(N,) float32 16 kHz: espeak-ng saying ``text`` (a tone without espeak-ng), cut/padded to ``seconds``."""
    n = int(round(seconds * RATE))
    wave = None
    if shutil.which("espeak-ng"):
        import soundfile
        from scipy.signal import resample_poly

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.wav")
            voice = ["en-us", "en-gb", "en-us+f3", "en-gb+m3"][seed % 4]
            subprocess.run(["espeak-ng", "-v", voice, "-s", "230", "-w", path, text.lower()], check=True,
                           capture_output=True)
            x, rate = soundfile.read(path, dtype="float32")
            wave = resample_poly(x, RATE, rate).astype(np.float32)
    if wave is None or not np.any(wave):
        t = np.arange(n) / RATE
        wave = (0.3 * np.sin(2 * np.pi * (180 + 20 * seed) * t)).astype(np.float32)
    wave = wave[:n]
    return np.pad(wave, (0, n - len(wave))) * 0.8


def write_clip(path: str, frames: np.ndarray, audio: np.ndarray) -> None:
    """H.264 video (RGB frames) + AAC mono audio in one mp4."""
    import av

    with av.open(path, mode="w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=RATE)
        sound.layout = "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(video.encode())
        for start in range(0, len(audio), 1024):
            chunk = np.ascontiguousarray(audio[None, start:start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


WORDS = ("THE QUICK BROWN FOX JUMPS OVER A LAZY DOG WHILE SEVEN BLUE BIRDS SING ABOUT "
         "GREEN HILLS AND QUIET RIVERS").split()


def transcript(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.choice(len(WORDS), 4, replace=False))


def write_txt(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(f"Text:  {text}\nConf:  4\n\nWORD START END ASDSCORE\n")
        for k, w in enumerate(text.split()):
            f.write(f"{w} {0.2 * k:.2f} {0.2 * k + 0.18:.2f} 1.0\n")


def write_item(base: str, seed: int, seconds: float = 1.2, face: bool = True) -> Dict:
    """``base``.mp4 + ``base``.txt; returns what a test checks."""
    os.makedirs(os.path.dirname(base), exist_ok=True)
    n = int(round(seconds * FPS))
    text = transcript(seed)
    if face:
        frames = face_frames(n, seed)
    else:  # a textured picture without a face (a wall)
        rng = np.random.default_rng(seed)
        tex = np.kron(rng.integers(60, 200, (SIZE // 8 + 2, SIZE // 8 + 2, 3)), np.ones((8, 8, 1)))
        frames = np.stack([tex[k % 8: k % 8 + SIZE, :SIZE] for k in range(n)]).astype(np.uint8)
    write_clip(base + ".mp4", frames, speech(text, n / FPS, seed))
    write_txt(base + ".txt", text)
    return {"frames": n, "text": text, "seed": seed}


def truncate(path: str) -> None:
    """Cut an mp4 to 60 % of its bytes (a partial download)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.6))


def _bad_items(base_of) -> Dict[str, str]:
    """The four bad items of both trees; returns {uid: words the reason must hold}."""
    truncated, noface, notext = base_of("trunc"), base_of("noface"), base_of("notext")
    write_item(truncated, 90)
    truncate(truncated + ".mp4")
    write_item(noface, 91, face=False)
    write_item(notext, 92)
    with open(notext + ".txt", "w") as f:
        f.write("Conf:  3\nWORD START END ASDSCORE\n")
    return {"trunc": "does not decode", "noface": "no face found", "notext": "no 'Text:' line"}


LRS3_SPEAKERS = ("0aaaaaaaaaa", "0bbbbbbbbbb", "0cccccccccc", "0dddddddddd")


def build_fake_lrs3(root: str) -> Dict[str, object]:
    """The fake LRS3 tree; returns expected counts and ids (see the module docstring)."""
    items: Dict[str, Dict] = {}
    seed = 0

    def add(folder: str, spk: str, utt: str, **kw) -> None:
        nonlocal seed
        seed += 1
        items[f"{folder}/{spk}/{utt}"] = write_item(os.path.join(root, folder, spk, utt), seed, **kw)

    a, b, c, d = LRS3_SPEAKERS
    for utt in ("00001", "00002"):
        add("trainval", a, utt)
        add("trainval", b, utt)
    add("trainval", c, "00001")  # validation (lrs3-valid.id)
    add("pretrain", d, "00001", seconds=2.0)
    add("test", "0tttttttttt", "00001")
    add("test", "0tttttttttt", "00002")
    bad_spk = "0eeeeeeeeee"
    bad = _bad_items(lambda name: os.path.join(root, "trainval", bad_spk, {"trunc": "50001", "noface": "50002",
                                                                          "notext": "50003"}[name]))
    os.makedirs(os.path.join(root, "trainval", "0ffffffffff"))  # a speaker folder with no files
    with open(os.path.join(root, "lrs3-valid.id"), "w") as f:
        f.write(f"trainval/{c}/00001\n")
    bad_ids = {f"{bad_spk}-{u}": why for u, why in zip(("50001", "50002", "50003"), bad.values())}
    return {
        "items": items,
        "train": sorted([f"{s}-{u}" for s in (a, b) for u in ("00001", "00002")]),
        "train_with_pretrain": sorted([f"{s}-{u}" for s in (a, b) for u in ("00001", "00002")] + [f"{d}-00001"]),
        "dev": [f"{c}-00001"],
        "test": ["0tttttttttt-00001", "0tttttttttt-00002"],
        "bad": bad_ids,  # in train (trainval minus the valid list)
    }


LRS2_FOLDERS = ("5535415699068794046", "5535415699068794047", "6330311066473698535", "6330311066473698536")


def build_fake_lrs2(root: str) -> Dict[str, object]:
    """The fake LRS2 tree (mvlrs_v1 layout); returns expected counts and ids."""
    items: Dict[str, Dict] = {}
    seed = 100
    lists: Dict[str, List[str]] = {"train": [], "val": [], "test": [], "pretrain": []}

    def add(folder: str, spk: str, utt: str, listed: str, tag: str = "", **kw) -> None:
        nonlocal seed
        seed += 1
        items[f"{folder}/{spk}/{utt}"] = write_item(os.path.join(root, folder, spk, utt), seed, **kw)
        lists[listed].append(f"{spk}/{utt}{tag}")

    f1, f2, f3, f4 = LRS2_FOLDERS
    add("main", f1, "00001", "train")
    add("main", f1, "00002", "train")
    add("main", f2, "00001", "train")
    add("main", f2, "00002", "val")
    add("main", f3, "00001", "test", " NF")
    add("main", f3, "00002", "test", " MV")
    add("pretrain", f4, "00001", "pretrain", seconds=2.0)
    bad_folder = "7000000000000000001"
    bad = _bad_items(lambda name: os.path.join(root, "main", bad_folder, {"trunc": "00001", "noface": "00002",
                                                                         "notext": "00003"}[name]))
    for utt in ("00001", "00002", "00003"):
        lists["train"].append(f"{bad_folder}/{utt}")
    os.makedirs(os.path.join(root, "main", "7000000000000000002"))  # a folder with no files
    for name, entries in lists.items():
        with open(os.path.join(root, f"{name}.txt"), "w") as f:
            f.write("".join(e + "\n" for e in entries))
    bad_ids = {f"{bad_folder}-{u}": why for u, why in zip(("00001", "00002", "00003"), bad.values())}
    return {
        "items": items,
        "train": sorted([f"{f1}-00001", f"{f1}-00002", f"{f2}-00001"]),
        "train_with_pretrain": sorted([f"{f1}-00001", f"{f1}-00002", f"{f2}-00001", f"{f4}-00001"]),
        "dev": [f"{f2}-00002"],
        "test": [f"{f3}-00001", f"{f3}-00002"],
        "bad": bad_ids,
    }


def mouth_blob_centre(crop: np.ndarray, threshold: int = 45) -> Tuple[float, float]:
    """(x, y) centroid of the largest dark blob of a gray crop that does not touch its border (the
    drawn mouth; the astronaut's dark collar can show at the bottom edge)."""
    import cv2

    count, _, stats, centroids = cv2.connectedComponentsWithStats((crop < threshold).astype(np.uint8))
    h, w = crop.shape
    best, area = None, 0
    for k in range(1, count):
        x, y, bw, bh, a = stats[k]
        inside = x > 0 and y > 0 and x + bw < w and y + bh < h
        if inside and a > area:
            best, area = k, a
    if best is None:
        return float("nan"), float("nan")
    return float(centroids[best][0]), float(centroids[best][1])
