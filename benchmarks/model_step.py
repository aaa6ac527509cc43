"""Training-step time of the model core, built from a conf YAML through the task's registry.

    python benchmarks/model_step.py --config conf/llama_avsr/asr_small.yaml \
        --pretrained_dir egs2/avgrid/avsr1/pretrained --batch_size 8 --seconds 3 [--pad_to_30s]

Prints the median forward+backward+optimizer step time (and forward-only time) over --steps
steps after --warmup steps, for random 3-s audio and 96x96 video with short transcripts.
--overlay YAML stacks a config on it as avsr_train's second --config does (e.g. the recipe's
warm-up), and --set KEY=VALUE (dotted key, YAML value, repeatable) changes single values:

    python benchmarks/model_step.py --config egs2/avgrid/avsr1/conf/omni_avsr/multitask_small.yaml \
        --overlay egs2/avgrid/avsr1/conf/omni_avsr/multitask_small_warmup.yaml \
        --pretrained_dir egs2/avgrid/avsr1/pretrained --seconds 2.2   # run from egs2/avgrid/avsr1 after stage 1

--pack_sequences runs the LLM passes packed (model_conf.pack_sequences; --set model_conf.pack_length=N
bounds the rows). Every run prints the LLM positions of one step: the sequences' tokens ("real"), the
padded layout of the passes ("padded") and what the LLM ran on ("computed": padded, or the packed rows).
"""
import argparse
import statistics
import time

import torch

from common import LLMPositions, add_model_options, build, llm_dir_of, random_batch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--pretrained_dir", required=True)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pad_to_30s", action="store_true")
    p.add_argument("--separate_task_passes", action="store_true", help="one LLM pass per task")
    p.add_argument("--pack_sequences", action="store_true", help="model_conf.pack_sequences: true")
    p.add_argument("--llm_dtype", default=None, help="override decoder_conf.dtype (float32, bfloat16)")
    p.add_argument("--overlay", default=None, help="a config stacked on --config (later keys win)")
    add_model_options(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    llm_dir = llm_dir_of(a)
    overrides = a.set + (["model_conf.pack_sequences=true"] if a.pack_sequences else [])
    model = build(a.config, a.pretrained_dir, a.pad_to_30s, a.llm_dtype, overrides, a.overlay, llm_dir)
    if a.separate_task_passes:  # else the config's batched_tasks
        model.batched_tasks = False
    b, s = a.batch_size, a.seconds
    batch = random_batch(model, b, s)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    positions = LLMPositions(model.decoder)
    model.train()
    step_times, fwd_times = [], []
    for i in range(a.warmup + a.steps):
        positions.reset()  # the figures of the last step (the first packed one also runs the probe)
        t0 = time.perf_counter()
        loss, _, _ = model(**batch)
        t1 = time.perf_counter()
        loss.backward()
        opt.step()
        opt.zero_grad()
        t2 = time.perf_counter()
        if i >= a.warmup:
            fwd_times.append(t1 - t0)
            step_times.append(t2 - t0)
    n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
    print(f"config={a.config} task={model.task} batch={b} clip={s:g}s pad_to_30s={a.pad_to_30s} "
          f"threads={a.threads} trainable_params={n_train} tasks={model.tasks} "
          f"batched_tasks={model.batched_tasks} llm_dtype={model.decoder.dtype} "
          f"pack_sequences={model.packer is not None} attn={model.decoder.attn_implementation}")
    print(f"LLM positions per step: real {positions.real}, padded {positions.padded}, "
          f"computed {positions.computed} ({positions.computed / max(positions.real, 1):.2f} x real)")
    print(f"step (fwd+bwd+optim) median {statistics.median(step_times):.3f} s; "
          f"forward median {statistics.median(fwd_times):.3f} s over {a.steps} steps")


if __name__ == "__main__":
    main()
