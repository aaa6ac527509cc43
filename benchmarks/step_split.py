"""Where a training step's time goes, and how much of the machine's matrix throughput the LLM uses.

    python benchmarks/step_split.py --config conf/omni_avsr/multitask_small.yaml \
        --pretrained_dir egs2/avgrid/avsr1/pretrained [--overlay ...] [--llm_dtype float32|bfloat16] \
        [--reference_llm] [--batch_size 8] [--seconds 3]

Prints the median time per step of each part of the forward pass (audio log-mel front end, audio
encoder, video front end, video encoder, compressors + projectors, the LLM passes, the loss terms),
then backward and the optimizer step, over --steps steps after --warmup. Forward parts are timed by
module hooks (each part's own time; the LLM includes its adapter). Then the LLM passes' floating
point operations per step (torch.utils.flop_counter, forward only) over their time, next to this
machine's fp32 and bf16 matmul peak measured here (square matmuls of --peak_size, same threads).
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch

from common import add_model_options, build, llm_dir_of, random_batch


def matmul_peak(dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    """GFLOP/s of (n x n) @ (n x n) in `dtype` on this process's threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - t0) / 1e9


def timed_parts(model):
    """name -> module whose forward is one part of the step (absent parts are left out)."""
    parts = {}
    for m, branch in model.branches.items():
        parts[f"{m} front end"] = branch.frontend
        if branch.encoder is not None:
            parts[f"{m} encoder"] = branch.encoder
        for name, c in branch.compressors.items():
            parts[f"{m} compressor {name}"] = c
        for name, pr in branch.projectors.items():
            parts[f"{m} projector {name}"] = pr
    if model.fused is not None:
        parts["fusion"] = model.fused
    parts["LLM passes"] = model.decoder
    for name, term in model.losses.items():
        parts[f"loss {name}"] = term
    return parts


class PartTimer:
    """Forward hooks that add each part's wall time (own time: nested timed parts are subtracted)."""

    def __init__(self, parts):
        self.totals = defaultdict(float)
        self.stack = []
        for name, module in parts.items():
            module.register_forward_pre_hook(self._enter(name))
            module.register_forward_hook(self._leave(name))

    def _enter(self, name):
        def hook(module, args):
            self.stack.append([name, time.perf_counter(), 0.0])
        return hook

    def _leave(self, name):
        def hook(module, args, output):
            _, t0, inner = self.stack.pop()
            elapsed = time.perf_counter() - t0
            self.totals[name] += elapsed - inner
            if self.stack:
                self.stack[-1][2] += elapsed
        return hook

    def take(self):
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


def llm_forward_flops(model, batch) -> int:
    """Forward FLOPs of the LLM passes of one training step (the decoder and everything inside it),
    counted without autograd."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    total = [0]

    def enter(module, args):
        counter.__enter__()  # a pre-hook returning something would replace the decoder's arguments

    def leave(module, args, output):
        counter.__exit__(None, None, None)
        total[0] += counter.get_total_flops()  # entering again starts the count at zero

    handles = [model.decoder.register_forward_pre_hook(enter), model.decoder.register_forward_hook(leave)]
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    return total[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--pretrained_dir", required=True)
    p.add_argument("--overlay", default=None, help="a config stacked on --config (later keys win)")
    p.add_argument("--llm_dtype", default=None, help="override decoder_conf.dtype (float32, bfloat16)")
    add_model_options(p)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak_size", type=int, default=2048)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    llm_dir = llm_dir_of(a)
    model = build(a.config, a.pretrained_dir, False, a.llm_dtype, a.set, a.overlay, llm_dir)
    batch = random_batch(model, a.batch_size, a.seconds)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    timer = PartTimer(timed_parts(model))
    model.train()
    rows = defaultdict(list)
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss, _, _ = model(**batch)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        parts = timer.take()
        if i < a.warmup:
            continue
        for name, t in parts.items():
            rows[name].append(t)
        rows["forward, other"].append((t1 - t0) - sum(parts.values()))
        rows["backward"].append(t2 - t1)
        rows["optimizer"].append(t3 - t2)
        rows["step"].append(t3 - t0)
    print(f"config={a.config} overlay={a.overlay} llm={model.decoder.model_dir} llm_dtype={model.decoder.dtype} "
          f"batch={a.batch_size} clip={a.seconds:g}s threads={a.threads}")
    step = statistics.median(rows.pop("step"))
    for name, times in rows.items():
        t = statistics.median(times)
        print(f"  {name:<28} {t:8.3f} s  {100 * t / step:5.1f}%")
    print(f"  {'step (median)':<28} {step:8.3f} s")
    llm_time = statistics.median(rows["LLM passes"]) if "LLM passes" in rows else 0.0
    if llm_time > 0:
        flops = llm_forward_flops(model, batch)  # in training mode: the same jobs (rate pairs) as a step
        peaks = {d: matmul_peak(getattr(torch, d), a.peak_size) for d in ("float32", "bfloat16")}
        achieved = flops / llm_time / 1e9
        print(f"LLM forward: {flops / 1e9:.1f} GFLOP per step in {llm_time:.3f} s = {achieved:.0f} GFLOP/s "
              f"(LLM dtype {model.decoder.dtype})")
        for d, g in peaks.items():
            print(f"  matmul peak {d:<9} {g:7.0f} GFLOP/s ({a.peak_size}^2, {a.threads} threads): "
                  f"LLM forward at {100 * achieved / g:.0f}% of it")


if __name__ == "__main__":
    main()
