"""Cost of DDP's find_unused_parameters (ESPnet's --unused_parameters true) on a training step.

One-pair matryoshka training (Omni-AVSR) leaves the compressors and projectors of the rates not
drawn in a step without gradient, so DDP must be told (`unused_parameters: true`). That makes DDP
walk the autograd graph after every forward to find them. This measures what that walk costs: the
same model with every rate pair in every step (all_pairs: every parameter is used, so DDP works
either way) with find_unused_parameters false and true, and the one_pair step as trained.

    OMP_NUM_THREADS=1 PYTHONPATH=. tools/venv/bin/python benchmarks/ddp_unused_parameters.py \
        [--world_size 2] [--steps 20] [--llm_hidden 32]

Two CPU processes (gloo), the tiny Omni-AVSR-ST model of tests/bin/test_distributed_training.py
(tiny random Llama and Whisper; --llm_hidden widens the LLM), 2 utterances of 2 s per process.
Prints the median step time (forward, backward with the gradient all-reduce, SGD step) per case;
the cases take turns step by step.
"""
import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _batch(tokenizer, n, seconds, seed):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.tensor(tokenizer("bin blue at f two now", add_special_tokens=False)["input_ids"])] * n
    frames, samples = int(seconds * 25), int(seconds * 16000)
    return dict(
        speech=torch.randn(n, samples, generator=g) * 0.1, speech_lengths=torch.full((n,), samples),
        video=torch.randint(0, 256, (n, frames, 88, 88), generator=g, dtype=torch.uint8),
        video_lengths=torch.full((n,), frames),
        text=torch.stack(ids), text_lengths=torch.tensor([len(x) for x in ids]),
    )


def _worker(rank, world, port, dirs, cases, steps, warmup, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from tests.bin.test_distributed_training import omni_config
    from tests.models.conftest import build

    runs = {}
    for label, sampling, find_unused in cases:
        config = omni_config(dirs["llm"], dirs["whisper"], None)
        for key in ("optim", "optim_conf", "max_epoch", "batch_type", "batch_size", "num_att_plot", "num_workers",
                    "best_model_criterion", "keep_nbest_models", "seed", "grad_clip", "unused_parameters"):
            config.pop(key)
        config["model_conf"]["rate_sampling"] = sampling
        torch.manual_seed(0)
        model, _ = build(config)
        model.train()
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        runs[label] = (ddp, opt, _batch(model.decoder.tokenizer, 2, 2.0, seed=rank), [])
    # the cases take turns, step by step, so that a change of machine load hits them alike
    for i in range(warmup + steps):
        for label, (ddp, opt, batch, times) in runs.items():
            dist.barrier()
            t = time.perf_counter()
            loss, _, _ = ddp(**batch)
            loss.sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    results = {label: statistics.median(run[3]) for label, run in runs.items()}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--llm_hidden", type=int, default=32)
    args = parser.parse_args()
    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_llama, build_tiny_whisper

    root = tempfile.mkdtemp()
    dirs = dict(llm=f"{root}/llm", whisper=f"{root}/whisper")
    build_tiny_llama(dirs["llm"], hidden_size=args.llm_hidden)
    build_tiny_whisper(dirs["whisper"])
    cases = [("all_pairs, find_unused_parameters=False", "all_pairs", False),
             ("all_pairs, find_unused_parameters=True", "all_pairs", True),
             ("one_pair,  find_unused_parameters=True", "one_pair", True)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = f"{root}/times.pt"
    mp.spawn(_worker, args=(args.world_size, port, dirs, cases, args.steps, args.warmup, out), nprocs=args.world_size)
    times = torch.load(out)
    base = times[cases[0][0]]
    print(f"{args.world_size} processes, LLM hidden {args.llm_hidden}, median of {args.steps} steps:")
    for label, t in times.items():
        print(f"  {label}: {1000 * t:7.1f} ms/step ({100 * (t / base - 1):+.1f}% vs the first)")


if __name__ == "__main__":
    main()
