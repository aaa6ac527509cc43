import numpy as np
import pytest

from espnet_omni_avsr.data.preprocessor import AVSRPreprocessor


@pytest.fixture(scope="module")
def pre(tiny_llm_dir):
    return AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, max_av_offset=0.2)


def test_tokenizes_lower_case_without_special_tokens(pre):
    out = pre("u1", {"text": "BIN  BLUE AT F"})
    assert out["text"].dtype == np.int64
    assert pre.tokenizer.decode(out["text"]) == "bin blue at f"
    assert pre.tokenizer.bos_token_id not in out["text"].tolist()


def test_empty_transcript_names_the_utterance(pre):
    with pytest.raises(ValueError, match="utterance u2: empty transcript"):
        pre("u2", {"text": "   "})


def test_audio_video_duration_mismatch(pre):
    data = {"speech": np.zeros(16000, np.float32), "video": np.zeros((50, 96, 96), np.uint8), "text": "a"}
    with pytest.raises(ValueError, match=r"utterance u3: audio lasts 1.00 s but video 2.00 s"):
        pre("u3", data)
    data["video"] = np.zeros((27, 96, 96), np.uint8)  # 1.08 s: within 0.2 s
    assert pre("u3", data)["speech"].dtype == np.float32


def test_stereo_audio_and_bad_video_shapes(pre):
    with pytest.raises(ValueError, match="utterance u4: audio must be mono"):
        pre("u4", {"speech": np.zeros((100, 2), np.float32)})
    with pytest.raises(ValueError, match=r"utterance u5: video must be \(frames, height, width\)"):
        pre("u5", {"video": np.zeros((0, 96, 96), np.uint8)})


@pytest.fixture
def noise_wav(tmp_path):
    import soundfile as sf

    path = tmp_path / "babble.wav"
    sf.write(path, np.random.default_rng(1).standard_normal(32000).astype(np.float32) * 0.1, 16000)
    return str(path)


def test_training_noise_at_the_drawn_snr(tiny_llm_dir, noise_wav):
    pre = AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=[0], noise_seed=3)
    clean = 0.1 * np.sin(np.arange(16000) / 5.0).astype(np.float32)  # quiet: no peak rescaling
    noisy = pre("u6", {"speech": clean.copy()})["speech"]
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert noisy.dtype == np.float32 and abs(snr) < 0.1


def test_clean_entries_and_validation_loader_stay_clean(tiny_llm_dir, noise_wav):
    clean = np.sin(np.arange(8000) / 5.0).astype(np.float32)
    always_clean = AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=["clean", None])
    assert np.array_equal(always_clean("u7", {"speech": clean.copy()})["speech"], clean)
    valid = AVSRPreprocessor(train=False, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=[0])
    assert np.array_equal(valid("u7", {"speech": clean.copy()})["speech"], clean)


def test_bad_noise_snr_entry(tiny_llm_dir, noise_wav):
    with pytest.raises(ValueError, match="noise_snrs: 'loud'"):
        AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=["loud"])
