"""conf/mms_llama/mms_avhubert_small.yaml through the task's registry: AV-HuBERT's audio-visual mode as
the fusion trains one step, hears the audio, is padding invariant, and stays unchanged when frozen."""
import pytest
import torch

from espnet_omni_avsr.names import FUSED

from tests.models import golden
from tests.models.conftest import build
from tests.models.test_avsr_llm_model import make_batch, select

CONF = "mms_llama/mms_avhubert_small"
AVHUBERT = "fused.fusion.encoder."


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return golden.tiny_dirs(str(tmp_path_factory.mktemp("avhubert_fused")))


def built(dirs, **overrides):
    torch.manual_seed(0)
    model, _ = build(golden.tiny_config(CONF, overrides, dirs))
    return model


@pytest.fixture(scope="module")
def model(dirs):
    return built(dirs)


def test_the_config_trains_one_step(model):
    """Loss finite; every trainable parameter (AV-HuBERT, Q-Former, projector, LoRA) gets a gradient
    and the step moves AV-HuBERT; no branch holds an encoder of its own."""
    assert model.audio.encoder is None and model.video.encoder is None
    assert model.task_streams("avsr") == (FUSED,)
    batch = make_batch(model.decoder.tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(AVHUBERT)}
    model.train()
    model.zero_grad(set_to_none=True)
    loss, stats, _ = model(**batch)
    assert torch.isfinite(loss).all() and torch.isfinite(stats["acc"]).all()
    loss.sum().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert not [n for n, p in trainable.items() if p.grad is None]
    for part in (AVHUBERT + "model.feature_extractor_audio", AVHUBERT + "model.feature_extractor_video.resnet",
                 AVHUBERT + "model.encoder.layers", "fused.compressors.q3", "fused.projectors.q3", "lora_"):
        assert any(part in n and p.grad.abs().sum() > 0 for n, p in trainable.items()), part
    torch.optim.AdamW(trainable.values(), lr=1e-3).step()
    model.zero_grad(set_to_none=True)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_the_audio_reaches_the_fused_stream(dirs):
    """Other audio, the same video: other fused features, so other LLM tokens; the same audio again:
    the same features exactly. (The random Q-Former, initialised as BLIP-2's with std 0.02, passes
    little of its input on before it trains: the tokens differ, by less than the features do.)"""
    model = built(dirs).eval()  # its own model: the module's is trained by the first test
    batch = make_batch(model.decoder.tokenizer)
    other = dict(batch, speech=torch.randn(batch["speech"].shape, generator=torch.Generator().manual_seed(5)) * 0.1)
    with torch.no_grad():
        feats, lengths, _ = model.encode(["avsr"], batch)[FUSED]
        again, _, _ = model.encode(["avsr"], batch)[FUSED]
        heard, _, _ = model.encode(["avsr"], other)[FUSED]
        tokens, n = model.modality_tokens(["avsr"], batch)[FUSED]
        heard_tokens, _ = model.modality_tokens(["avsr"], other)[FUSED]
    for b in range(len(lengths)):
        T, N = int(lengths[b]), int(n[b])
        assert torch.equal(feats[b, :T], again[b, :T])
        assert (feats[b, :T] - heard[b, :T]).abs().max() > 1e-4  # float32 round-off is under 1e-6 here
        assert not torch.equal(tokens[b, :N], heard_tokens[b, :N])


def test_an_utterance_alone_and_inside_a_padded_batch(model):
    model.eval()
    batch = make_batch(model.decoder.tokenizer, n=3)
    with torch.no_grad():
        tokens, lengths = model.modality_tokens(["avsr"], batch)[FUSED]
        for b in range(3):
            alone, n = model.modality_tokens(["avsr"], select(batch, b))[FUSED]
            assert int(n) == int(lengths[b])
            torch.testing.assert_close(alone[0, : int(n)], tokens[b, : int(n)], atol=1e-4, rtol=1e-4)


def test_a_frozen_avhubert_with_lora_is_unchanged_by_a_step(dirs):
    model = built(dirs, **{"fusion_conf.frozen": True, "fusion_conf.lora_r": 2, "fusion_conf.lora_alpha": 4})
    frozen = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]
              if n.startswith(AVHUBERT) and "lora_" not in n}
    assert frozen and not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(AVHUBERT) and "lora_B" in n}
    model.train()
    assert not model.fused.fusion.encoder.model.training  # fixed BatchNorm statistics, no dropout
    loss, _, _ = model(**make_batch(model.decoder.tokenizer))
    loss.sum().backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    after = dict([*model.named_parameters(), *model.named_buffers()])
    assert all(torch.equal(after[n], t) for n, t in frozen.items())
    assert any(not torch.equal(after[n], t) for n, t in lora.items())
