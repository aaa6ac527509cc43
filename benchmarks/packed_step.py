"""Packed against padded LLM passes (`model_conf.pack_sequences`): step time and positions computed.

    python benchmarks/packed_step.py --config egs2/avgrid/avsr1/conf/omni_avsr/multitask_small.yaml \
        --pretrained_dir egs2/avgrid/avsr1/pretrained --batch_size 8 \
        [--modes padded packed batched+padded batched+packed]

One model, one random batch (`common.random_batch`); its training steps go round robin over the
modes, so that load from other jobs falls on all alike. A mode is `padded` or `packed` (the same
model without or with its `SequencePacker`), at the config's `batched_tasks`, or prefixed
`batched+` / `split+` for one LLM pass for all tasks / one pass per task. Prints, for each mode,
the median step (forward + backward + optimizer) and forward times, and the positions the LLM's
layers processed in a step (rows x row length, summed over the step's passes) against the
positions that hold a prompt token: what packing can save is the difference. The first step of
each mode is not timed (packing's probe runs there). Losses of the modes are printed side by side
for that first step (same weights): they agree up to summation order in float32.
"""
import argparse
import statistics
import time

import torch

from common import LLMPositions, add_model_options, build, llm_dir_of, random_batch
from espnet_omni_avsr.decoders.sequence_packing import SequencePacker


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--pretrained_dir", required=True)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=2.68)
    p.add_argument("--length_spread", type=float, default=0.36,
                   help="clip lengths spread evenly over [seconds x (1 - spread), seconds] (the embedded "
                        "corpus's training clips: 10th percentile 1.72 s, 90th 2.68 s)")
    p.add_argument("--steps", type=int, default=4, help="timed steps of each mode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pack_length", type=int, default=None, help="model_conf.pack_length (longest packed row)")
    p.add_argument("--modes", nargs="+", default=["padded", "packed"], metavar="MODE",
                   help="padded / packed, optionally prefixed batched+ or split+ (see above)")
    add_model_options(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    llm_dir = llm_dir_of(a)
    model = build(a.config, a.pretrained_dir, False, None, a.set, None, llm_dir)
    packer = SequencePacker(model.decoder.attn_implementation, a.pack_length)
    counter = LLMPositions(model.decoder)
    batch = random_batch(model, a.batch_size, a.seconds)
    spread_lengths(batch, a.length_spread)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    model.train()
    modes = {m: _mode(m, packer, model.batched_tasks) for m in a.modes}
    times = {m: {"step": [], "forward": [], "positions": []} for m in modes}
    first_loss = {}
    for i in range(a.steps + 1):
        for mode, (batched_tasks, mode_packer) in modes.items():
            model.batched_tasks, model.packer = batched_tasks, mode_packer
            counter.reset()
            torch.manual_seed(i)  # both modes draw the same rate pairs and dropout seeds in step i
            if i == 0:  # same weights for both modes: compare the losses (no dropout), no optimizer step
                model.eval()
                with torch.no_grad():
                    first_loss[mode] = model(**batch)[0].item()
                model.train()
                continue
            t0 = time.perf_counter()
            loss, _, _ = model(**batch)
            t1 = time.perf_counter()
            positions, tokens = counter.computed, counter.real
            loss.backward()
            opt.step()
            opt.zero_grad()
            t2 = time.perf_counter()
            times[mode]["step"].append(t2 - t0)
            times[mode]["forward"].append(t1 - t0)
            times[mode]["positions"].append(positions)
    print(f"config={a.config} batch={a.batch_size} clips={a.seconds * (1 - a.length_spread):.2f}-{a.seconds:g}s threads={a.threads} "
          f"attn={model.decoder.attn_implementation} llm_dtype={model.decoder.dtype} tasks={model.tasks} "
          f"pack_length={a.pack_length}")
    print("loss at the same weights: " + ", ".join(f"{m} {v:.6f}" for m, v in first_loss.items()))
    print(f"prompt tokens in a step: {tokens}")
    first = a.modes[0]
    for mode in modes:
        t = times[mode]
        ratio = statistics.median(times[first]["step"]) / statistics.median(t["step"])
        print(f"{mode}: step median {statistics.median(t['step']):.3f} s (speed-up against {first} {ratio:.2f}x), "
              f"forward median {statistics.median(t['forward']):.3f} s over {a.steps} steps; LLM positions a "
              f"step {t['positions'][-1]} ({t['positions'][-1] / tokens:.2f}x the prompt tokens)")


def _mode(name: str, packer: SequencePacker, config_batched_tasks: bool):
    """(batched_tasks, packer or None) for a mode name such as `packed` or `batched+padded`."""
    prefix, _, layout = name.rpartition("+")
    if layout not in ("padded", "packed") or prefix not in ("", "batched", "split"):
        raise SystemExit(f"--modes {name}: expected padded or packed, optionally prefixed batched+ or split+")
    batched_tasks = config_batched_tasks if not prefix else prefix == "batched"
    return batched_tasks, packer if layout == "packed" else None


def spread_lengths(batch: dict, spread: float) -> None:
    """Shorten the batch's clips (audio and video alike) to lengths spread evenly over
    [1 - spread, 1] of the full length, longest first, as a length-sorted batch is."""
    if not 0.0 <= spread < 1.0:
        raise SystemExit(f"--length_spread {spread}: expected a value in [0, 1)")
    b = batch["speech"].shape[0]
    scale = torch.linspace(1.0, 1.0 - spread, b)
    batch["speech_lengths"] = (batch["speech_lengths"] * scale).long()
    batch["video_lengths"] = (batch["video_lengths"] * scale).long()
    for key in ("speech", "video"):
        for i, n in enumerate(batch[key + "_lengths"].tolist()):
            batch[key][i, n:] = 0


if __name__ == "__main__":
    main()
