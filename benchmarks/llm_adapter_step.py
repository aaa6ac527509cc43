"""Step time of the frozen LLM with an adapter only (no encoders), several adapters side by side.

    python benchmarks/llm_adapter_step.py --model_dir egs2/avgrid/avsr1/pretrained/SmolLM2-135M-Instruct \
        --adapter none --adapter "shared_lora {r: 16, alpha: 32, dropout: 0.0}" \
        --adapter "mome {bottleneck: 3, placement: ffn, dispatch: dense}"

Each --adapter is an llm_adapter registry key (or none), optionally followed by its llm_adapter_conf
as YAML; the adapter is built from the task's registry (`llm_adapter_choices`). The models take
their steps in turn (round robin), so that load from other processes on a shared machine falls on
all of them alike. Prints, per adapter, the median forward+backward time (and forward-only time)
over --steps steps after --warmup, for --batch_size AVSR prompts of --audio_tokens + --video_tokens
modality tokens and a 10-token transcript, with the adapter's trainable parameters (and MoME's
active / total counts).
"""
import argparse
import statistics
import time

import torch
import yaml


def build(model_dir: str, spec: str, dtype: str):
    from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
    from espnet_omni_avsr.tasks.avsr_llm_task import llm_adapter_choices

    name, _, conf = spec.partition(" ")
    adapter = None
    if name != "none":
        adapter = llm_adapter_choices.get_class(name)(tasks=["avsr"], **(yaml.safe_load(conf) or {}))
    decoder = HFCausalLMDecoder(model_dir=model_dir, adapter=adapter, dtype=dtype, attn_implementation="eager")
    return decoder.train()


def step(decoder, prompt) -> tuple:
    """(forward seconds, forward + backward seconds) of one pass."""
    t0 = time.perf_counter()
    out = decoder(prompt)
    loss = out.logits.logsumexp(-1).mean() + sum(out.aux_losses.values(), torch.zeros(()))
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    decoder.zero_grad(set_to_none=True)
    return t1 - t0, t2 - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--adapter", action="append", default=None, help='"NAME [YAML conf]", repeatable')
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--audio_tokens", type=int, default=25)
    p.add_argument("--video_tokens", type=int, default=25)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    from espnet_omni_avsr.decoders.prompt import PromptLayout

    torch.set_num_threads(a.threads)
    specs = a.adapter or ["shared_lora"]
    decoders = []
    for spec in specs:
        torch.manual_seed(0)
        decoders.append(build(a.model_dir, spec, a.dtype))
    b, d = a.batch_size, decoders[0].hidden_size
    g = torch.Generator().manual_seed(0)
    tokens = {m: (torch.randn(b, n, d, generator=g) * 0.02, torch.full((b,), n)) for m, n in
              (("audio", a.audio_tokens), ("video", a.video_tokens))}
    text = torch.randint(100, 1000, (b, 10), generator=g)
    prompt = PromptLayout(decoders[0].tokenizer).build(decoders[0].embed, "avsr", tokens, text, torch.full((b,), 10))
    prompt.embeds = prompt.embeds.detach().requires_grad_()  # as from trained projectors: backward crosses the LLM
    times = [([], []) for _ in decoders]
    for i in range(a.warmup + a.steps):
        for decoder, (fwd, total) in zip(decoders, times):
            f, t = step(decoder, prompt)
            if i >= a.warmup:
                fwd.append(f)
                total.append(t)
    print(f"batch={b} prompt_len={prompt.embeds.size(1)} threads={a.threads} dtype={a.dtype} steps={a.steps}")
    for spec, decoder, (fwd, total) in zip(specs, decoders, times):
        n = sum(q.numel() for q in decoder.parameters() if q.requires_grad) - decoder.special_embeddings.numel()
        adapter = decoder.adapter
        counts = adapter.parameter_counts() if hasattr(adapter, "parameter_counts") else {}
        extra = f" (active {counts['active']:,}, total {counts['total']:,})" if counts else ""
        print(f"{spec}: adapter parameters {n:,}{extra}; fwd+bwd median {statistics.median(total) * 1000:.0f} ms, "
              f"forward median {statistics.median(fwd) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
