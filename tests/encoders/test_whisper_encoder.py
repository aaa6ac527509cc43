import json
import os

import pytest
import torch

from espnet_omni_avsr.encoders.whisper_encoder import WhisperEncoder


def feats_and_lengths(lengths, n_frames=None, seed=0):
    """Random features with the given valid lengths; padding filled with junk (not zeros)."""
    g = torch.Generator().manual_seed(seed)
    T = n_frames or max(lengths)
    feats = torch.randn(len(lengths), T, 80, generator=g)
    return feats, torch.tensor(lengths)


def test_exact_mode_equals_hf_encoder(tiny_whisper_dir):
    from transformers import WhisperModel

    hf = WhisperModel.from_pretrained(tiny_whisper_dir, local_files_only=True).encoder.eval()
    encoder = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir)
    feats, lens = feats_and_lengths([3000, 401], n_frames=3000)
    out, out_lens, states = encoder(feats, lens)
    with torch.no_grad():
        ref = hf(feats.transpose(1, 2)).last_hidden_state  # (2, 1500, 32)
    assert states is None
    assert out_lens.tolist() == [1500, 201]
    assert out.shape == (2, 1500, encoder.output_size())
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :201], ref[1, :201], atol=1e-5, rtol=0)
    assert out[1, 201:].abs().max() == 0


def test_exact_mode_cuts_to_longest(tiny_whisper_dir):
    encoder = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir)
    feats, lens = feats_and_lengths([300, 125], n_frames=3000)
    out, out_lens, _ = encoder(feats, lens)
    assert out_lens.tolist() == [150, 63] and out.shape == (2, 150, 32)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_true_length_padding_invariance(tiny_whisper_dir, attn):
    encoder = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, attn_implementation=attn)
    lengths = [97, 40, 1, 64]  # odd and even: the stride-2 conv's last window differs
    feats, lens = feats_and_lengths(lengths)
    out, out_lens, _ = encoder(feats, lens)
    assert out_lens.tolist() == [(n + 1) // 2 for n in lengths]
    assert out.shape == (4, 49, 32)
    for i, n in enumerate(lengths):
        alone, alone_lens, _ = encoder(feats[i : i + 1, :n], lens[i : i + 1])
        m = alone_lens.item()
        torch.testing.assert_close(out[i, :m], alone[0], atol=1e-5, rtol=0)
        assert out[i, m:].abs().sum() == 0


def test_frozen_keeps_eval_and_no_grads(tiny_whisper_dir):
    encoder = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, frozen=True)
    parent = torch.nn.Sequential(encoder)
    parent.train()
    assert encoder.training and not encoder.encoder.training
    assert all(not m.training for m in encoder.encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    feats, lens = feats_and_lengths([20, 11])
    feats.requires_grad_(True)
    out, _, _ = encoder(feats, lens)
    out.sum().backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert feats.grad is not None  # gradients still flow through to the input


def test_trainable(tiny_whisper_dir):
    encoder = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, frozen=False)
    encoder.train()
    assert encoder.encoder.training
    assert not encoder.encoder.embed_positions.weight.requires_grad  # fixed table, as in HF Whisper
    out, _, _ = encoder(*feats_and_lengths([20, 11]))
    out.sum().backward()
    assert encoder.encoder.conv1.weight.grad is not None


def test_output_layer(tiny_whisper_dir):
    full = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir)
    last = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, output_layer=2)
    first = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, output_layer=1)
    feats, lens = feats_and_lengths([30])
    torch.testing.assert_close(full(feats, lens)[0], last(feats, lens)[0])
    assert not torch.allclose(first(feats, lens)[0], full(feats, lens)[0])
    with pytest.raises(ValueError, match="output_layer"):
        WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, output_layer=3)


def test_errors(tiny_whisper_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="/no/such/whisper"):
        WhisperEncoder(input_size=80, model_dir="/no/such/whisper")
    with pytest.raises(FileNotFoundError, match="config.json"):
        WhisperEncoder(input_size=80, model_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match="llama"):
        WhisperEncoder(input_size=80, model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="num_mel_bins=80"):
        WhisperEncoder(input_size=128, model_dir=tiny_whisper_dir)
    encoder = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir)
    with pytest.raises(ValueError, match="3001"):
        encoder(*feats_and_lengths([3001]))
    with pytest.raises(ValueError, match="80"):
        encoder(torch.zeros(1, 10, 40), torch.tensor([10]))


def test_no_weights_is_a_clear_error(tiny_whisper_dir, tmp_path):
    with open(os.path.join(tiny_whisper_dir, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    with pytest.raises(FileNotFoundError, match="weights"):
        WhisperEncoder(input_size=80, model_dir=str(tmp_path))


def test_reads_pytorch_model_bin(tiny_whisper_dir, tmp_path):
    reference = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir)
    with open(os.path.join(tiny_whisper_dir, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    state = {f"encoder.{k}": v for k, v in reference.encoder.state_dict().items()}
    state["decoder.embed_tokens.weight"] = torch.zeros(3, 3)  # ignored
    torch.save(state, tmp_path / "pytorch_model.bin")
    encoder = WhisperEncoder(input_size=80, model_dir=str(tmp_path))
    feats, lens = feats_and_lengths([21])
    torch.testing.assert_close(encoder(feats, lens)[0], reference(feats, lens)[0])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_encoder_matches_float32(tiny_whisper_dir, dtype):
    """The weights in bf16 / fp16, the output float32 and close to the float32 encoder's (cosine
    per frame); padding invariance holds in that dtype too."""
    ref_enc = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir)
    enc = WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, dtype=dtype)
    assert enc.encoder.conv1.weight.dtype == getattr(torch, dtype)
    feats, lens = feats_and_lengths([120, 64])
    with torch.no_grad():
        ref, _, _ = ref_enc(feats, lens)
        out, olens, _ = enc(feats, lens)
        alone, _, _ = enc(feats[1:, :64], lens[1:])
    assert out.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(out[0, :60], ref[0, :60], dim=-1)
    assert cos.min() > 0.99, cos.min()
    torch.testing.assert_close(alone[0], out[1, : int(olens[1])], atol=1e-2, rtol=0)


def test_unknown_dtype_is_refused(tiny_whisper_dir):
    with pytest.raises(ValueError, match="dtype must be one of"):
        WhisperEncoder(input_size=80, model_dir=tiny_whisper_dir, dtype="int8")
