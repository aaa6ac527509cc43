"""benchmarks/packed_step.py's mode names and clip-length spread (the benchmark itself is run by hand)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import packed_step  # noqa: E402


def test_mode_names_choose_task_batching_and_packing():
    packer = object()
    assert packed_step._mode("padded", packer, True) == (True, None)
    assert packed_step._mode("packed", packer, False) == (False, packer)
    assert packed_step._mode("batched+packed", packer, False) == (True, packer)
    assert packed_step._mode("split+padded", packer, True) == (False, None)
    for bad in ("pad", "batched+", "both+packed"):
        with pytest.raises(SystemExit, match=bad.replace("+", r"\+")):
            packed_step._mode(bad, packer, True)


def test_spread_lengths_shortens_longest_first_and_zeroes_the_rest():
    batch = {"speech": torch.ones(3, 100), "speech_lengths": torch.tensor([100, 100, 100]),
             "video": torch.ones(3, 10, 2), "video_lengths": torch.tensor([10, 10, 10])}
    packed_step.spread_lengths(batch, 0.5)
    assert batch["speech_lengths"].tolist() == [100, 75, 50]
    assert batch["video_lengths"].tolist() == [10, 7, 5]
    assert batch["speech"][1, 75:].abs().sum() == 0 and batch["speech"][1, :75].min() == 1
    assert batch["video"][2, 5:].abs().sum() == 0
    with pytest.raises(SystemExit, match="length_spread"):
        packed_step.spread_lengths(batch, 1.0)
