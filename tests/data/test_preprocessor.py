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
