"""AVHubertEncoder: shapes and frame rate, padding invariance, modalities, frozen/LoRA, bad arguments."""
import pytest
import torch

from espnet_omni_avsr.encoders.avhubert_checkpoint import official_checkpoint
from espnet_omni_avsr.encoders.avhubert_encoder import AVHubertEncoder
from espnet_omni_avsr.frontends.avhubert_fbank import avhubert_fbank
from espnet_omni_avsr.utils.frozen_weights import frozen_pretrained_keys

CROP = 24
TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_pos=8, conv_pos_groups=4)


def tiny(**kwargs):
    torch.manual_seed(0)
    return AVHubertEncoder(input_size=CROP * CROP, **{**TINY, **kwargs})


def test_shapes_and_frame_rate():
    enc = tiny().eval()
    assert enc.output_size() == 32
    video = torch.randn(2, 50, CROP * CROP)  # 2 s at 25 fps
    out, olens, states = enc(video, torch.tensor([50, 30]))
    assert out.shape == (2, 50, 32) and olens.tolist() == [50, 30] and states is None  # 25 Hz out
    assert torch.all(out[1, 30:] == 0)
    out4, _, _ = enc(video.view(2, 50, CROP, CROP), torch.tensor([50, 30]))  # (B, T, H, W) too
    assert torch.equal(out, out4)


def test_padding_invariance():
    enc = tiny().eval()
    video = torch.randn(2, 12, CROP * CROP)
    video[1, 7:] = 0.0  # the mouth_roi front end zeroes padded frames
    batch, _, _ = enc(video, torch.tensor([12, 7]))
    alone, _, _ = enc(video[1:, :7], torch.tensor([7]))
    torch.testing.assert_close(batch[1, :7], alone[0], atol=1e-5, rtol=1e-5)


def test_audiovisual_input():
    enc = tiny(modality="audiovisual").eval()
    video = torch.randn(1, 25, CROP * CROP)
    fbank = avhubert_fbank(torch.randn(16000) * 0.1)  # 1 s of audio
    assert fbank.shape == (25, 104)  # 98 frames at 100 Hz -> 25 stacked frames at 25 Hz
    a, _, _ = enc(video, torch.tensor([25]), audio=fbank[None])
    b, _, _ = enc(video, torch.tensor([25]), audio=torch.zeros(1, 25, 104))
    assert a.shape == (1, 25, 32) and not torch.allclose(a, b)  # the audio is heard
    c, _, _ = enc(video, torch.tensor([25]), audio=torch.cat([fbank, torch.randn(3, 104)])[None])
    torch.testing.assert_close(a, c)  # longer audio is cut to the video's frames
    with pytest.raises(ValueError, match="needs audio"):
        enc(video, torch.tensor([25]))
    with pytest.raises(ValueError, match="audiovisual"):
        tiny()(video, torch.tensor([25]), audio=fbank[None])
    assert avhubert_fbank(torch.randn(16000), num_frames=30).shape == (30, 104)


def test_frozen_by_default_and_stays_in_eval_mode():
    enc = tiny()
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training
    trainable = tiny(frozen=False).train()
    assert all(p.requires_grad for p in trainable.parameters()) and trainable.model.training


def test_lora_on_q_and_v_only():
    enc = tiny(lora_r=4, lora_alpha=8)
    trainable = sorted(n for n, p in enc.named_parameters() if p.requires_grad)
    assert len(trainable) == 2 * 2 * 2  # layers x (q, v) x (A, B)
    assert all(("q_proj.lora_" in n or "v_proj.lora_" in n) for n in trainable)
    enc.eval()
    video = torch.randn(1, 6, CROP * CROP)
    out, _, _ = enc(video, torch.tensor([6]))
    out.sum().backward()
    assert all(p.grad is not None for n, p in enc.named_parameters() if "lora_B" in n)
    with pytest.raises(ValueError, match="frozen"):
        tiny(lora_r=4, frozen=False)


def test_checkpoint_weights_marked_and_left_out_of_model_checkpoints(tmp_path):
    src = tiny()
    torch.save(official_checkpoint({k[len("model."):]: v for k, v in src.state_dict().items()}, src.arch),
               tmp_path / "ckpt.pt")
    enc = AVHubertEncoder(input_size=CROP * CROP, checkpoint=str(tmp_path / "ckpt.pt"), lora_r=2)
    skipped = frozen_pretrained_keys(enc)
    assert "model.encoder.layers.0.fc1.weight" in skipped
    assert "model.encoder.layers.0.self_attn.q_proj.base_layer.weight" in skipped
    assert not any("lora_" in k for k in skipped)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=1000), "crop_size"),
    (dict(modality="audio"), "modality"),
    (dict(encoder_embed_dim=30), "divisible"),
    (dict(modality_fuse="sum"), "modality_fuse"),
    (dict(lora_r=-1), "lora_r"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AVHubertEncoder(**{"input_size": CROP * CROP, **TINY, **kwargs})


def test_bad_input_shapes():
    enc = tiny().eval()
    with pytest.raises(ValueError, match="expected frames"):
        enc(torch.randn(1, 5, 100), torch.tensor([5]))
    with pytest.raises(ValueError, match="ilens"):
        enc(torch.randn(1, 5, CROP * CROP), torch.tensor([0]))
