"""utils/atomic_files.py: an interrupted write leaves the final path as it was, never truncated."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from espnet_omni_avsr.utils import atomic_files
from espnet_omni_avsr.utils.atomic_files import atomic_output, atomic_torch_save, atomic_write_text


class _FailsWhilePickled:
    def __reduce__(self):
        raise RuntimeError("interrupted while pickling")


def _leftovers(folder):
    return [n for n in os.listdir(folder) if ".tmp" in n]


def test_atomic_write_text_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old\n")
    atomic_write_text(str(path), "new\n")
    assert path.read_text() == "new\n" and not _leftovers(tmp_path)


def test_failed_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.txt"
    path.write_text("complete\n")
    with pytest.raises(ValueError, match="half-way"):
        with atomic_output(path) as tmp:
            tmp.write_text("trunc")
            raise ValueError("half-way")
    assert path.read_text() == "complete\n" and not _leftovers(tmp_path)


def test_atomic_torch_save_round_trip_and_restore(tmp_path):
    original = torch.save
    path = tmp_path / "checkpoint.pth"
    with atomic_torch_save():
        assert torch.save is not original
        torch.save({"w": torch.arange(4)}, path)
        torch.save({"w": torch.arange(5)}, str(path))
    assert torch.save is original
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5))
    assert not _leftovers(tmp_path)


def test_atomic_torch_save_keeps_the_previous_checkpoint_on_error(tmp_path):
    path = tmp_path / "3epoch.pth"
    torch.save({"w": torch.ones(3)}, path)
    with atomic_torch_save():
        with pytest.raises(RuntimeError, match="interrupted while pickling"):
            torch.save({"w": torch.zeros(1000), "bad": _FailsWhilePickled()}, path)
    assert torch.save is torch.serialization.save
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert not _leftovers(tmp_path)


def test_atomic_torch_save_passes_file_objects_through(tmp_path):
    with atomic_torch_save(), open(tmp_path / "f.pth", "wb") as f:
        torch.save(torch.ones(2), f)
    assert torch.equal(torch.load(tmp_path / "f.pth", weights_only=True), torch.ones(2))


_WRITER = """
import sys, torch
from espnet_omni_avsr.utils.atomic_files import atomic_torch_save
path = sys.argv[1]
big = torch.randn(16 * 1024 * 1024)  # 64 MB per save
with atomic_torch_save():
    torch.save({"epoch": 0, "w": big[:8]}, path)
    print("ready", flush=True)
    for epoch in range(1, 10000):
        torch.save({"epoch": epoch, "w": big}, path)
"""


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    """The trainer's situation: killed at an arbitrary moment while it rewrites checkpoint.pth."""
    path = tmp_path / "checkpoint.pth"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # several 64 MB saves are under way by now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(path, weights_only=True)  # a truncated zip would raise here
    assert state["w"].numel() in (8, 16 * 1024 * 1024)


def test_safe_trainer_runs_espnets_trainer_inside_atomic_saving(monkeypatch):
    from espnet2.train.trainer import Trainer

    from espnet_omni_avsr.utils.safe_training import SafeTrainer

    seen = {}

    def fake_run(cls, *args, **kwargs):
        seen["atomic"] = torch.save is not atomic_files.torch.serialization.save
        seen["args"] = args

    monkeypatch.setattr(Trainer, "run", classmethod(fake_run))
    SafeTrainer.run("model", "optimizers")
    assert seen == {"atomic": True, "args": ("model", "optimizers")}
    assert torch.save is torch.serialization.save
