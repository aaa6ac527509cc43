"""Every config's model type keeps its losses, statistics, gradients and greedy hypotheses
(tests/models/golden.py says how they are measured and how to regenerate them)."""
import json

import pytest

from tests.models import golden

REL, ABS = 1e-4, 1e-5  # float tolerance: op order may change, the arithmetic may not
EXPECTED = json.loads(golden.VALUES.read_text())


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return golden.tiny_dirs(str(tmp_path_factory.mktemp("golden")))


def test_every_case_has_golden_values():
    assert sorted(golden.variants()) == sorted(EXPECTED)


def _close(got, want, where):
    assert got == pytest.approx(want, rel=REL, abs=ABS), where

def _assert_same_numbers(got: dict, want: dict, name: str) -> None:
    """Losses, statistics and gradient norm within the golden tolerance; the trainable count exactly."""
    for mode in ("eval", "train"):
        assert sorted(got[mode]["stats"]) == sorted(want[mode]["stats"]), f"{name} {mode}: statistics names"
        _close(got[mode]["loss"], want[mode]["loss"], f"{name} {mode} loss")
        for k, v in want[mode]["stats"].items():
            _close(got[mode]["stats"][k], v, f"{name} {mode} {k}")
    _close(got["train"]["grad_norm"], want["train"]["grad_norm"], f"{name} gradient norm")
    assert got["train"]["n_trainable"] == want["train"]["n_trainable"], name


@pytest.mark.parametrize("name", sorted(golden.variants()))
def test_golden(name, dirs):
    conf, overrides = golden.variants()[name]
    got = golden.measure(golden.tiny_config(conf, overrides, dirs))
    want = EXPECTED[name]
    _assert_same_numbers(got, want, name)
    assert got["train"]["n_with_grad"] == want["train"]["n_with_grad"], name
    assert got["greedy"] == want["greedy"], name


@pytest.mark.parametrize("packed", sorted(golden.PACKED_TWINS))
def test_packed_case_equals_its_padded_case(packed):
    """model_conf.pack_sequences changes how the LLM runs, not what it computes: the pinned numbers
    of a packed case are those of its padded twin, within the golden tolerance."""
    got, want = EXPECTED[packed], EXPECTED[golden.PACKED_TWINS[packed]]
    _assert_same_numbers(got, want, packed)
    assert got["greedy"] == want["greedy"]  # decoding is never packed
