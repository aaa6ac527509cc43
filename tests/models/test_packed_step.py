"""model_conf.pack_sequences: a multi-task, matryoshka training step (4 AVSR rate pairs, 2 ASR and
2 VSR rates per utterance) gives the padded step's loss, statistics and gradients when its LLM
passes run packed, for eager and sdpa attention, with LoRA (shared and task-specific), with MoME
and with a loss term that reads the hidden states; and packing is refused where it cannot be right.
"""
import pytest
import torch

from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch

# float32 on the CPU: the packed pass reorders sums only (attention over a row instead of a
# padded sequence). Losses and statistics: elementwise rtol 1e-5, atol 1e-6. Gradients: per
# parameter, |g_packed - g_padded| <= 1e-5 * max(|g_padded|, 1e-3) in L2 norm (measured: <= 2e-6
# relative; the floor is for gradients that are zero up to rounding, e.g. an attention key bias)
RTOL, ATOL = 1e-5, 1e-6
GRAD_RTOL, GRAD_FLOOR = 1e-5, 1e-3


def _config(llm, whisper, attn, adapter="shared_lora", losses=None, **model_conf):
    config = tiny_config(llm, whisper)
    config["audio_compressor_conf"] = {}
    config["video_compressor_conf"] = {}
    config.update(audio_rates=[2, 4], video_rates=[1, 2])
    config["model_conf"] = dict(tasks=["avsr", "asr", "vsr"], task_weights=[1.0, 1.0, 1.5],
                                rate_sampling="all_pairs", batched_tasks=True, **model_conf)
    config["decoder_conf"] = dict(config["decoder_conf"], attn_implementation=attn)
    config["llm_adapter"] = adapter
    if adapter == "mome":
        config["llm_adapter_conf"] = dict(num_experts=4, top_k=2, bottleneck=4, placement="ffn")
    if losses is not None:
        config["losses"] = losses
    return config


def _step(model, batch):
    """Loss, statistics and {name: gradient} of one seeded training step."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss, stats, _ = model(**batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), {k: v.detach() for k, v in stats.items()}, grads


def _pair(llm, whisper, attn, adapter="shared_lora", losses=None, **packing):
    """The padded model and the packed one, with the same weights (LoRA B made non-zero, so that
    LoRA changes the LLM and its A matrices get gradients)."""
    torch.manual_seed(0)
    padded, _ = build(_config(llm, whisper, attn, adapter, losses))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in padded.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    torch.manual_seed(0)
    packed, _ = build(_config(llm, whisper, attn, adapter, losses, pack_sequences=True, **packing))
    packed.load_state_dict(padded.state_dict())
    return padded, packed


def _assert_same_step(padded, packed, batch):
    loss_p, stats_p, grads_p = _step(padded, batch)
    loss_k, stats_k, grads_k = _step(packed, batch)
    torch.testing.assert_close(loss_k, loss_p, rtol=RTOL, atol=ATOL)
    assert sorted(stats_k) == sorted(stats_p)
    for k in stats_p:
        torch.testing.assert_close(stats_k[k], stats_p[k], rtol=RTOL, atol=ATOL, msg=lambda m: f"{k}: {m}")
    assert sorted(grads_k) == sorted(grads_p) and any("lora_A" in n or "mome" in n for n in grads_p)
    for n, want in grads_p.items():
        error = float((grads_k[n] - want).norm())
        assert error <= GRAD_RTOL * max(float(want.norm()), GRAD_FLOOR), (n, error, float(want.norm()))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("adapter", ["shared_lora", "task_lora"])
def test_packed_step_equals_padded_step(tiny_llm_dir, tiny_whisper_dir, attn, adapter):
    padded, packed = _pair(tiny_llm_dir, tiny_whisper_dir, attn, adapter)
    batch = make_batch(padded.decoder.tokenizer, n=3)
    _assert_same_step(padded, packed, batch)
    assert packed.decoder._packing_verified  # the probe ran on the first packed pass


def test_packed_step_with_mome_and_a_short_row_limit(tiny_llm_dir, tiny_whisper_dir):
    """MoME's token selection follows the packed layout; pack_length below the longest prompt
    gives those prompts rows of their own."""
    padded, packed = _pair(tiny_llm_dir, tiny_whisper_dir, "eager", "mome", pack_length=20)
    _assert_same_step(padded, packed, make_batch(padded.decoder.tokenizer, n=3))


def test_packed_step_with_hidden_state_loss(tiny_llm_dir, tiny_whisper_dir):
    """A loss term on the hidden states (sink decorrelation) reads them unpacked, as padded."""
    losses = [{"type": "llm_cross_entropy"}, {"type": "sink_decorrelation", "weight": 10.0}]
    padded, packed = _pair(tiny_llm_dir, tiny_whisper_dir, "sdpa", losses=losses)
    _assert_same_step(padded, packed, make_batch(padded.decoder.tokenizer, n=2))


def _llm_input_shape(model, batch):
    """(rows, positions) of the last LLM pass of an eval step."""
    seen = []
    hook = model.decoder.base_model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        model.eval()
        with torch.no_grad():
            model(**batch)
    finally:
        hook.remove()
    return seen[-1]


def test_packing_processes_fewer_llm_positions(tiny_llm_dir, tiny_whisper_dir):
    """One pass of 24 sequences (3 utterances x 8 jobs): padded, 24 rows of the longest prompt;
    packed, fewer positions in rows of at most twice that length."""
    padded, packed = _pair(tiny_llm_dir, tiny_whisper_dir, "eager")
    batch = make_batch(padded.decoder.tokenizer, n=3)
    rows, n = _llm_input_shape(padded, batch)
    packed_rows, width = _llm_input_shape(packed, batch)
    assert rows == 24 and packed_rows * width < rows * n and width <= 2 * n


def test_refused_for_an_attention_without_packing(tiny_llm_dir, tiny_whisper_dir):
    """An attention implementation whose masking transformers does not build (paged eager: no
    mask function at all) is refused when the model is built."""
    with pytest.raises(ValueError, match=r"'paged\|eager' does not detect packed sequences"):
        build(_config(tiny_llm_dir, tiny_whisper_dir, "paged|eager", pack_sequences=True))


def test_refused_where_the_masking_misses_the_packing(tiny_llm_dir, tiny_whisper_dir, monkeypatch):
    """A model whose mask creation does not detect packing (here: transformers' detection switched
    off) is stopped by the probe on the first packed pass, before anything trains on it."""
    import transformers.masking_utils as masking

    padded, packed = _pair(tiny_llm_dir, tiny_whisper_dir, "sdpa")
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    batch = make_batch(packed.decoder.tokenizer, n=2)
    with pytest.raises(RuntimeError, match="does not keep packed sequences apart"):
        packed(**batch)
    assert all(p.grad is None for p in packed.parameters())
    padded(**batch)  # the padded model does not depend on the detection


def test_pack_length_needs_pack_sequences(tiny_llm_dir, tiny_whisper_dir):
    with pytest.raises(ValueError, match="needs pack_sequences: true"):
        build(_config(tiny_llm_dir, tiny_whisper_dir, "eager", pack_length=64))


def test_attention_weights_are_refused_when_packed(tiny_llm_dir, tiny_whisper_dir):
    _, packed = _pair(tiny_llm_dir, tiny_whisper_dir, "eager")
    tokens = packed.modality_tokens(["asr"], make_batch(packed.decoder.tokenizer, n=2))
    prompt = packed.prompt.build(packed.decoder.embed, "asr", tokens)
    with pytest.raises(ValueError, match="attention weights come from padded passes only"):
        packed.decoder(prompt, output_attentions=True, packer=packed.packer)
