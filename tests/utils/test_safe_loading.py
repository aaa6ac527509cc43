"""Every user-given checkpoint is read without running the code its pickle may name.

A malicious pickle (its `__reduce__` calls `exec`, which would create a marker file) is planted in
each place the project or ESPnet's trainer loads from: a resume checkpoint (and an epoch model of
the resumed run), an --init_param file, a packed archive's model.pth, --model_file, an AV-HuBERT
checkpoint, a Whisper pytorch_model.bin and a precomputed landmark pickle. Each load must be refused
with an error naming the file, and the marker must never appear.
"""
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml

from espnet_omni_avsr.utils.safe_checkpoint import TRAINER_SAFE_GLOBALS, UnsafeCheckpointError, load_weights
from espnet_omni_avsr.utils.safe_pickle import UnsafePickleError, load_array_pickle
from tests.models.conftest import tiny_config


class _Evil:
    """Unpickling it runs `exec`, which creates the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the malicious pickle ran"


def _plant(path, marker, fmt="zip"):
    """A malicious checkpoint at `path`: torch.save's zip format, or a bare pickle (torch's legacy path)."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"model": {"w": torch.zeros(2)}, "x": _Evil(marker)}
    if fmt == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return path


@pytest.mark.parametrize("fmt", ["zip", "pickle"])
def test_the_planted_pickle_is_live(tmp_path, fmt):
    """Control: read unsafely, the planted file does run its code (else the tests below prove nothing)."""
    live = tmp_path / "LIVE"
    path = _plant(tmp_path / "evil.pth", live, fmt)
    try:
        torch.load(path, weights_only=False)
    except RuntimeError:  # a bare pickle: torch unpickles it as the legacy format's magic number first
        pass
    assert live.exists()


def _refused(excinfo, path, fmt="zip"):
    msg = str(excinfo.value)
    assert str(path) in msg and "refusing to load" in msg, msg
    if fmt == "zip":  # names what it refused (torch's reader stops a bare pickle at its first opcode)
        assert "exec" in msg, msg


# ------------------------------------------------------------------------------------------------
# ESPnet's trainer: --resume and --init_param, through the real CLI (bin/avsr_train -> the task)

def _corpus(root, n=2):
    import soundfile

    from espnet_omni_avsr.data.video_io import write_video

    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    files = {"wav.scp": [], "video.scp": [], "text": [], "shape": []}
    for i in range(n):
        utt = f"utt{i}"
        soundfile.write(f"{root}/{utt}.wav", (rng.standard_normal(9600) * 0.1).astype(np.float32), 16000)
        write_video(f"{root}/{utt}.mp4", rng.integers(0, 256, (15, 96, 96), dtype=np.uint8), fps=25)
        files["wav.scp"].append(f"{utt} {root}/{utt}.wav")
        files["video.scp"].append(f"{utt} {root}/{utt}.mp4")
        files["text"].append(f"{utt} HELLO")
        files["shape"].append(f"{utt} 9600")
    for name, lines in files.items():
        with open(f"{root}/{name}", "w") as f:
            f.write("\n".join(lines) + "\n")


@pytest.fixture
def train_cmd(tmp_path, tiny_llm_dir, tiny_whisper_dir):
    data = str(tmp_path / "data")
    _corpus(data)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config.update(optim="adamw", optim_conf=dict(lr=1e-3), max_epoch=1, batch_size=2, batch_type="unsorted",
                  num_att_plot=0, num_workers=0, seed=0)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = ["--config", str(cfg), "--ngpu", "0", "--use_tensorboard", "false"]
    for prefix in ("train", "valid"):
        cmd += [f"--{prefix}_data_path_and_name_and_type", f"{data}/wav.scp,speech,sound",
                f"--{prefix}_data_path_and_name_and_type", f"{data}/video.scp,video,video",
                f"--{prefix}_data_path_and_name_and_type", f"{data}/text,text,text",
                f"--{prefix}_shape_file", f"{data}/shape"]
    return cmd


def test_resume_checkpoint_is_refused(train_cmd, tmp_path, marker):
    from espnet_omni_avsr.bin import avsr_train

    exp = tmp_path / "exp"
    ckpt = _plant(exp / "checkpoint.pth", marker)
    with pytest.raises(UnsafeCheckpointError) as e:
        avsr_train.main(train_cmd + ["--output_dir", str(exp), "--resume", "true"])
    _refused(e, ckpt)
    assert "resume checkpoint" in str(e.value)


@pytest.mark.parametrize("fmt", ["zip", "pickle"])
@pytest.mark.parametrize("keys", ["", ":decoder:decoder"])
def test_init_param_is_refused(train_cmd, tmp_path, marker, fmt, keys):
    from espnet_omni_avsr.bin import avsr_train

    evil = _plant(tmp_path / "pretrained" / "model.pth", marker, fmt)
    with pytest.raises(UnsafeCheckpointError) as e:
        avsr_train.main(train_cmd + ["--output_dir", str(tmp_path / "exp"), "--init_param", evil + keys])
    _refused(e, evil, fmt)
    assert "--init_param file" in str(e.value)


def _tiny_training_state(tmp_path):
    """A model, optimizer, scheduler and reporter with real statistics, saved as ESPnet's trainer saves them."""
    from espnet2.schedulers.warmup_lr import WarmupLR
    from espnet2.train.reporter import Reporter

    def parts():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, WarmupLR(opt, warmup_steps=10), Reporter()

    model, opt, sched, reporter = parts()
    reporter.set_epoch(1)
    for mode in ("train", "valid"):
        with reporter.observe(mode) as sub:
            for _ in range(2):
                loss = model(torch.ones(1, 3)).pow(2).sum()
                sub.register({"loss": loss.detach(), "acc": 0.5, "missing": None}, weight=2)
                sub.next()
                if mode == "train":
                    loss.backward()
                    opt.step()
                    sched.step()
    exp = tmp_path / "exp"
    exp.mkdir()
    torch.save({"model": model.state_dict(), "reporter": reporter.state_dict(), "optimizers": [opt.state_dict()],
                "schedulers": [sched.state_dict()], "scaler": None}, exp / "checkpoint.pth")
    torch.save(model.state_dict(), exp / "1epoch.pth")
    return exp, (model, opt, sched, reporter), parts()


def test_a_real_resume_checkpoint_loads(tmp_path):
    from espnet_omni_avsr.utils.safe_training import SafeTrainer

    exp, (model, opt, sched, reporter), (model2, opt2, sched2, reporter2) = _tiny_training_state(tmp_path)
    SafeTrainer.resume(exp / "checkpoint.pth", model2, reporter2, [opt2], [sched2], None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert reporter2.get_epoch() == 1 and repr(reporter2.state_dict()) == repr(reporter.state_dict())  # NaN != NaN
    assert sched2.state_dict() == sched.state_dict()
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    # what the reporter holds needs TRAINER_SAFE_GLOBALS: numpy scalars and durations
    with pytest.raises(UnsafeCheckpointError):
        load_weights(exp / "checkpoint.pth")
    assert load_weights(exp / "checkpoint.pth", safe_globals=TRAINER_SAFE_GLOBALS)["reporter"]["epoch"] == 1


def test_an_epoch_model_of_the_resumed_run_is_refused(tmp_path, marker):
    """The trainer averages the best <N>epoch.pth at the end, also those of the resumed run."""
    from espnet_omni_avsr.utils.safe_training import SafeTrainer

    exp, _, (model2, opt2, sched2, reporter2) = _tiny_training_state(tmp_path)
    evil = _plant(exp / "2epoch.pth", marker)
    with pytest.raises(UnsafeCheckpointError) as e:
        SafeTrainer.resume(exp / "checkpoint.pth", model2, reporter2, [opt2], [sched2], None)
    _refused(e, evil)


def test_the_task_uses_the_safe_trainer():
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
    from espnet_omni_avsr.utils.safe_training import SafeTrainer

    assert AVSRLLMTask.trainer is SafeTrainer


# ------------------------------------------------------------------------------------------------
# inference: a packed archive, --model_file

def test_packed_archive_is_refused(tmp_path, tiny_llm_dir, tiny_whisper_dir, marker):
    from espnet_omni_avsr.recognizer import AVSRRecognizer
    from espnet_omni_avsr.utils.model_archive import pack_model

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump(tiny_config(tiny_llm_dir, tiny_whisper_dir)))
    evil = _plant(exp / "valid.acc.ave.pth", marker)
    archive = tmp_path / "model.tar"
    pack_model(exp / "config.yaml", evil, archive)
    with pytest.raises(UnsafeCheckpointError) as e:
        AVSRRecognizer.from_pretrained(archive, cache_dir=tmp_path / "unpacked")
    _refused(e, tmp_path / "unpacked" / "model.pth")
    # --model_file of avsr_inference / the library class, straight from the exp dir
    with pytest.raises(UnsafeCheckpointError) as e:
        AVSRRecognizer(exp / "config.yaml", evil)
    _refused(e, evil)


# ------------------------------------------------------------------------------------------------
# pretrained weights: AV-HuBERT checkpoints, Whisper's pytorch_model.bin

@pytest.mark.parametrize("fmt", ["zip", "pickle"])
def test_avhubert_checkpoint_is_refused(tmp_path, marker, fmt):
    from espnet_omni_avsr.encoders.avhubert_checkpoint import read_avhubert_checkpoint
    from espnet_omni_avsr.encoders.avhubert_encoder import AVHubertEncoder

    evil = _plant(tmp_path / "large_vox_iter5.pt", marker, fmt)
    with pytest.raises(UnsafeCheckpointError) as e:
        AVHubertEncoder(input_size=88 * 88, checkpoint=evil)
    _refused(e, evil, fmt)  # the restricted unpickler's refusal (weights_only refused it first)
    with pytest.raises(UnsafeCheckpointError) as e:
        read_avhubert_checkpoint(evil)
    _refused(e, evil, fmt)


def test_whisper_weight_file_is_refused(tmp_path, tiny_whisper_dir, marker):
    from espnet_omni_avsr.encoders.whisper_encoder import WhisperEncoder

    model_dir = tmp_path / "whisper"
    shutil.copytree(tiny_whisper_dir, model_dir)
    for name in os.listdir(model_dir):
        if name.endswith(".safetensors"):
            os.remove(model_dir / name)
    evil = _plant(model_dir / "pytorch_model.bin", marker)
    with pytest.raises(UnsafeCheckpointError) as e:
        WhisperEncoder(input_size=80, model_dir=str(model_dir))
    _refused(e, evil)


# ------------------------------------------------------------------------------------------------
# precomputed landmark pickles

def test_landmark_pickle_is_refused(tmp_path, marker):
    from espnet_omni_avsr.prep.errors import ItemError
    from espnet_omni_avsr.prep.face.landmarks import load_landmarks

    evil = tmp_path / "utt.pkl"
    with open(evil, "wb") as f:
        pickle.dump([np.zeros((68, 2)), _Evil(marker)], f)
    with pytest.raises(UnsafePickleError) as e:
        load_array_pickle(evil)
    _refused(e, evil)
    with pytest.raises(ItemError) as e:
        load_landmarks(str(evil))
    _refused(e, evil)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_landmark_pickles_of_arrays_still_load(tmp_path, protocol):
    from espnet_omni_avsr.prep.face.landmarks import load_landmarks

    frames = [np.full((68, 2), 1.5), None, np.float32(2) * np.ones((68, 2), np.float32)]
    path = tmp_path / "utt.pkl"
    with open(path, "wb") as f:
        pickle.dump(frames, f, protocol=protocol)
    track = load_landmarks(str(path), num_frames=3)
    assert track.shape == (3, 68, 2) and np.isnan(track[1]).all() and track[2, 0, 0] == 2.0


def test_not_a_checkpoint_is_an_error_naming_the_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello world" * 10)
    with pytest.raises(ValueError) as e:
        load_weights(junk, what="model file")
    assert str(junk) in str(e.value) and "not a readable torch checkpoint" in str(e.value)
    junk.write_bytes(b"\x80\x04not really a pickle" * 10)  # a pickle header: torch's weights-only reader refuses it
    with pytest.raises(UnsafeCheckpointError) as e:
        load_weights(junk, what="model file")
    assert str(junk) in str(e.value)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_weights(tmp_path / "absent.pth", what="model file")
