"""dtype names, and "auto": bf16 exactly where the machine multiplies bf16 natively."""
import pytest
import torch

from espnet_omni_avsr.utils import dtypes


@pytest.fixture
def machine(monkeypatch):
    """Pretend hardware: set which bf16 capabilities torch reports."""
    def set_caps(cuda=False, amx=False, avx512_bf16=False):
        dtypes.native_bf16.cache_clear()
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    yield set_caps
    dtypes.native_bf16.cache_clear()


@pytest.mark.parametrize("caps, expected", [
    ({}, torch.float32),
    ({"avx512_bf16": True}, torch.bfloat16),
    ({"amx": True}, torch.bfloat16),
    ({"cuda": True}, torch.bfloat16),
])
def test_auto_follows_the_hardware(machine, caps, expected):
    machine(**caps)
    assert dtypes.resolve_dtype("auto") is expected


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_named_dtypes_ignore_the_hardware(machine, name):
    machine()
    assert dtypes.resolve_dtype(name) is getattr(torch, name)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"decoder_conf.dtype must be one of .*'auto'.*got 'bf16'"):
        dtypes.resolve_dtype("bf16", "decoder_conf.dtype")


def test_the_decoder_and_the_whisper_encoder_take_auto(machine, tiny_llm_dir, tiny_whisper_dir):
    from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
    from espnet_omni_avsr.encoders.whisper_encoder import WhisperEncoder

    machine(avx512_bf16=True)
    assert HFCausalLMDecoder(model_dir=tiny_llm_dir, dtype="auto").dtype is torch.bfloat16
    enc = WhisperEncoder(model_dir=tiny_whisper_dir, dtype="auto")
    assert enc.encoder.conv1.weight.dtype is torch.bfloat16
    machine()
    assert HFCausalLMDecoder(model_dir=tiny_llm_dir, dtype="auto").dtype is torch.float32
