import pytest
import torch

from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch

TASKS = ["asr", "vsr", "avsr"]


def _model(tiny_llm_dir, tiny_whisper_dir, strategy):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["model_conf"] = dict(tasks=TASKS)
    config["llm_adapter"] = strategy
    torch.manual_seed(0)
    model, _ = build(config)
    return model


def _adapters(model):
    """adapter name -> number of LoRA tensors, over the trainable parameters."""
    out = {}
    for n, p in model.named_parameters():
        if "lora_" in n and p.requires_grad:
            name = n.split(".")[-2]
            out[name] = out.get(name, 0) + 1
    return out


@pytest.mark.parametrize("strategy,expected", [
    ("shared_lora", {"shared"}), ("task_lora", set(TASKS)), ("shared_task_lora", {"shared", *TASKS})])
def test_trainable_parameter_sets(tiny_llm_dir, tiny_whisper_dir, strategy, expected):
    model = _model(tiny_llm_dir, tiny_whisper_dir, strategy)
    adapters = _adapters(model)
    assert set(adapters) == expected
    assert all(n == 2 * 2 * 2 for n in adapters.values())  # 2 layers x (q, v) x (A, B)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"audio", "video", "decoder"}
    frozen_llm = [n for n, p in model.named_parameters() if n.startswith("decoder.llm") and "lora_" not in n]
    assert frozen_llm and not any(dict(model.named_parameters())[n].requires_grad for n in frozen_llm)
    # every adapter is in the checkpoint, the frozen LLM is not
    state = model.state_dict()
    assert {k.split(".")[-2] for k in state if "lora_" in k} == expected
    assert not any(k in state for k in frozen_llm)


def _task_losses(model, batch):
    model.eval()
    with torch.no_grad():
        _, stats, _ = model(**batch)
    return {t: stats[f"loss_{t}"].item() for t in TASKS}


@pytest.mark.parametrize("strategy", ["task_lora", "shared_task_lora"])
@pytest.mark.parametrize("batched", [True, False])
def test_a_vsr_sequence_is_unaffected_by_the_asr_adapter(tiny_llm_dir, tiny_whisper_dir, strategy, batched):
    model = _model(tiny_llm_dir, tiny_whisper_dir, strategy)
    model.batched_tasks = batched
    batch = make_batch(model.decoder.tokenizer)
    before = _task_losses(model, batch)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B.asr" in n:
                p.add_(10 * torch.randn_like(p))
    after = _task_losses(model, batch)
    assert after["vsr"] == pytest.approx(before["vsr"], abs=1e-6)
    assert after["avsr"] == pytest.approx(before["avsr"], abs=1e-6)
    assert abs(after["asr"] - before["asr"]) > 1e-5
    if strategy == "shared_task_lora":  # the shared adapter reaches every task
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B.shared" in n:
                    p.add_(10 * torch.randn_like(p))
        assert abs(_task_losses(model, batch)["vsr"] - after["vsr"]) > 1e-5


def test_training_step_updates_each_task_adapter(tiny_llm_dir, tiny_whisper_dir):
    model = _model(tiny_llm_dir, tiny_whisper_dir, "shared_task_lora")
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss, _, _ = model(**make_batch(model.decoder.tokenizer))
    loss.backward()
    opt.step()
    changed = {n.split(".")[-2] for n, p in model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])}
    assert changed == {"shared", *TASKS}


@pytest.mark.parametrize("strategy,groups", [
    ("shared_lora", [[0, 1, 2, 3]]), ("task_lora", [[0, 2], [1], [3]]), ("shared_task_lora", [[0, 2], [1], [3]])])
def test_pass_groups(tiny_llm_dir, tiny_whisper_dir, strategy, groups):
    model = _model(tiny_llm_dir, tiny_whisper_dir, strategy)
    assert model.decoder.pass_groups(["asr", "vsr", "asr", "avsr"]) == groups


def test_a_task_specific_pass_refuses_mixed_tasks(tiny_llm_dir, tiny_whisper_dir):
    from espnet_omni_avsr.decoders.prompt import Prompt

    model = _model(tiny_llm_dir, tiny_whisper_dir, "task_lora")
    batch = make_batch(model.decoder.tokenizer)
    tokens = model.modality_tokens(TASKS, batch)
    prompts = [model.prompt.build(model.decoder.embed, t, tokens, batch["text"], batch["text_lengths"]) for t in ("asr", "vsr")]
    with pytest.raises(ValueError, match="one task's sequences"):
        model.decoder(Prompt.cat(prompts))
