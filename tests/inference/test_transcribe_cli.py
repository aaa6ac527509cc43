"""bin/transcribe on real face video (the astronaut photograph with a drawn moving mouth; face found by
mediapipe) and on every kind of bad input: one line per transcribed input, in order; each failure
named with its reason while the others go on; exit status 1 when any failed, 2 for a bad model."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from espnet_omni_avsr.bin import transcribe
from tests.inference.media_helpers import write_media, zero_frame_rate_mp4

pytest.importorskip("mediapipe")
pytest.importorskip("skimage")
from tests.prep.fake_lrs_trees import face_frames, speech  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    frames = face_frames(25, seed=7)
    audio = speech("BLUE BIRDS SING", 1.0, seed=7)
    wall = np.random.default_rng(0).integers(60, 200, (25, 160, 160, 3)).astype(np.uint8)
    files = {
        "face": (frames, audio, {}),
        "face30": (np.pad(face_frames(30, seed=8), ((0, 0), (0, 0), (20, 20), (0, 0))),  # 30 fps, 200x160
                   speech("GREEN HILLS", 1.0, seed=8), {"fps": 30}),
        "wall": (wall, audio, {}),
        "silent": (frames, None, {}),
        "zeros": (frames, np.zeros_like(audio), {}),
        "audio_only": (None, audio, {}),
    }
    paths = {}
    for name, (v, a, kw) in files.items():
        paths[name] = str(d / f"{name}.mp4")
        write_media(paths[name], v, a, **kw)
    paths["fps0"] = str(d / "fps0.mp4")
    zero_frame_rate_mp4(paths["fps0"], frames, audio)
    paths["garbage"] = str(d / "garbage.mp4")
    with open(paths["garbage"], "wb") as f:
        f.write(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    paths["truncated"] = str(d / "truncated.mkv")
    write_media(paths["truncated"], face_frames(50, seed=9), speech("A", 2.0, seed=9))
    with open(paths["truncated"], "r+b") as f:
        f.truncate(int(os.path.getsize(paths["truncated"]) * 0.5))
    paths["missing"] = str(d / "missing.mp4")
    return paths


def _run_cli(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-m", "espnet_omni_avsr.bin.transcribe", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_on_good_and_bad_inputs(inputs, multitask_exp, tmp_path):
    """The multitask model: AVSR, ASR for no face, VSR for silent video; the broken inputs fail."""
    good = ["face", "face30", "wall", "silent", "zeros", "audio_only"]
    bad = ["garbage", "truncated", "fps0", "missing"]
    order = ["face", "garbage", "face30", "wall", "truncated", "silent", "fps0", "zeros", "audio_only", "missing"]
    lst = tmp_path / "list.txt"
    lst.write_text("# a list file\n" + "\n".join(os.path.relpath(inputs[n], tmp_path) for n in order[1:]) + "\n")
    out = tmp_path / "out"
    proc = _run_cli(["--model", str(multitask_exp), inputs["face"], str(lst), "--output_dir", str(out),
                     "--save_crops", "--batch_size", "3", "--max_new_tokens", "4"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        inputs["face"]] + [os.path.join(str(tmp_path), os.path.relpath(inputs[n], tmp_path)) for n in order[1:] if n in good]
    records = {n: json.loads((out / f"{n}.json").read_text()) for n in order}
    tasks = {n: records[n]["task"] for n in good}
    assert tasks == {"face": "avsr", "face30": "avsr", "wall": "asr", "silent": "vsr", "zeros": "vsr",
                     "audio_only": "asr"}
    face = records["face"]
    assert face["rates"] == {"audio": 4, "video": 2} and face["condition"] == "avsr_a4v2"
    assert face["video"]["frames"] == 25 and face["video"]["frames_without_face"] == 0
    assert set(face["timing"]) >= {"probe", "audio", "video_decode", "face_detection", "crop", "decode", "total"}
    assert face["llm_input_tokens_per_second"] > 0 and len(face["segments"]) == 1
    assert records["face30"]["video"]["frames"] == 25 and "resampled 30 -> 25 fps" in records["face30"]["notes"]
    assert "no face found in any of the 25 frames" in records["wall"]["missing"]["video"]
    assert "has no audio stream" in records["silent"]["missing"]["audio"]
    assert "silent" in records["zeros"]["missing"]["audio"]
    assert "has no video stream" in records["audio_only"]["missing"]["video"]
    reasons = {"garbage": "does not decode", "truncated": "does not decode: truncated", "fps0": "frame rate is 0",
               "missing": "no such file"}
    assert sorted(reasons) == sorted(bad)
    for n, words in reasons.items():
        assert not records[n]["ok"] and words in records[n]["error"] and n in records[n]["error"], records[n]
        assert f"FAILED {records[n]['error']}" in proc.stderr
    assert "4 of 10 inputs failed" in proc.stderr
    assert sorted(os.listdir(out / "crops")) == ["face.mp4", "face30.mp4", "silent.mp4", "zeros.mp4"]


def test_an_avsr_only_model_fails_what_it_cannot_read(inputs, avsr_exp, tmp_path, capsys):
    names = ["face", "wall", "silent", "audio_only"]
    out = tmp_path / "out"
    code = transcribe.main(["--model", str(avsr_exp), *[inputs[n] for n in names], "--output_dir", str(out),
                            "--max_new_tokens", "2"])
    assert code == 1
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == [inputs["face"]]
    errors = {n: json.loads((out / f"{n}.json").read_text()).get("error", "") for n in names[1:]}
    assert "the model's tasks (avsr) need audio or video" in errors["wall"] and "no face found" in errors["wall"]
    assert "has no audio stream" in errors["silent"]
    assert "has no video stream" in errors["audio_only"]


def test_forced_task_and_rates(inputs, multitask_exp, tmp_path, capsys):
    out = tmp_path / "out"
    code = transcribe.main(["--model", str(multitask_exp), inputs["face"], inputs["wall"], "--task", "avsr",
                            "--rates", "a16v5", "--output_dir", str(out), "--max_new_tokens", "2"])
    assert code == 1
    face = json.loads((out / "face.json").read_text())
    assert face["task"] == "avsr" and face["condition"] == "avsr_a16v5"
    wall = json.loads((out / "wall.json").read_text())
    assert "--task avsr needs video" in wall["error"] and "no face found" in wall["error"]
    # ASR forced: the face is not even looked for
    code = transcribe.main(["--model", str(multitask_exp), inputs["face"], "--task", "asr", "--output_dir", str(out),
                            "--max_new_tokens", "2"])
    face = json.loads((out / "face.json").read_text())
    assert code == 0 and face["task"] == "asr" and "face_detection" not in face["timing"]


def test_bad_model_and_arguments(inputs, multitask_exp, avsr_exp, tmp_path, caplog):
    not_tar = tmp_path / "model.tar"
    not_tar.write_bytes(b"PK\3\4 a zip, not a tar" * 100)
    assert transcribe.main(["--model", str(not_tar), inputs["face"], "--cache_dir", str(tmp_path / "c")]) == 2
    assert f"{not_tar} is not a model archive" in caplog.text
    not_tar.write_bytes(b"\0" * 3000)  # an empty tar
    assert transcribe.main(["--model", str(not_tar), inputs["face"], "--cache_dir", str(tmp_path / "c2")]) == 2
    assert "no meta.yaml (not a model archive" in caplog.text
    assert transcribe.main(["--model", str(tmp_path / "nowhere"), inputs["face"]]) == 2
    assert "neither a model archive nor a directory" in caplog.text
    assert transcribe.main(["--model", str(avsr_exp), inputs["face"], "--task", "vsr"]) == 2
    assert "the model was trained for avsr only" in caplog.text
    assert transcribe.main(["--model", str(multitask_exp), inputs["face"], "--rates", "a8"]) == 2
    assert "audio rate 8 is not one this branch was trained at: [4, 16]" in caplog.text
    with pytest.raises(SystemExit):  # argparse: exit status 2
        transcribe.main(["--model", str(multitask_exp), inputs["face"], "--rates", "audio:8"])


def test_folder_input_and_names(inputs, tmp_path):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(inputs["face"], folder / "b.mp4")
    shutil.copy(inputs["face"], folder / "sub" / "b.MKV")
    (folder / "notes.txt").write_text("x")
    found = transcribe.expand_inputs([str(folder)])
    assert found == [str(folder / "b.mp4"), str(folder / "sub" / "b.MKV")]
    assert transcribe.output_names(found) == ["b", "b-2"]
    assert transcribe.parse_rates("a16v5") == {"audio": 16, "video": 5}
