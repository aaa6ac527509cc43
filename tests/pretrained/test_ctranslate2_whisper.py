"""CTranslate2 model.bin reader and the CTranslate2 -> HF Whisper mapping.

The CT2 files are written here by an independent little writer (struct), following the documented layout.
"""
import struct

import pytest
import torch

from espnet_omni_avsr.pretrained.ctranslate2_whisper import (
    CT2ConversionError,
    CT2FormatError,
    read_ct2_model,
    whisper_config_from_ct2,
    whisper_model_from_ct2,
    whisper_state_dict_from_ct2,
)

DTYPE_CODES = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(variables: dict, aliases: dict = None, *, spec="WhisperSpec", revision=3, version=6) -> bytes:
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, tensor in variables.items():
        tensor = tensor.contiguous()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()  # reshape: 0-d tensors cannot change dtype
        out += [_string(name), struct.pack("<B", tensor.dim()), struct.pack(f"<{tensor.dim()}I", *tensor.shape),
                struct.pack("<B", DTYPE_CODES[tensor.dtype]), struct.pack("<I", len(data)), data]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    return b"".join(out)


@pytest.fixture
def small_variables():
    g = torch.Generator().manual_seed(0)
    return {
        "a/weight": torch.randn(3, 4, generator=g),
        "a/half": torch.randn(5, generator=g).half(),
        "a/bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "b/int8": torch.randint(-128, 127, (2, 2, 2), generator=g, dtype=torch.int8),
        "b/int16": torch.tensor([1, -2, 300], dtype=torch.int16),
        "b/int32": torch.tensor([[70000, -1]], dtype=torch.int32),
        "num_heads": torch.tensor(6, dtype=torch.int16),
        "flag": torch.tensor(1, dtype=torch.int8),
    }


def test_reader_round_trip(tmp_path, small_variables):
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes(small_variables, {"a/alias": "a/weight"}, spec="TestSpec", revision=7))
    model = read_ct2_model(path)
    assert (model.spec, model.spec_revision, model.binary_version) == ("TestSpec", 7, 6)
    assert list(model.variables) == list(small_variables)
    for name, expected in small_variables.items():
        got = model.variables[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        assert torch.equal(got, expected), name
    assert model.aliases == {"a/alias": "a/weight"}
    assert torch.equal(model["a/alias"], small_variables["a/weight"])
    assert model.scalar("num_heads") == 6


@pytest.mark.parametrize("cut", [2, 10, 30, 60, -20, -1])
def test_truncated_file_is_reported(tmp_path, small_variables, cut):
    data = ct2_bytes(small_variables, {"a/alias": "a/weight"})
    path = tmp_path / "model.bin"
    path.write_bytes(data[:cut])
    with pytest.raises(CT2FormatError, match="truncated while reading"):
        read_ct2_model(path)


def test_truncated_data_names_the_variable(tmp_path, small_variables):
    data = ct2_bytes({"only/var": torch.zeros(100)})
    path = tmp_path / "model.bin"
    path.write_bytes(data[:-50 - 4])  # inside the data, before the alias count
    with pytest.raises(CT2FormatError, match=r"the data of 'only/var'.*need 400 bytes"):
        read_ct2_model(path)


def test_format_errors(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes({"x": torch.zeros(2)}, version=5))
    with pytest.raises(CT2FormatError, match="binary version 5"):
        read_ct2_model(path)

    data = bytearray(ct2_bytes({"x": torch.zeros(2)}))
    dtype_offset = 4 + len(_string("WhisperSpec")) + 8 + len(_string("x")) + 1 + 4
    data[dtype_offset] = 9
    path.write_bytes(bytes(data))
    with pytest.raises(CT2FormatError, match="unknown dtype code 9"):
        read_ct2_model(path)

    data[dtype_offset] = 4  # f16: 2 elements need 4 bytes, the file says 8
    path.write_bytes(bytes(data))
    with pytest.raises(CT2FormatError, match="should hold 4 bytes"):
        read_ct2_model(path)

    path.write_bytes(ct2_bytes({"x": torch.zeros(2)}) + b"junk")
    with pytest.raises(CT2FormatError, match="trailing bytes"):
        read_ct2_model(path)

    path.write_bytes(ct2_bytes({"x": torch.zeros(2)}, {"y": "nothing"}))
    with pytest.raises(CT2FormatError, match="missing variable 'nothing'"):
        read_ct2_model(path)


# ------------------------------------------------------------------------------------------------
# HF Whisper -> CT2 (written here, the test's own mapping) -> back through the converter
# ------------------------------------------------------------------------------------------------
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def tiny_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40,
        max_source_positions=20, max_target_positions=16, **TOKENS,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # every tensor random, so that a swapped q/k/v or gamma/beta shows
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
        model.model.encoder.embed_positions.weight.copy_(torch.randn_like(model.model.encoder.embed_positions.weight))
    return model


def hf_to_ct2(model, dtype=torch.float32) -> tuple[dict, dict]:
    sd = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    c = model.config
    var = {}

    def norm(ct2, hf):
        var[f"{ct2}/gamma"], var[f"{ct2}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def lin(ct2, hf):
        var[f"{ct2}/weight"], var[f"{ct2}/bias"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def fused(ct2, hf, parts):
        var[f"{ct2}/weight"] = torch.cat([sd[f"{hf}.{p}.weight"] for p in parts])
        var[f"{ct2}/bias"] = torch.cat(
            [sd[f"{hf}.{p}.bias"] if p != "k_proj" else torch.zeros(c.d_model, dtype=dtype) for p in parts]
        )

    for stack, n in (("encoder", c.encoder_layers), ("decoder", c.decoder_layers)):
        for i in range(n):
            hf, ct = f"model.{stack}.layers.{i}", f"{stack}/layer_{i}"
            norm(f"{ct}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            fused(f"{ct}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"))
            lin(f"{ct}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            norm(f"{ct}/ffn/layer_norm", f"{hf}.final_layer_norm")
            lin(f"{ct}/ffn/linear_0", f"{hf}.fc1")
            lin(f"{ct}/ffn/linear_1", f"{hf}.fc2")
            if stack == "decoder":
                norm(f"{ct}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
                lin(f"{ct}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                fused(f"{ct}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
                lin(f"{ct}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
        norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        var[f"{stack}/position_encodings/encodings"] = sd[f"model.{stack}.embed_positions.weight"]
    heads = {"encoder": c.encoder_attention_heads, "decoder": c.decoder_attention_heads}
    for stack in heads:
        var[f"{stack}/num_heads"] = torch.tensor(heads[stack], dtype=torch.int16)
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    var["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    var["decoder/activation"] = torch.tensor(3, dtype=torch.int8)
    var["decoder/pre_norm"] = torch.tensor(1, dtype=torch.int8)
    var["decoder/alignment_heads"] = torch.tensor(1, dtype=torch.int16)
    return var, {"decoder/projection/weight": "decoder/embeddings/weight"}


@pytest.fixture(scope="module")
def tiny():
    return tiny_whisper()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_qkv_split_round_trip(tmp_path, tiny, dtype):
    variables, aliases = hf_to_ct2(tiny, dtype)
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes(variables, aliases))
    converted = whisper_model_from_ct2(read_ct2_model(path), **TOKENS)

    c, r = tiny.config, converted.config
    for key in ("vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions",
                "max_target_positions", "tie_word_embeddings"):
        assert getattr(r, key) == getattr(c, key), key
    expected, got = tiny.state_dict(), converted.state_dict()
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor.to(dtype).float()), name
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()


def test_converted_model_computes_the_same(tmp_path, tiny):
    variables, aliases = hf_to_ct2(tiny)
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes(variables, aliases))
    converted = whisper_model_from_ct2(read_ct2_model(path), **TOKENS)
    features = torch.randn(1, 80, 2 * tiny.config.max_source_positions)
    decoder_ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        a = tiny.eval()(input_features=features, decoder_input_ids=decoder_ids).logits
        b = converted(input_features=features, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _write(tmp_path, variables, aliases):
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes(variables, aliases))
    return read_ct2_model(path)


def test_missing_and_unexpected_variables_are_named(tmp_path, tiny):
    variables, aliases = hf_to_ct2(tiny)
    del variables["decoder/layer_1/attention/linear_2/bias"]
    variables["encoder/layer_0/something_new/weight"] = torch.zeros(2)
    ct2 = _write(tmp_path, variables, aliases)
    with pytest.raises(CT2ConversionError) as err:
        whisper_model_from_ct2(ct2, **TOKENS)
    assert "decoder/layer_1/attention/linear_2/bias" in str(err.value)
    assert "encoder/layer_0/something_new/weight" in str(err.value)


def test_nonzero_k_bias_is_refused(tmp_path, tiny):
    variables, aliases = hf_to_ct2(tiny)
    d = tiny.config.d_model
    variables["encoder/layer_1/self_attention/linear_0/bias"][d + 3] = 0.5  # inside the k slice
    ct2 = _write(tmp_path, variables, aliases)
    config = whisper_config_from_ct2(ct2, **TOKENS)
    with pytest.raises(CT2ConversionError, match=r"encoder/layer_1/self_attention/linear_0/bias: the k_proj slice"):
        whisper_state_dict_from_ct2(ct2, config)


def test_unsupported_setting_is_refused(tmp_path, tiny):
    variables, aliases = hf_to_ct2(tiny)
    variables["decoder/activation"] = torch.tensor(1, dtype=torch.int8)  # tanh-approximated GELU
    ct2 = _write(tmp_path, variables, aliases)
    with pytest.raises(CT2ConversionError, match="decoder/activation = 1"):
        whisper_model_from_ct2(ct2, **TOKENS)


def test_real_tiny_en_file_maps_completely():
    """The shipped tiny.en model.bin: every variable is used and every HF parameter filled (no weights saved)."""
    pytest.importorskip("transformers")
    from espnet_omni_avsr.pretrained.ctranslate2_whisper import find_whisper_tiny_en
    from espnet_omni_avsr.pretrained.package_files import MissingDependencyError

    try:
        folder = find_whisper_tiny_en()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    ct2 = read_ct2_model(folder / "model.bin")
    assert ct2.spec == "WhisperSpec"
    config = whisper_config_from_ct2(ct2, pad_token_id=50256, bos_token_id=50257, eos_token_id=50256,
                                     decoder_start_token_id=50257)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
            config.decoder_attention_heads, config.encoder_ffn_dim, config.vocab_size, config.num_mel_bins,
            config.max_source_positions, config.max_target_positions) == (384, 4, 4, 6, 6, 1536, 51864, 80, 1500, 448)
    state = whisper_state_dict_from_ct2(ct2, config)
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        names = set(WhisperForConditionalGeneration(config).state_dict())
    assert set(state) == names
