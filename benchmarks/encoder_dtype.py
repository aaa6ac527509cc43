"""Whisper encoder in bfloat16 / float16 against float32 on real speech: feature cosine and time.

    python benchmarks/encoder_dtype.py --whisper_dir egs2/avgrid/avsr1/pretrained/whisper-tiny.en \
        --wav_scp egs2/avgrid/avsr1/dump/test/wav.scp [--num_utts 20] [--threads 1]

Prints, per dtype, the mean and minimum per-frame cosine similarity of the encoder output to
float32's over the utterances (true-length mode, one utterance at a time) and the median encoder
time per utterance. bf16 is fast only where the CPU has bf16 matrix units (grep avx512_bf16 or
amx_bf16 in /proc/cpuinfo); elsewhere torch emulates it.
"""
import argparse
import statistics
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper_dir", required=True)
    p.add_argument("--wav_scp", required=True)
    p.add_argument("--num_utts", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from espnet_omni_avsr.encoders.whisper_encoder import WhisperEncoder
    from espnet_omni_avsr.frontends.whisper_logmel_frontend import WhisperLogMelFrontend
    from espnet_omni_avsr.prep.audio_prep import read_audio

    frontend = WhisperLogMelFrontend(n_mels=80, pad_to_30s=False)
    feats = []
    with open(a.wav_scp) as f:
        for line in list(f)[: a.num_utts]:
            utt, path = line.split(maxsplit=1)
            wav = torch.as_tensor(read_audio(path.strip())[0], dtype=torch.float32).mean(dim=1)  # (N, C) -> mono
            x, n = frontend(wav[None], torch.tensor([wav.numel()]))
            feats.append((x, n))
    flags = open("/proc/cpuinfo").read()
    print(f"{len(feats)} utterances; CPU bf16 units: "
          f"{'amx_bf16' if 'amx_bf16' in flags else 'avx512_bf16' if 'avx512_bf16' in flags else 'none'}")

    def run(enc):
        outs, times = [], []
        with torch.no_grad():
            for x, n in feats:
                t = time.perf_counter()
                h, _, _ = enc(x, n)
                times.append(time.perf_counter() - t)
                outs.append(h[0])
        return outs, statistics.median(times)

    ref, t_ref = run(WhisperEncoder(input_size=80, model_dir=a.whisper_dir))
    print(f"float32: {1000 * t_ref:.1f} ms/utt")
    for dtype in a.dtypes:
        outs, t = run(WhisperEncoder(input_size=80, model_dir=a.whisper_dir, dtype=dtype))
        cos = torch.cat([torch.nn.functional.cosine_similarity(o, r, dim=-1) for o, r in zip(outs, ref)])
        print(f"{dtype}: {1000 * t:.1f} ms/utt ({t_ref / t:.2f}x float32's speed); cosine to float32 "
              f"mean {cos.mean():.4f}, min {cos.min():.4f}")


if __name__ == "__main__":
    main()
