"""decoder_conf.gradient_checkpointing with a frozen LLM and LoRA or MoME: the layers are recomputed
in backward, and the gradients are those of the run without checkpointing, for every LoRA strategy,
when a step holds several task passes (each task's own adapters; for MoME each pass's own token
selection), and when nothing before the LLM needs a gradient (frozen inputs)."""
import pytest
import torch

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import PromptLayout
from espnet_omni_avsr.tasks.avsr_llm_task import llm_adapter_choices

PASSES = (("asr", "audio"), ("vsr", "video"))


def _lora_grads(tiny_llm_dir, strategy, checkpointing, inputs_need_grad=True):
    """LoRA gradients of one step of two task passes -> ({name: grad}, MLP runs of layer 0)."""
    torch.manual_seed(0)
    adapter = llm_adapter_choices.get_class(strategy)(tasks=["asr", "vsr"], r=4, alpha=8, dropout=0.1)
    decoder = HFCausalLMDecoder(model_dir=tiny_llm_dir, adapter=adapter, gradient_checkpointing=checkpointing)
    decoder.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero; non-zero B makes the adapters change the activations
        for n, p in decoder.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    runs = [0]
    layer = decoder.base_model.get_decoder().layers[0]
    layer.mlp.register_forward_pre_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    loss = 0.0
    for task, modality in PASSES:
        tokens = {modality: (torch.randn(2, 12, decoder.hidden_size, generator=g) * 0.02, torch.full((2,), 12))}
        text = torch.randint(10, 200, (2, 5), generator=g)
        prompt = PromptLayout(decoder.tokenizer).build(decoder.embed, task, tokens, text, torch.full((2,), 5))
        if not inputs_need_grad:
            prompt.embeds = prompt.embeds.detach()
        loss = loss + decoder(prompt).logits.logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad for n, p in decoder.named_parameters() if "lora_" in n}
    return grads, runs[0]


@pytest.mark.parametrize("strategy", ["shared_lora", "task_lora", "shared_task_lora"])
def test_checkpointing_recomputes_and_keeps_the_gradients(tiny_llm_dir, strategy):
    plain, runs_plain = _lora_grads(tiny_llm_dir, strategy, False)
    ckpt, runs_ckpt = _lora_grads(tiny_llm_dir, strategy, True)
    assert runs_plain == len(PASSES) and runs_ckpt == 2 * len(PASSES)  # each layer run again in backward
    assert plain.keys() == ckpt.keys() and all(g is not None for g in ckpt.values())
    for name in plain:  # the first pass is recomputed under its own task's adapters, not the last pass's
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_with_inputs_that_need_no_gradient(tiny_llm_dir):
    plain, _ = _lora_grads(tiny_llm_dir, "shared_task_lora", False, inputs_need_grad=False)
    ckpt, _ = _lora_grads(tiny_llm_dir, "shared_task_lora", True, inputs_need_grad=False)
    assert all(g is not None and g.abs().sum() > 0 for g in ckpt.values())
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def _mome_grads(tiny_llm_dir, checkpointing):
    """MoME gradients of one step of two passes whose token selections differ (lengths, padding,
    tasks), with the balance loss in the objective -> ({name: grad}, MLP runs of layer 0)."""
    from espnet_omni_avsr.adapters.mome import MoME

    torch.manual_seed(0)
    adapter = MoME(num_experts=4, top_k=2, num_shared_experts=1, bottleneck=3, tokens="modality_text",
                   tasks=["asr", "vsr"])
    decoder = HFCausalLMDecoder(model_dir=tiny_llm_dir, adapter=adapter, gradient_checkpointing=checkpointing)
    decoder.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the up-projections start at zero; non-zero ones make MoME change the LLM
        for n, p in decoder.named_parameters():
            if ".mome." in n and (n.endswith(".up") or n.endswith(".up_bias")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    runs = [0]
    decoder.base_model.get_decoder().layers[0].mlp.register_forward_pre_hook(
        lambda *_: runs.__setitem__(0, runs[0] + 1))
    loss = 0.0
    for (task, modality), n in zip(PASSES, (12, 7)):
        lengths = torch.tensor([n, n - 3])  # padding in the second row: a selection that differs by pass
        tokens = {modality: (torch.randn(2, n, decoder.hidden_size, generator=g) * 0.02, lengths)}
        text = torch.randint(10, 200, (2, 5), generator=g)
        prompt = PromptLayout(decoder.tokenizer).build(decoder.embed, task, tokens, text, torch.full((2,), 5))
        out = decoder(prompt)
        loss = loss + out.logits.logsumexp(-1).mean() + out.aux_losses["balance"]
    loss.backward()
    grads = {n: p.grad for n, p in decoder.named_parameters() if ".mome." in n}
    return grads, runs[0]


def test_checkpointing_with_mome_recomputes_each_pass_under_its_own_selection(tiny_llm_dir):
    plain, runs_plain = _mome_grads(tiny_llm_dir, False)
    ckpt, runs_ckpt = _mome_grads(tiny_llm_dir, True)
    assert runs_plain == len(PASSES) and runs_ckpt == 2 * len(PASSES)
    assert plain.keys() == ckpt.keys() and all(g is not None and g.abs().sum() > 0 for g in ckpt.values())
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
