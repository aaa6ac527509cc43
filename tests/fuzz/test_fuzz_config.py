"""Fuzzing training configs through the task: ESPnet's argument parsing (--config YAML), the task's
argument checks (tasks/arg_checks.py, run first by its main_worker) and build_model. Mutations:
unknown keys, wrong types, negative / zero / fractional rates and sizes, non-mapping confs. Each
config builds, or fails with an error naming the key (argparse's usage error, a ValueError /
TypeError / FileNotFoundError that names it)."""
import copy

import numpy as np
import pytest
import yaml

from tests.fuzz.fuzzlib import COUNTS, case
from tests.models.conftest import tiny_config

READER = "task config"
BAD_VALUES = [-3, -1, 0, 2.5, -0.5, "abc", "", [1, 2], {"x": 1}, None, True]


@pytest.fixture(scope="module")
def base(tiny_llm_dir, tiny_whisper_dir):
    return tiny_config(tiny_llm_dir, tiny_whisper_dir)


def _build(tmp_path, config, extra=()):
    from espnet_omni_avsr.tasks.arg_checks import check_run_args
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    args = AVSRLLMTask.get_parser().parse_args(["--config", str(path), *extra])
    check_run_args(args)
    return AVSRLLMTask.build_model(args)


def _run(tmp_path, capsys, name, config, key, value, extra=(), expect=None, names=()):
    """One config; argparse's exit (usage error on stderr) counts as a named error. The error must
    name the key (its last part or its top-level key), the value, or one of `names`."""
    names = [key.split(".")[-1], key.split(".")[0], *names]
    if value not in ("", None):
        names += [repr(value), str(value)]
    try:
        return case(READER, name, lambda: _build(tmp_path, config, extra), names,
                    allowed=(ValueError, TypeError, FileNotFoundError), expect=expect)
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code == 2 and any(n in err for n in names), (name, err[-500:])
        assert expect != "ok", (name, err[-500:])
        COUNTS[READER, "named error"] += 1


def _set(config, key, value):
    config = copy.deepcopy(config)
    if "." in key:
        top, leaf = key.split(".", 1)
        config[top] = dict(config.get(top) or {})
        config[top][leaf] = value
    else:
        config[key] = value
    return config


def test_fixed_mutations(tmp_path, capsys, base):
    _run(tmp_path, capsys, "the tiny config", base, "model", "avsr_llm", expect="ok")
    fixed = [
        ("unknown top-level key", "no_such_option", 1, "error"),
        ("unknown conf key", "audio_projector_conf.no_such_argument", 1, "error"),
        ("unknown model_conf key", "model_conf.no_such_argument", 1, "error"),
        ("negative rate", "audio_compressor_conf.rate", -2, "error"),
        ("zero rate", "video_compressor_conf.rate", 0, "error"),
        ("fractional rate", "audio_compressor_conf.rate", 2.5, "error"),
        ("rate as text", "audio_compressor_conf.rate", "four", "error"),
        ("conf as a list", "audio_projector_conf", [1, 2], "error"),
        ("conf as text", "video_encoder_conf", "big", "error"),
        ("tasks as a number", "model_conf.tasks", 5, "error"),
        ("unknown task", "model_conf.tasks", ["nope"], "error"),
        ("heads not dividing the size", "video_encoder_conf.attention_heads", 3, "error"),
        ("negative blocks", "video_encoder_conf.num_blocks", -1, "error"),
        ("negative hidden size", "audio_projector_conf.hidden_size", -16, "error"),
        ("LoRA rank 0", "llm_adapter_conf.r", 0, "error"),
        ("unknown component", "audio_frontend", "nope", "error"),
        ("losses not a list", "losses", "cross entropy", "error"),
        ("negative loss weight", "losses", [{"type": "llm_cross_entropy", "weight": -1}], "error"),
        ("a boolean as text", "use_preprocessor", "maybe", "error"),
        ("missing LLM folder", "decoder_conf.model_dir", "/nonexistent/llm", "error"),
        ("unknown dtype", "decoder_conf.dtype", "float7", "error"),
    ]
    for name, key, value, expect in fixed:
        names = ["weight"] if key == "losses" else ()  # "loss term 'llm': weight must be >= 0"
        _run(tmp_path, capsys, name, _set(base, key, value), key, value, expect=expect, names=names)
    # Matryoshka rate lists (without the compressor's own rate)
    for rates in ([4, -1], [0], [2.5], ["x"], 3):
        config = _set(_set(base, "audio_compressor_conf", {}), "audio_rates", rates)
        _run(tmp_path, capsys, f"audio_rates {rates}", config, "audio_rates", rates, expect="error")
    _run(tmp_path, capsys, "--audio_rates x on the command line", base, "audio_rates", "x", extra=["--audio_rates", "x"],
         expect="error")


def test_random_mutations(tmp_path, capsys, base):
    rng = np.random.default_rng(30)
    leaves = [f"{top}.{leaf}" for top, conf in base.items() if isinstance(conf, dict) for leaf in conf
              if leaf != "model_dir"]
    for k in range(50):
        key = leaves[int(rng.integers(len(leaves)))]
        value = BAD_VALUES[int(rng.integers(len(BAD_VALUES)))]
        _run(tmp_path, capsys, f"random {k}: {key} = {value!r}", _set(base, key, value), key, value)


def test_every_recipe_config_passes_the_checks():
    """No false alarms: the configs under conf/ pass the task's argument checks as they are."""
    import glob
    import os

    from espnet_omni_avsr.tasks.arg_checks import check_config
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
    from espnet_omni_avsr.utils.config_stack import load_config, merge

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = sorted(p for p in glob.glob(f"{root}/conf/**/*.yaml", recursive=True)
                   if "/decode/" not in p and "/overlays/" not in p)
    assert len(paths) >= 6
    parser = AVSRLLMTask.get_parser()
    for path in paths:
        config = load_config(path)
        if path.endswith("_warmup.yaml"):  # an overlay of the config it warms up
            config = merge(load_config(path.replace("_warmup.yaml", ".yaml")), config)
        args = parser.parse_args([])
        for key, value in config.items():
            setattr(args, key, value)
        check_config(args)
