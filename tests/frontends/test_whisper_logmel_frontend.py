import numpy as np
import pytest
import torch

from espnet_omni_avsr.frontends.whisper_logmel_frontend import WhisperLogMelFrontend

SR = 16000


def speech_like(n_samples: int, seed: int = 0) -> np.ndarray:
    """Two tones, one amplitude-modulated, plus noise: a non-silent, non-stationary clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1330 * t) * np.sin(2 * np.pi * 3 * t)
    return (x + 0.05 * rng.standard_normal(n_samples)).astype(np.float32)


@pytest.mark.parametrize("normalize", [False, True])
def test_matches_whisper_feature_extractor_30s(normalize):
    from transformers import WhisperFeatureExtractor

    n = 52817  # 3.3 s, not a multiple of the hop
    x = speech_like(n)
    ref = WhisperFeatureExtractor(feature_size=80)(
        x, sampling_rate=SR, return_tensors="pt", do_normalize=normalize
    ).input_features[0].T  # (3000, 80)
    frontend = WhisperLogMelFrontend(pad_to_30s=True, normalize_waveform=normalize)
    feats, lens = frontend(torch.from_numpy(x)[None], torch.tensor([n]))
    assert feats.shape == (1, 3000, 80)
    assert lens.tolist() == [n // 160]
    torch.testing.assert_close(feats[0], ref, atol=1e-4, rtol=0)


def test_true_length_equals_first_frames_of_30s_mode():
    n = 40123
    x = torch.from_numpy(speech_like(n, seed=1))[None]
    full, _ = WhisperLogMelFrontend(pad_to_30s=True)(x, torch.tensor([n]))
    short, lens = WhisperLogMelFrontend(pad_to_30s=False)(x, torch.tensor([n]))
    assert short.shape == (1, n // 160, 80) and lens.tolist() == [n // 160]
    torch.testing.assert_close(short[0], full[0, : n // 160], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_padding_invariance(pad_to_30s):
    frontend = WhisperLogMelFrontend(pad_to_30s=pad_to_30s)
    lengths = [24000, 7777, 150, 31000]
    batch = torch.full((len(lengths), max(lengths)), 0.7)  # padding that is not even zero
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.from_numpy(speech_like(n, seed=i))
    feats, lens = frontend(batch, torch.tensor(lengths))
    assert lens.tolist() == [n // 160 for n in lengths]
    assert feats.size(1) == (3000 if pad_to_30s else max(lengths) // 160)
    for i, n in enumerate(lengths):
        alone, _ = frontend(batch[i : i + 1, :n], torch.tensor([n]))
        t = n // 160
        torch.testing.assert_close(feats[i, :t], alone[0, :t], atol=1e-5, rtol=0)
        if not pad_to_30s:
            assert feats[i, t:].abs().sum() == 0


def test_clamp_uses_valid_frames_only():
    """A loud utterance next to a quiet one must not change the quiet one's dynamic-range clamp."""
    frontend = WhisperLogMelFrontend(normalize_waveform=False)
    quiet = torch.from_numpy(speech_like(8000)) * 1e-3
    batch = torch.zeros(2, 16000)
    batch[0] = torch.from_numpy(speech_like(16000)) * 10
    batch[1, :8000] = quiet
    feats, _ = frontend(batch, torch.tensor([16000, 8000]))
    alone, _ = frontend(quiet[None], torch.tensor([8000]))
    torch.testing.assert_close(feats[1, :50], alone[0], atol=1e-5, rtol=0)


def test_model_dir_settings(tiny_whisper_dir):
    frontend = WhisperLogMelFrontend(model_dir=tiny_whisper_dir)
    assert frontend.output_size() == 80 and frontend.n_fft == 400 and frontend.hop_length == 160
    with pytest.raises(ValueError, match="n_mels=128"):
        WhisperLogMelFrontend(model_dir=tiny_whisper_dir, n_mels=128)
    assert WhisperLogMelFrontend(n_mels=128).output_size() == 128
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        WhisperLogMelFrontend(model_dir="/nonexistent/whisper")


def test_invalid_arguments():
    assert WhisperLogMelFrontend(fs="16k").sampling_rate == SR
    with pytest.raises(ValueError, match="8000"):
        WhisperLogMelFrontend(fs=8000)
    frontend = WhisperLogMelFrontend(pad_to_30s=True)
    n = 30 * SR + 1
    with pytest.raises(ValueError, match=str(n)):
        frontend(torch.zeros(1, n), torch.tensor([n]))
    # longer than 30 s is fine on the true length
    feats, lens = WhisperLogMelFrontend()(torch.zeros(1, n), torch.tensor([n]))
    assert feats.shape == (1, 3000, 80) and lens.tolist() == [3000]


def test_normalization_is_gain_invariant():
    frontend = WhisperLogMelFrontend(normalize_waveform=True)
    x = torch.from_numpy(speech_like(16000))[None]
    a, _ = frontend(x, torch.tensor([16000]))
    b, _ = frontend(x * 37.0 + 0.2, torch.tensor([16000]))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
