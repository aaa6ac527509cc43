"""Fuzzing the precomputed-landmark reader (prep/face/landmarks.load_landmarks): .npy arrays and
.pkl frame lists of the wrong shape, dtype or length, broken files. Each case gives a (T, 68, 2)
float64 track with T >= 1 or an ItemError naming the file."""
import pickle

import numpy as np

from espnet_omni_avsr.prep.errors import ItemError
from espnet_omni_avsr.prep.face.landmarks import load_landmarks
from tests.fuzz.fuzzlib import case

READER = "prep.face.landmarks"


def _shape(rng):
    shape = [int(rng.integers(1, 6)), 68, 2]
    if rng.random() < 0.6:  # perturb one axis, add or drop one
        what = rng.choice(["axis", "add", "drop", "zero"])
        i = int(rng.integers(0, 3))
        if what == "axis":
            shape[i] = int(rng.choice([1, 2, 3, 67, 69, 136]))
        elif what == "add":
            shape.insert(i, int(rng.choice([1, 2])))
        elif what == "drop":
            shape.pop(i)
        else:
            shape[i] = 0
    return tuple(shape)


def _values(rng, shape):
    dtype = rng.choice(["f8", "f4", "i4", "u2", "c16", "U2", "M8[s]", "?"])
    base = rng.uniform(-10, 500, shape)
    if rng.random() < 0.2:
        base[..., 0] = rng.choice([np.nan, np.inf])
    with np.errstate(invalid="ignore"):
        return base.astype(dtype) if dtype != "U2" else np.full(shape, "ab")


def _check(track, path, frames=None):
    assert track.dtype == np.float64 and track.ndim == 3 and track.shape[1:] == (68, 2) and len(track) >= 1, (path, track.shape)
    if frames is not None:
        assert len(track) == frames, (path, track.shape)


def test_npy_tracks(tmp_path):
    rng = np.random.default_rng(20)
    for k in range(60):
        array = _values(rng, _shape(rng))
        path = str(tmp_path / f"t{k}.npy")
        np.save(path, array)
        ok = array.shape[1:] == (68, 2) and len(array) >= 1 and array.ndim == 3 and array.dtype.kind in "fiu"
        out = case(READER, f"npy {array.shape} {array.dtype}", lambda: load_landmarks(path), [path], allowed=(ItemError,),
                   expect="ok" if ok else "error")
        if out is not None:
            _check(out, path, len(array))
    good = str(tmp_path / "good.npy")
    np.save(good, rng.uniform(0, 100, (4, 68, 2)))
    case(READER, "npy, wrong frame count", lambda: load_landmarks(good, num_frames=5), [good], allowed=(ItemError,), expect="error")
    data = open(good, "rb").read()
    broken = {"empty": b"", "random bytes": rng.bytes(300), "truncated": data[: len(data) // 2],
              "header promising 10 TB": b"\x93NUMPY\x01\x00" + (118 + 1).to_bytes(2, "little")
              + b"{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000, 68, 2), }".ljust(118) + b"\n"}
    np.save(tmp_path / "object.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    for name, content in broken.items():
        path = str(tmp_path / f"{name.replace(' ', '_')}.npy")
        with open(path, "wb") as f:
            f.write(content)
        case(READER, f"npy, {name}", lambda: load_landmarks(path), [path], allowed=(ItemError,), expect="error")
    path = str(tmp_path / "object.npy")
    case(READER, "npy, object array", lambda: load_landmarks(path), [path], allowed=(ItemError,), expect="error")
    missing = str(tmp_path / "missing.npy")
    case(READER, "npy, missing", lambda: load_landmarks(missing), [missing], allowed=(ItemError,), expect="error")


def _frame(rng):
    kind = rng.choice(["ok", "ok", "none", "shape", "flat", "dtype", "str", "dict", "list"])
    if kind == "ok":
        return rng.uniform(0, 100, (68, 2))
    if kind == "none":
        return None
    if kind == "shape":
        return rng.uniform(0, 100, (int(rng.choice([1, 67, 69])), 2))
    if kind == "flat":
        return rng.uniform(0, 100, 136)  # reshapes to (68, 2)
    if kind == "dtype":
        return np.zeros((68, 2), dtype=rng.choice(["c8", "U1", "?"]))
    if kind == "str":
        return "frame"
    if kind == "dict":
        return {"x": 1}
    return [[1.0, 2.0]] * 68


def test_pkl_tracks(tmp_path):
    rng = np.random.default_rng(21)
    for k in range(60):
        frames = [_frame(rng) for _ in range(int(rng.integers(0, 5)))]
        container = rng.choice(["list", "tuple", "array", "dict", "number"])
        value = {"list": frames, "tuple": tuple(frames), "dict": {"frames": frames}, "number": 3.5}.get(container)
        if container == "array":
            value = rng.uniform(0, 100, (int(rng.integers(0, 4)), 68, 2))
        path = str(tmp_path / f"t{k}.pkl")
        with open(path, "wb") as f:
            pickle.dump(value, f, protocol=int(rng.integers(2, pickle.HIGHEST_PROTOCOL + 1)))
        out = case(READER, f"pkl {container} of {len(frames)} frames", lambda: load_landmarks(path), [path],
                   allowed=(ItemError,))
        if out is not None:
            _check(out, path)
    good = pickle.dumps([rng.uniform(0, 100, (68, 2)), None])
    for name, content in {"empty": b"", "random bytes": rng.bytes(200), "truncated": good[: len(good) // 2]}.items():
        path = str(tmp_path / f"{name.replace(' ', '_')}.pkl")
        with open(path, "wb") as f:
            f.write(content)
        case(READER, f"pkl, {name}", lambda: load_landmarks(path), [path], allowed=(ItemError,), expect="error")
