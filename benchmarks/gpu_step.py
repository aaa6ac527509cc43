"""Training-step time and peak memory of the paper-size configs at real shapes, on random weights.

    python benchmarks/gpu_step.py --work_dir /tmp/paper_shapes --tokenizer_dir egs2/avgrid/avsr1/pretrained/SmolLM2-135M-Instruct \
        [--config conf/omni_avsr/omni_st_paper.yaml] [--batch_sizes 1 4 8 16] [--seconds 6] [--device cuda]

Builds (once, in --work_dir) a random Whisper of medium.en's encoder shapes (1024 x 24 layers, 16
heads, FFN 4096) and a random Llama of Llama 3.2-1B's shapes (2048 x 16 layers, 32 heads, 8
key/value heads, FFN 8192, vocabulary 128,256; SmolLM2's tokenizer, so the ids are not Llama 3's),
builds the config's model on them through the task's registry, and prints per batch size the median
forward+backward+optimizer step over --steps steps after one warm-up, and the peak memory
(torch.cuda.max_memory_allocated on a GPU, the process's peak RSS on the CPU). A batch size that
runs out of memory is reported as such and the larger ones are skipped. --width_scale 8 divides
every width by 8 (same depths): a CPU smoke run of the same code path.
"""
import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from common import build, random_batch

WHISPER_MEDIUM = dict(d_model=1024, num_layers=24, num_heads=16, ffn_dim=4096)
LLAMA_32_1B = dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192,
                   vocab_size=128256)


def random_models(work_dir: Path, tokenizer_dir: str, scale: int) -> Path:
    """Folders whisper-medium.en and Llama-3.2-1B (random, widths / scale) under work_dir/scale<N>."""
    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_llama, build_tiny_whisper

    root = work_dir / f"scale{scale}"
    whisper, llama = root / "whisper-medium.en", root / "Llama-3.2-1B"
    if not (whisper / "config.json").is_file():
        w = dict(WHISPER_MEDIUM, d_model=WHISPER_MEDIUM["d_model"] // scale, ffn_dim=WHISPER_MEDIUM["ffn_dim"] // scale,
                 num_heads=max(1, WHISPER_MEDIUM["num_heads"] // scale))
        build_tiny_whisper(str(whisper), **w)
    if not (llama / "config.json").is_file():
        heads = max(1, LLAMA_32_1B["num_heads"] // scale)
        l = dict(LLAMA_32_1B, hidden_size=LLAMA_32_1B["hidden_size"] // scale, num_heads=heads,
                 num_kv_heads=max(1, min(heads, LLAMA_32_1B["num_kv_heads"] // scale)),
                 intermediate_size=LLAMA_32_1B["intermediate_size"] // scale)
        build_tiny_llama(str(llama), tokenizer_dir=tokenizer_dir, **l)
    return root


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/omni_avsr/omni_st_paper.yaml")
    p.add_argument("--work_dir", required=True, help="where the random model folders are built (once)")
    p.add_argument("--tokenizer_dir", required=True, help="a local LLM folder whose tokenizer the random Llama uses")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=6.0, help="clip length (LRS3 averages about 6 s)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width_scale", type=int, default=1, help="divide every width by this (CPU smoke runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a config value")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    root = random_models(Path(a.work_dir), a.tokenizer_dir, a.width_scale)
    overrides = ["preprocessor_conf.noise=null"] + a.set
    model = build(a.config, str(root), False, None, overrides).to(a.device)
    attn = model.decoder.base_model.config._attn_implementation
    n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
    n_all = sum(q.numel() for q in model.parameters())
    print(f"config={a.config} device={a.device} width_scale={a.width_scale} llm_dtype={model.decoder.dtype} "
          f"attn={attn} params={n_all / 1e6:.0f}M trainable={n_train / 1e6:.1f}M clip={a.seconds:g}s")
    print(f"{'batch':>5} {'step s':>8} {'peak MB':>9}")
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    model.train()
    for b in a.batch_sizes:
        batch = {k: v.to(a.device) for k, v in random_batch(model, b, a.seconds).items()}
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        try:
            for i in range(1 + a.steps):
                t0 = time.perf_counter()
                loss, _, _ = model(**batch)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            print(f"{b:>5} {'out of memory':>18}; larger batches skipped")
            break
        print(f"{b:>5} {statistics.median(times):>8.3f} {peak_memory_mb(a.device):>9.0f}", flush=True)


if __name__ == "__main__":
    main()
