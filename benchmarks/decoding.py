"""Decoding throughput of a model built from a conf YAML: greedy and beam search at several batch sizes.

    python benchmarks/decoding.py --config conf/omni_avsr/multitask_small.yaml \
        --pretrained_dir egs2/avgrid/avsr1/pretrained --task asr --beams 1 15 --batch_sizes 1 8 32 \
        [--llm_dtype float32|bfloat16] [--reference_llm] [--profile]

Every utterance is a random clip of --seconds and generates exactly --new_tokens tokens (EOS is
held off), so the work per call is fixed whatever the weights say. Prints, per (beam, batch), the
median seconds per call over --repeats calls after one warm-up call, seconds per clip,
utterances/s and generated tokens/s. --profile adds torch.profiler's top operators of one call
per setting.
"""
import argparse
import statistics
import time

import torch

from common import add_model_options, build, llm_dir_of, random_batch


def decode_once(model, batch, task, beams, new_tokens):
    ids, _ = model.generate_ids(
        speech=batch["speech"], speech_lengths=batch["speech_lengths"], video=batch["video"],
        video_lengths=batch["video_lengths"], task=task, num_beams=beams,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return ids


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--pretrained_dir", required=True)
    p.add_argument("--task", default="asr")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 15])
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--new_tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llm_dtype", default=None, help="override decoder_conf.dtype (float32, bfloat16)")
    p.add_argument("--overlay", default=None, help="a config stacked on --config (later keys win)")
    add_model_options(p)
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators per setting")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    llm_dir = llm_dir_of(a)
    model = build(a.config, a.pretrained_dir, False, a.llm_dtype, a.set, a.overlay, llm_dir).eval()
    print(f"config={a.config} task={a.task} llm={model.decoder.model_dir} llm_dtype={model.decoder.dtype} "
          f"clip={a.seconds:g}s new_tokens={a.new_tokens} threads={a.threads}")
    print(f"{'beam':>4} {'batch':>5} {'s/call':>8} {'s/clip':>8} {'utt/s':>7} {'tok/s':>8}")
    with torch.no_grad():
        for beams in a.beams:
            for b in a.batch_sizes:
                batch = random_batch(model, b, a.seconds)
                ids = decode_once(model, batch, a.task, beams, a.new_tokens)
                n_new = ids.shape[0] * ids.shape[1]
                times = []
                for _ in range(a.repeats):
                    t0 = time.perf_counter()
                    decode_once(model, batch, a.task, beams, a.new_tokens)
                    times.append(time.perf_counter() - t0)
                t = statistics.median(times)
                print(f"{beams:>4} {b:>5} {t:>8.3f} {t / b:>8.4f} {b / t:>7.2f} {n_new / t:>8.1f}", flush=True)
                if a.profile:
                    from torch.profiler import ProfilerActivity, profile

                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        decode_once(model, batch, a.task, beams, a.new_tokens)
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
