import pytest
import torch

from espnet_omni_avsr.decoders.prompt import TokenType as T
from espnet_omni_avsr.losses.sink_decorrelation import SinkDecorrelation
from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch

# BOS <audio> a a </audio> instruction | transcript EOS PAD
TYPES = torch.tensor([[T.BOS, T.MODALITY_OPEN, T.AUDIO, T.AUDIO, T.MODALITY_CLOSE, T.INSTRUCTION, T.TRANSCRIPT,
                       T.EOS, T.PAD]])
N_PREFIX = 6


def _layers(*hidden):
    """A hidden_states tuple: the embedding output, the given layers, the final output."""
    z = torch.zeros_like(hidden[0])
    return (z, *hidden, z)


def test_orthogonal_gives_zero_and_identical_gives_one():
    d = 16
    eye = torch.eye(d)[None, : TYPES.size(1)]  # every position orthogonal to BOS
    same = torch.ones(1, TYPES.size(1), d)
    loss = SinkDecorrelation()
    assert loss.compute(_layers(eye), TYPES) == pytest.approx(0.0, abs=1e-7)
    assert loss.compute(_layers(same), TYPES) == pytest.approx(1.0)
    half = eye.clone()
    half[0, 2] = eye[0, 0]  # one of the 5 prefix positions after BOS aligned with BOS
    assert loss.compute(_layers(half), TYPES) == pytest.approx(1 / 5)


def test_transcript_eos_and_padding_do_not_count():
    d = 16
    h = torch.eye(d)[None, : TYPES.size(1)].clone()
    h[0, N_PREFIX:] = h[0, 0]  # transcript, EOS and the pad all look like BOS
    loss = SinkDecorrelation()
    assert loss.compute(_layers(h), TYPES) == pytest.approx(0.0, abs=1e-7)
    # The official code pads modality tokens inside the prefix and averages over them too. A second
    # row with 7 padded positions that all look like its BOS: excluded here, counted there.
    types = torch.cat([TYPES, torch.tensor([[T.BOS, T.AUDIO] + [T.PAD] * 7])])
    hp = torch.cat([h, torch.ones(1, TYPES.size(1), d)])
    ours = loss.compute(_layers(hp), types)
    assert ours == pytest.approx(1 / 6)  # row 0: 5 positions at 0; row 1: 1 position at 1
    naive = (0 * 5 + 1.0 * 8) / 13  # row 1's pads counted as prefix positions
    assert ours != pytest.approx(naive)


def test_gradient_reaches_only_the_prefix():
    h = torch.randn(1, TYPES.size(1), 8, requires_grad=True)
    SinkDecorrelation().compute(_layers(h), TYPES).backward()
    assert h.grad[0, :N_PREFIX].abs().sum(-1).gt(0).all()
    assert h.grad[0, N_PREFIX:].abs().sum() == 0


def test_layer_range_is_honoured():
    h1, h2 = torch.randn(1, TYPES.size(1), 8), torch.ones(1, TYPES.size(1), 8)
    hidden = _layers(h1, h2)  # hidden states 1 and 2 are intermediate
    only_second = SinkDecorrelation(layers=[2, 2]).compute(hidden, TYPES)
    assert only_second == pytest.approx(1.0)
    both = SinkDecorrelation().compute(hidden, TYPES)
    assert both == pytest.approx((SinkDecorrelation(layers=[1, 1]).compute(hidden, TYPES) + 1.0) / 2)
    with pytest.raises(ValueError, match="not an intermediate layer"):
        SinkDecorrelation(layers=[1, 3]).compute(hidden, TYPES)
    with pytest.raises(ValueError, match=r"\[first, last\]"):
        SinkDecorrelation(layers=[2, 1])


def test_without_bos_the_first_prefix_position_is_the_anchor():
    types = TYPES[:, 1:]  # Qwen2.5: the prompt starts at <audio>
    h = torch.eye(16)[None, : types.size(1)].clone()
    h[0, 3] = h[0, 0]  # </audio> aligned with <audio>
    assert SinkDecorrelation().compute(_layers(h), types) == pytest.approx(1 / 4)


def test_in_the_model_with_the_llm_loss(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["losses"] = [{"type": "llm_cross_entropy"}, {"type": "sink_decorrelation", "conf": {"layers": [1, 1]}}]
    model, _ = build(config)
    term = model.losses["sink_decorrelation"]
    assert term.weight == 1e4  # the official default when the config gives none
    model.eval()
    batch = make_batch(model.decoder.tokenizer)
    loss, stats, _ = model(**batch)
    assert 0 < stats["sink_decorrelation"] <= 1
    losses = model.losses
    model.losses = torch.nn.ModuleDict({"llm": losses["llm"]})
    llm_only, _, _ = model(**batch)
    model.losses = losses
    assert torch.allclose(loss, llm_only + 1e4 * stats["sink_decorrelation"], rtol=1e-5)
    model.train()
    loss, _, _ = model(**batch)
    loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    config["losses"][1]["conf"]["layers"] = [1, 2]  # the tiny LLM has 2 layers: hidden state 2 is its output
    with pytest.raises(ValueError, match="go past the LLM's layer 1"):
        build(config)
