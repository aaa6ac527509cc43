"""AVHubertFbankFrontend: 25 Hz frame counts for odd lengths, per-utterance features, padding invariance."""
import math

import pytest
import torch

from espnet_omni_avsr.frontends.avhubert_fbank import avhubert_fbank
from espnet_omni_avsr.frontends.avhubert_fbank_frontend import AVHubertFbankFrontend


def expected_frames(samples: int) -> int:
    """25 ms windows every 10 ms at 16 kHz (the last partial window dropped), 4 stacked per frame."""
    return math.ceil((1 + (samples - 400) // 160) / 4)


@pytest.mark.parametrize("samples", [400, 401, 559, 560, 1040, 9601, 16000, 16001, 16639, 23999])
def test_frame_count_and_rate_for_odd_lengths(samples):
    torch.manual_seed(0)
    feats, lengths = AVHubertFbankFrontend()(torch.randn(1, samples) * 0.1, torch.tensor([samples]))
    assert feats.shape == (1, expected_frames(samples), 104) and lengths.tolist() == [expected_frames(samples)]
    # one frame per 640 samples (40 ms, the video's 25 fps), within a frame of the exact count
    assert abs(int(lengths) - samples / 640) <= 1
    assert feats.dtype == torch.float32


def test_rows_are_their_own_features_and_padding_does_not_change_them():
    torch.manual_seed(0)
    lengths = torch.tensor([16000, 9601, 4321])
    speech = torch.randn(3, 16000) * 0.1
    junk = speech.clone()
    for b, n in enumerate(lengths.tolist()):
        junk[b, n:] = 7.0  # whatever lies past a row's length must not matter
    front = AVHubertFbankFrontend()
    assert front.output_size() == 104
    feats, out_lengths = front(junk, lengths)
    assert out_lengths.tolist() == [expected_frames(n) for n in lengths.tolist()]
    for b, n in enumerate(lengths.tolist()):
        T = int(out_lengths[b])
        alone, _ = front(speech[b : b + 1, :n], lengths[b : b + 1])
        assert torch.equal(feats[b, :T], alone[0])
        assert torch.equal(feats[b, :T], avhubert_fbank(speech[b, :n]))
        assert torch.all(feats[b, T:] == 0)
    # each stacked frame is layer-normalised over its 104 values (AV-HuBERT's loader)
    row = feats[0, : int(out_lengths[0])]
    torch.testing.assert_close(row.mean(-1), torch.zeros(row.size(0)), atol=1e-5, rtol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="sampling rate"):
        AVHubertFbankFrontend(fs=0)
    front = AVHubertFbankFrontend()
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        front(torch.randn(1, 2, 800), torch.tensor([800]))
    with pytest.raises(ValueError, match="lengths"):
        front(torch.randn(1, 800), torch.tensor([801]))
    with pytest.raises(ValueError, match="shorter than one 25 ms frame"):
        front(torch.randn(2, 800), torch.tensor([800, 399]))
