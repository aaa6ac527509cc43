"""utils/trainable.py and the provenance of utils/frozen_weights.py: one declaration per part, the
eval mode of frozen parts, the build-time summary and where pretrained weights came from."""
import logging
import os

import pytest
import torch

from espnet_omni_avsr.utils.frozen_weights import (
    frozen_pretrained_keys,
    mark_pretrained,
    pretrained_source,
    pretrained_sources,
)
from espnet_omni_avsr.utils.trainable import (
    declared_trainable,
    format_trainable_summary,
    is_trainable,
    keep_frozen_in_eval,
    set_trainable,
    trainable_summary,
)


class _Part(torch.nn.Module):
    """A part with BatchNorm in a trunk and a mode-dependent augmentation (dropout) beside it."""

    def __init__(self):
        super().__init__()
        self.augment = torch.nn.Dropout(0.5)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        self.head = torch.nn.Linear(4, 2)

    def train(self, mode: bool = True):
        super().train(mode)
        return keep_frozen_in_eval(self)


def _eval_modules(module):
    return sorted(name for name, m in module.named_modules() if not m.training)


def test_set_trainable_freezes_records_and_holds_eval():
    part = _Part()
    assert declared_trainable(part) is None and is_trainable(part)
    assert set_trainable(part, False) is part
    assert declared_trainable(part) is False and not is_trainable(part)
    assert not any(p.requires_grad for p in part.parameters())
    assert _eval_modules(part.train()) == _eval_modules(part) and not part.training
    wrapper = torch.nn.Sequential(part).train()  # held also when a parent trains
    assert wrapper.training and not part.trunk[1].training

    set_trainable(part, True)  # released
    assert all(p.requires_grad for p in part.parameters()) and _eval_modules(part.train()) == []
    assert not is_trainable(None)


def test_eval_parts_leave_the_rest_following_the_mode():
    part = _Part()
    set_trainable(part, False, eval_parts=(part.trunk,))
    part.train()
    assert part.augment.training and part.head.training
    assert _eval_modules(part) == ["trunk", "trunk.0", "trunk.1"]
    before = part.trunk[1].running_mean.clone()
    part.trunk(torch.randn(3, 4))
    assert torch.equal(part.trunk[1].running_mean, before)  # fixed BatchNorm statistics
    set_trainable(part.head, False, eval_parts=())  # frozen weights, mode untouched
    assert part.head.training and not part.head.weight.requires_grad
    with pytest.raises(ValueError, match="not inside"):
        set_trainable(part.head, False, eval_parts=(part.trunk,))


def test_adapters_declared_trainable_inside_a_frozen_part():
    part = _Part()
    set_trainable(part, False)
    set_trainable(part.head, True)
    assert is_trainable(part) and declared_trainable(part) is False
    assert [n for n, p in part.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]


# --------------------------------------------------------------------------- the project's parts

CROP = 32


def _light(frozen):
    from espnet_omni_avsr.frontends.light_video_frontend import LightVideoFrontend

    return LightVideoFrontend(output_size=8, crop_size=CROP, stem_channels=4, channels=(8,), frozen=frozen)


def _resnet18(frozen):
    from espnet_omni_avsr.frontends.resnet18_video_frontend import ResNet18VideoFrontend

    return ResNet18VideoFrontend(crop_size=CROP, frozen=frozen)


def _pixel(frozen):
    from espnet_omni_avsr.frontends.pixel_video_frontend import PixelVideoFrontend

    return PixelVideoFrontend(output_size=8, crop_size=CROP, downsample=4, frozen=frozen)


def _avhubert(frozen, lora_r=0):
    from espnet_omni_avsr.encoders.avhubert_encoder import AVHubertEncoder

    return AVHubertEncoder(input_size=CROP * CROP, frozen=frozen, lora_r=lora_r, encoder_layers=1,
                           encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
                           conv_pos=4, conv_pos_groups=2)


def _under(*prefixes):
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


# part -> which sub-modules a frozen part keeps in eval mode while training (all others train)
FROZEN_EVAL = {
    "light": (_light, _under("stem", "blocks")),
    "resnet18": (_resnet18, _under("resnet")),
    "pixel": (_pixel, lambda name: False),
    "avhubert": (_avhubert, _under("model")),
}


@pytest.mark.parametrize("name", sorted(FROZEN_EVAL))
def test_frozen_parts_train_nothing_and_keep_their_eval_modules(name):
    build, held = FROZEN_EVAL[name]
    part = build(True)
    assert not is_trainable(part)
    part.train()
    assert _eval_modules(part) == sorted(n for n, _ in part.named_modules() if held(n)), name
    part.eval().train()
    assert _eval_modules(part) == sorted(n for n, _ in part.named_modules() if held(n)), name
    trainable = build(False).train()
    assert _eval_modules(trainable) == [] and all(p.requires_grad for p in trainable.parameters())


def test_frozen_whisper_encoder_keeps_eval_and_its_folder(tiny_whisper_dir):
    from espnet_omni_avsr.encoders.whisper_encoder import WhisperEncoder

    enc = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, frozen=True).train()
    assert not is_trainable(enc) and enc.training
    assert all(not m.training for m in enc.encoder.modules())
    [src] = pretrained_sources(enc)
    assert src.source == os.path.abspath(tiny_whisper_dir) and src.prefixes == ("encoder.",) and src.frozen
    trainable = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, frozen=False).train()
    assert trainable.encoder.training and not trainable.encoder.embed_positions.weight.requires_grad
    assert not pretrained_sources(trainable)[0].frozen  # trains: kept in checkpoints


def test_avhubert_lora_trains_inside_the_frozen_encoder_and_keeps_its_checkpoint(tmp_path):
    from espnet_omni_avsr.encoders.avhubert_checkpoint import official_checkpoint

    src = _avhubert(True)
    path = tmp_path / "ckpt.pt"
    torch.save(official_checkpoint({k[len("model."):]: v for k, v in src.state_dict().items()}, src.arch), path)
    from espnet_omni_avsr.encoders.avhubert_encoder import AVHubertEncoder

    enc = AVHubertEncoder(input_size=CROP * CROP, checkpoint=str(path), lora_r=2).train()
    assert is_trainable(enc) and not enc.model.training
    assert all(not m.training for m in enc.model.modules())  # LoRA dropout too
    trainable = sorted(n for n, p in enc.named_parameters() if p.requires_grad)
    assert trainable and all("lora_" in n for n in trainable)
    [source] = pretrained_sources(enc)
    assert source.source == str(path) and source.prefixes == ("model.",) and source.frozen
    assert not any("lora_" in k for k in frozen_pretrained_keys(enc))
    assert pretrained_source(enc.model.encoder.layers[0].self_attn.q_proj.base_layer.weight) == str(path)
    assert not pretrained_sources(_avhubert(True))  # no checkpoint: randomly initialised, the model's own


# --------------------------------------------------------------------------- provenance and peft


class _Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(4, 4)
        self.v_proj = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.out(self.q_proj(x) + self.v_proj(x))


def test_provenance_survives_peft_wrapping(tmp_path):
    from peft import LoraConfig, get_peft_model

    net = _Attention()
    mark_pretrained(net, source=tmp_path / "folder")
    mark_pretrained(net.out, source=str(tmp_path / "other.pt"))  # a later mark of a sub-module wins there
    set_trainable(net, False)
    wrapped = get_peft_model(net, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    by_source = {s.source: s for s in pretrained_sources(wrapped)}
    assert set(by_source) == {str(tmp_path / "folder"), str(tmp_path / "other.pt")}
    folder = by_source[str(tmp_path / "folder")]
    assert folder.prefixes == ("base_model.model.",) and folder.frozen and folder.num_params == 2 * (16 + 4)
    assert by_source[str(tmp_path / "other.pt")].prefixes == ("base_model.model.out.",)
    keys = frozen_pretrained_keys(wrapped)
    assert "base_model.model.q_proj.base_layer.weight" in keys and not any("lora_" in k for k in keys)

    unsourced = torch.nn.Linear(2, 2)
    mark_pretrained(unsourced)  # the call without a source still marks
    [src] = pretrained_sources(unsourced)
    assert src.source is None and src.prefixes == ("",) and not src.frozen
    assert frozen_pretrained_keys(set_trainable(unsourced, False)) == {"weight", "bias"}


# --------------------------------------------------------------------------- a built model


def test_summary_of_a_built_model(tiny_llm_dir, tiny_whisper_dir, caplog):
    from tests.models.conftest import build, tiny_config

    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["video_encoder_conf"] = dict(config["video_encoder_conf"], frozen=True)  # an ESPnet encoder
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO):
        model, _ = build(config)
    assert "trainable and frozen parameters" in caplog.text  # logged when the model is built

    enc = model.video.encoder
    assert declared_trainable(enc) is False and not is_trainable(enc)
    model.train()
    assert model.video.frontend.training and all(not m.training for m in enc.modules())

    rows = {r.part: r for r in trainable_summary(model)}
    audio, video = rows["audio.encoder"], rows["video.encoder"]
    assert audio.trainable == 0 and audio.sources == (os.path.abspath(tiny_whisper_dir),)
    assert video.trainable == 0 and video.frozen > 0 and not video.sources  # frozen, the model's own weights
    assert rows["decoder.llm"].trainable > 0 and rows["decoder.llm"].frozen > 0  # LoRA on a frozen LLM
    assert len(rows["decoder.llm"].sources) == 1
    assert rows["decoder"].trainable > 0  # the delimiters' own embedding table
    assert rows["video.projectors"].trainable > 0 and rows["video.projectors"].frozen == 0
    assert sum(r.trainable for r in rows.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    table = format_trainable_summary(list(rows.values()))
    assert os.path.abspath(tiny_whisper_dir) in table and table.splitlines()[-1].startswith("total")

    by_prefix = {s.prefixes: s for s in pretrained_sources(model)}
    assert by_prefix[("audio.encoder.encoder.",)].source == os.path.abspath(tiny_whisper_dir)
    assert by_prefix[("decoder.llm.base_model.model.",)].frozen  # the LLM inside peft's wrapper
    assert all(s.frozen for s in by_prefix.values())
    assert not any(k.startswith("audio.encoder.") for k in model.state_dict())  # frozen: reloads from there
