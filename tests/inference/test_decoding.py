"""Decoding options of the recognizer on a tiny model: greedy and beam search give each utterance
the hypothesis it gets alone, max_new_tokens follows the duration, output is deterministic."""
import math

import numpy as np
import pytest

from espnet_omni_avsr.recognizer import CHARS_PER_SECOND, TOKEN_MARGIN, AVSRRecognizer


def _utterances():
    rng = np.random.default_rng(0)
    out = []
    for seconds in (0.4, 1.2, 0.8):
        out.append(dict(speech=(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32),
                        video=rng.integers(0, 256, (int(seconds * 25), 96, 96), dtype=np.uint8)))
    return out


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("task", ["avsr", "vsr"])
def test_batched_equals_one_at_a_time(multitask_exp, beam_size, task):
    rec = AVSRRecognizer.from_pretrained(multitask_exp, beam_size=beam_size, length_penalty=0.5)
    utts = _utterances()
    batched = rec.decode(utts, task)
    # budgets from each utterance's duration: the rows end at different lengths
    assert batched["max_new_tokens"] == [rec.budget(s) for s in (0.4, 1.2, 0.8)]
    assert len(set(batched["max_new_tokens"])) == 3
    alone = [rec.decode([u], task)["text"][0] for u in utts]
    assert batched["text"] == alone
    assert len(set(alone)) > 1  # not one repeated string: the comparison means something
    assert all(0 < n <= budget for n, budget in zip(batched["generated_tokens"], batched["max_new_tokens"]))
    assert rec.decode(utts, task)["text"] == batched["text"]  # deterministic


def test_fixed_max_new_tokens_and_options_reach_generate(multitask_exp, monkeypatch):
    rec = AVSRRecognizer.from_pretrained(multitask_exp, beam_size=2, max_new_tokens=3, length_penalty=1.5)
    seen = {}
    generate_ids = rec.model.generate_ids

    def spy(**kwargs):
        seen.update(kwargs)
        return generate_ids(**kwargs)

    monkeypatch.setattr(rec.model, "generate_ids", spy)
    out = rec.decode(_utterances()[:2], "asr")
    assert out["max_new_tokens"] == [3, 3]
    assert seen["max_new_tokens"] == 3 and seen["num_beams"] == 2 and seen["length_penalty"] == 1.5
    assert "logits_processor" not in seen and seen["task"] == "asr"
    assert all(n <= 3 for n in out["generated_tokens"])


def test_budget_rule(multitask_exp):
    rec = AVSRRecognizer.from_pretrained(multitask_exp)
    k = CHARS_PER_SECOND * rec.tokens_per_char
    assert 0.05 < rec.tokens_per_char < 1.5
    for seconds in (0.0, 1.0, 29.9):
        assert rec.budget(seconds) == math.ceil(seconds * k - 1e-9) + TOKEN_MARGIN
    assert rec.budget(29.9) > 32  # a long segment is not cut at the old fixed 32 tokens
    assert rec.conditions_of("avsr") == {"audio": 4, "video": 2}
    rec.rates = {"audio": 16, "video": 5}
    assert rec.conditions_of("avsr") == {"audio": 16, "video": 5}
    rec.check_rates()
    rec.rates = {"audio": 8}
    with pytest.raises(ValueError, match=r"audio rate 8 is not one this branch was trained at: \[4, 16\]"):
        rec.check_rates()


def test_a_file_that_is_not_an_archive(tmp_path):
    bad = tmp_path / "model.tar"
    bad.write_bytes(b"not a tar file at all" * 10)
    with pytest.raises(ValueError, match=r"model\.tar is not a model archive"):
        AVSRRecognizer.from_pretrained(bad, cache_dir=tmp_path / "cache")
