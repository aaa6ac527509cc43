"""Stage 12 on a real model: a packed AV-HuBERT VSR model decodes without the files it was built from."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from espnet_omni_avsr.bin import pack_model as pack_cli
from espnet_omni_avsr.utils.frozen_weights import pretrained_sources
from espnet_omni_avsr.utils.model_archive import iter_pretrained_paths

ROOT = Path(__file__).resolve().parents[2]


def _train_config(llm_dir: str, checkpoint: str) -> dict:
    """conf/debug/vsr_avhubert_tiny.yaml with a frozen AV-HuBERT read from `checkpoint`, as the
    config.yaml training writes (every task argument)."""
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    config = yaml.safe_load((ROOT / "conf" / "debug" / "vsr_avhubert_tiny.yaml").read_text())
    config["decoder_conf"]["model_dir"] = llm_dir
    config["video_encoder_conf"] = dict(checkpoint=checkpoint, frozen=True, lora_r=2, lora_alpha=4)
    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    return vars(args)


def test_packed_avhubert_model_is_self_contained(tmp_path, tiny_llm_dir, tiny_avhubert_checkpoint):
    import argparse

    from espnet_omni_avsr.recognizer import AVSRRecognizer
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    llm = shutil.copytree(tiny_llm_dir, tmp_path / "pretrained" / "tiny-llm")
    checkpoint = tmp_path / "avhubert" / "tiny_avhubert.pt"  # a copy: it is deleted below
    checkpoint.parent.mkdir()
    shutil.copy(tiny_avhubert_checkpoint, checkpoint)
    config = _train_config("pretrained/tiny-llm", str(checkpoint))

    # "train": build, move every trainable weight (LoRA B starts at zero), save as training does
    exp = tmp_path / "exp"
    exp.mkdir()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative paths are relative to the recipe directory
    try:
        torch.manual_seed(0)
        model = AVSRLLMTask.build_model(argparse.Namespace(**config))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        torch.save(model.state_dict(), exp / "model.pth")
        (exp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        rng = np.random.default_rng(0)
        videos = [rng.integers(0, 256, (n, 40, 40), dtype=np.uint8) for n in (12, 7)]
        before = AVSRRecognizer(exp / "config.yaml", exp / "model.pth", max_new_tokens=6).transcribe(
            [dict(video=v) for v in videos])
    finally:
        os.chdir(cwd)

    # the frozen AV-HuBERT weights are not in model.pth: they come from the checkpoint file ...
    state = torch.load(exp / "model.pth", weights_only=True)
    assert "video.encoder.model.encoder.layers.0.fc1.weight" not in state
    assert any("video.encoder" in k and "lora_B" in k for k in state)
    # ... which the model reports, and which the config names under a key that pack_model packs
    named = {str((tmp_path / v).resolve()) for _, v in iter_pretrained_paths(config)}
    reported = [s for s in pretrained_sources(model) if s.source is not None]
    assert str(checkpoint) in {s.source for s in reported} and {s.source for s in reported} <= named

    archive = tmp_path / "packed" / "vsr.tar.gz"
    assert pack_cli.main(["--config", str(exp / "config.yaml"), "--model_file", str(exp / "model.pth"),
                          "--out", str(archive), "--base_dir", str(tmp_path)]) == 0
    checkpoint.unlink()
    shutil.rmtree(llm)
    with pytest.raises(FileNotFoundError):  # the training config now points at nothing
        AVSRRecognizer(exp / "config.yaml", exp / "model.pth")

    dest = tmp_path / "elsewhere"
    rec = AVSRRecognizer.from_pretrained(archive, cache_dir=dest, max_new_tokens=6)
    assert rec.transcribe([dict(video=v) for v in videos]) == before
    loaded = dict(rec.model.named_parameters())
    for name, p in model.named_parameters():  # every weight, the frozen AV-HuBERT ones included
        assert torch.equal(p, loaded[name]), name
    assert all(s.source.startswith(str(dest.resolve())) for s in pretrained_sources(rec.model) if s.source)
