"""Tiny trained-looking models (random weights, every trainable weight moved off its start) saved
as a training exp dir (config.yaml + model.pth), for the inference and transcribe tests."""
import argparse

import pytest
import torch
import yaml

from tests.models.conftest import tiny_config


def write_exp_dir(out, llm_dir: str, whisper_dir: str, tasks, audio_rates=(4,), video_rates=(2,), seed: int = 0):
    """Build the tiny model for `tasks` with the given trained rates and save it as training does."""
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    config = tiny_config(llm_dir, whisper_dir)
    config["model_conf"] = dict(tasks=list(tasks))
    config["audio_compressor_conf"] = {}
    config["video_compressor_conf"] = {}
    config["audio_rates"] = list(audio_rates)
    config["video_rates"] = list(video_rates)
    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    torch.manual_seed(seed)
    model = AVSRLLMTask.build_model(argparse.Namespace(**vars(args)))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pth")
    (out / "config.yaml").write_text(yaml.safe_dump(vars(args), sort_keys=False))
    return out


@pytest.fixture(scope="session")
def multitask_exp(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir):
    """ASR, VSR and AVSR; audio rates 4 and 16, video rates 2 and 5."""
    return write_exp_dir(tmp_path_factory.mktemp("multitask_exp"), tiny_llm_dir, tiny_whisper_dir,
                         ["avsr", "asr", "vsr"], audio_rates=(4, 16), video_rates=(2, 5))


@pytest.fixture(scope="session")
def avsr_exp(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir):
    """AVSR only (one rate each)."""
    return write_exp_dir(tmp_path_factory.mktemp("avsr_exp"), tiny_llm_dir, tiny_whisper_dir, ["avsr"], seed=1)
