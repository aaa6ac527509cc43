"""Early fusion: the 50 -> 25 Hz conv, alignment to the video frames, the three joins, padding invariance."""
import pytest
import torch

from espnet_omni_avsr.fusion.abs_fusion import AudioToVideoRate
from espnet_omni_avsr.fusion.add_fusion import AddFusion
from espnet_omni_avsr.fusion.concat_fusion import ConcatFusion
from espnet_omni_avsr.fusion.cross_attention_fusion import CrossAttentionFusion

A, V = 6, 4


@pytest.mark.parametrize("audio_len, video_len, kept", [(9, 10, 4), (8, 4, 4), (7, 2, 2), (1, 3, 0), (20, 10, 10)])
def test_conv_output_length_for_odd_and_even_inputs(audio_len, video_len, kept):
    """floor(audio / 2) frames (an odd last frame is dropped), cut or zero-padded to the video length."""
    torch.manual_seed(0)
    conv = AudioToVideoRate(A, 3)
    y, n = conv(torch.randn(1, audio_len, A), torch.tensor([audio_len]), torch.tensor([video_len]))
    assert y.shape == (1, video_len, 3)
    assert int(n) == kept
    assert torch.all(y[0, kept:] == 0)
    if kept:
        assert y[0, :kept].abs().sum() > 0


def test_conv_reads_disjoint_pairs():
    """Output frame t is the conv of audio frames 2t and 2t + 1 only."""
    torch.manual_seed(0)
    conv = AudioToVideoRate(A, 3)
    x = torch.randn(1, 8, A)
    y, _ = conv(x, torch.tensor([8]), torch.tensor([4]))
    x2 = x.clone()
    x2[0, 2:4] += 5.0  # the pair of output frame 1
    y2, _ = conv(x2, torch.tensor([8]), torch.tensor([4]))
    changed = (y2 - y).abs().sum(-1)[0] > 1e-6
    assert changed.tolist() == [False, True, False, False]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    a_len, v_len = torch.tensor([12, 7, 4]), torch.tensor([6, 4, 2])
    audio = torch.randn(3, 12, A, generator=g)
    video = torch.randn(3, 6, V, generator=g)
    return audio, a_len, video, v_len


@pytest.mark.parametrize("make, size", [
    (lambda: ConcatFusion(A, V), A + V),
    (lambda: ConcatFusion(A, V, audio_channels=2), 2 + V),
    (lambda: AddFusion(A, V), V),
    (lambda: AddFusion(A, V, output_size=8), 8),
    (lambda: CrossAttentionFusion(A, V, num_heads=2), V),
])
def test_fusion_is_padding_invariant_and_zero_past_length(make, size):
    torch.manual_seed(0)
    fusion = make().eval()
    audio, a_len, video, v_len = _batch()
    junk_audio, junk_video = audio.clone(), video.clone()
    for b in range(3):  # garbage in the padding must not matter
        junk_audio[b, int(a_len[b]):] = 100.0
        junk_video[b, int(v_len[b]):] = -100.0
    fused, lengths = fusion(junk_audio, a_len, junk_video, v_len)
    assert fusion.output_size() == size and fused.shape == (3, 6, size)
    assert lengths.tolist() == v_len.tolist()
    for b in range(3):
        na, nv = int(a_len[b]), int(v_len[b])
        alone, _ = fusion(audio[b:b + 1, :na], a_len[b:b + 1], video[b:b + 1, :nv], v_len[b:b + 1])
        assert torch.allclose(fused[b, :nv], alone[0], atol=1e-5)
        assert torch.all(fused[b, nv:] == 0)


def test_concat_keeps_the_video_features_as_they_are():
    fusion = ConcatFusion(A, V)
    audio, a_len, video, v_len = _batch()
    fused, _ = fusion(audio, a_len, video, v_len)
    assert torch.equal(fused[0, :, A:], video[0])


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="video_size"):
        ConcatFusion(A, 0)
    with pytest.raises(ValueError, match="divisible"):
        CrossAttentionFusion(A, 6, num_heads=4)
    with pytest.raises(ValueError, match=r"expected audio of shape \(B, T, 6\)"):
        ConcatFusion(A, V)(torch.randn(1, 4, 5), torch.tensor([4]), torch.randn(1, 2, V), torch.tensor([2]))
