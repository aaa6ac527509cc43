"""AVHubertFusion: AV-HuBERT's audio-visual mode hears the audio, aligns it to the video frames per
utterance, is padding invariant, and trains or stays frozen as configured."""
import pytest
import torch

from espnet_omni_avsr.frontends.avhubert_fbank_frontend import AVHubertFbankFrontend
from espnet_omni_avsr.frontends.mouth_roi_frontend import MouthROIFrontend
from espnet_omni_avsr.fusion.avhubert_fusion import AVHubertFusion

CROP = 24
TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_pos=8, conv_pos_groups=4)
ATOL = 1e-5  # fp32: the same arithmetic on a padded batch, up to the order of summation


def tiny(**kwargs):
    torch.manual_seed(0)
    return AVHubertFusion(104, CROP * CROP, **{**TINY, **kwargs})


def streams(seconds=(1.0, 0.6, 0.44), seed=0):
    """Front-end features of random audio and mouth video: (audio, a_len, video, v_len)."""
    g = torch.Generator().manual_seed(seed)
    samples = torch.tensor([int(s * 16000) for s in seconds])
    frames = torch.tensor([int(s * 25) for s in seconds])
    speech = torch.randn(len(seconds), int(samples.max()), generator=g) * 0.1
    video = torch.randint(0, 256, (len(seconds), int(frames.max()), CROP + 4, CROP + 4), generator=g, dtype=torch.uint8)
    audio, a_len = AVHubertFbankFrontend()(speech, samples)
    video, v_len = MouthROIFrontend(crop_size=CROP).eval()(video, frames)
    return audio, a_len, video, v_len


def test_output_shape_lengths_and_zero_past_the_video():
    fusion = tiny().eval()
    assert fusion.output_size() == 32
    audio, a_len, video, v_len = streams()
    out, lengths = fusion(audio, a_len, video, v_len)
    assert out.shape == (3, int(v_len.max()), 32) and torch.equal(lengths, v_len)
    for b in range(3):
        assert torch.all(out[b, int(v_len[b]):] == 0)


def test_the_audio_reaches_it():
    """Other audio, the same video: other fused features (and other video, the same audio, too)."""
    fusion = tiny().eval()
    audio, a_len, video, v_len = streams()
    other_audio, _, other_video, _ = streams(seed=1)
    with torch.no_grad():
        out, _ = fusion(audio, a_len, video, v_len)
        heard, _ = fusion(other_audio, a_len, video, v_len)
        seen, _ = fusion(audio, a_len, other_video, v_len)
        silent, _ = fusion(torch.zeros_like(audio), a_len, video, v_len)
    for b in range(3):
        n = int(v_len[b])
        for changed in (heard, seen, silent):
            assert (changed[b, :n] - out[b, :n]).abs().max() > 1e-3


def test_an_utterance_alone_and_inside_a_padded_batch():
    fusion = tiny().eval()
    audio, a_len, video, v_len = streams()
    junk_audio, junk_video = audio.clone(), video.clone()
    for b in range(3):  # what lies in the padding must not matter
        junk_audio[b, int(a_len[b]):] = 5.0
        junk_video[b, int(v_len[b]):] = 5.0
    with torch.no_grad():
        batch, _ = fusion(junk_audio, a_len, junk_video, v_len)
        for b in range(3):
            ta, tv = int(a_len[b]), int(v_len[b])
            alone, n = fusion(audio[b : b + 1, :ta], a_len[b : b + 1], video[b : b + 1, :tv], v_len[b : b + 1])
            assert int(n) == tv
            torch.testing.assert_close(batch[b, :tv], alone[0], atol=ATOL, rtol=ATOL)


def test_audio_is_cut_or_zero_padded_to_the_video_frames():
    fusion = tiny().eval()
    audio, a_len, video, v_len = streams(seconds=(1.0,))
    T = int(v_len[0])
    assert int(a_len[0]) == T == 25
    with torch.no_grad():
        ref, _ = fusion(audio, a_len, video, v_len)
        longer = torch.cat([audio, torch.randn(1, 3, 104)], dim=1)  # 3 frames more sound than picture
        cut, _ = fusion(longer, a_len + 3, video, v_len)
        short = audio[:, :20]  # the sound ends 5 frames before the picture
        padded, _ = fusion(short, torch.tensor([20]), video, v_len)
        zeros_after, _ = fusion(torch.cat([short, torch.zeros(1, 5, 104)], 1), a_len, video, v_len)
    torch.testing.assert_close(cut, ref, atol=0, rtol=0)
    torch.testing.assert_close(padded, zeros_after, atol=0, rtol=0)


def test_frozen_runs_without_gradients_and_in_eval_mode_while_training():
    """Frozen (the default): no parameter trains, the network stays in eval mode inside a training
    model, and training mode gives the eval output (no modality dropout, fixed BatchNorm)."""
    fusion = tiny()
    assert not any(p.requires_grad for p in fusion.parameters())
    audio, a_len, video, v_len = streams()
    fusion.train()
    assert not fusion.encoder.model.training
    out, _ = fusion(audio, a_len, video, v_len)
    assert not out.requires_grad
    with torch.no_grad():
        ref, _ = fusion.eval()(audio, a_len, video, v_len)
    assert torch.equal(out, ref)


def test_trainable_and_lora_get_gradients():
    audio, a_len, video, v_len = streams()
    fusion = tiny(frozen=False).train()
    out, _ = fusion(audio, a_len, video, v_len)
    out.pow(2).sum().backward()
    for name in ("feature_extractor_audio.proj.weight", "feature_extractor_video.proj.weight",
                 "post_extract_proj.weight", "encoder.layers.1.fc2.weight"):
        grad = dict(fusion.encoder.model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    lora = tiny(lora_r=2, lora_alpha=4)
    out, _ = lora(audio, a_len, video, v_len)
    out.sum().backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_B" in n)
    assert all(p.grad is None for n, p in lora.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("audio_size, kwargs, match", [
    (104, dict(modality="video"), "set by the fusion"),
    (104, dict(input_size=CROP * CROP), "set by the fusion"),
    (104, dict(audio_feat_dim=80), "reads 80"),
    (80, {}, "reads 104"),  # Whisper's log-mel, not AV-HuBERT's filterbanks
])
def test_invalid_arguments(audio_size, kwargs, match):
    with pytest.raises(ValueError, match=match):
        AVHubertFusion(audio_size, CROP * CROP, **{**TINY, **kwargs})
