"""Whisper front end + encoder: exact 30-s padding vs the true clip length.

Prints the median time of frontend + encoder for a batch of short clips in both modes and the
cosine similarity between the two modes' outputs on the valid frames.

    python benchmarks/whisper_padding.py [--model_dir DIR] [--wav a.wav b.wav ...] [--batch 8]
        [--seconds 3] [--reps 5] [--threads 2]

Without --model_dir a random Whisper tiny.en-sized model (d_model 384, 4 layers, 6 heads,
80 mels) is built and written to a temporary folder, since WhisperEncoder reads local folders only.
Without --wav the clips are synthetic (harmonic tones with a syllable-rate envelope); with --wav
16 kHz files are cut to --seconds and reused in turn to fill the batch.
"""
import argparse
import os
import statistics
import tempfile
import time
from typing import List, Optional, Tuple

import torch


def build_random_tiny_en(out_dir: str) -> None:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=64,  # the decoder is never used here; keep it small
        num_mel_bins=80,
        d_model=384,
        encoder_layers=4,
        encoder_attention_heads=6,
        encoder_ffn_dim=1536,
        decoder_layers=1,
        decoder_attention_heads=6,
        decoder_ffn_dim=1536,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(out_dir)


def speech_like_batch(batch: int, n_samples: int) -> torch.Tensor:
    """Harmonic tones with a syllable-rate envelope plus noise: (batch, n_samples)."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(n_samples) / 16000.0
    rows = []
    for i in range(batch):
        f0 = 100.0 + 15.0 * i
        voiced = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 6))
        envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * (3.0 + 0.3 * i) * t)
        rows.append(0.2 * voiced * envelope + 0.02 * torch.randn(n_samples, generator=g))
    return torch.stack(rows)


def wav_batch(paths: List[str], batch: int, n_samples: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first n_samples of each file (files reused in turn): (batch, n_samples), lengths (batch,)."""
    import soundfile

    wav = torch.zeros(batch, n_samples)
    lens = torch.zeros(batch, dtype=torch.long)
    for i in range(batch):
        data, sr = soundfile.read(paths[i % len(paths)], dtype="float32", always_2d=True)
        if sr != 16000:
            raise ValueError(f"{paths[i % len(paths)]}: {sr} Hz, 16000 Hz needed")
        clip = torch.from_numpy(data[:n_samples, 0].copy())
        wav[i, : clip.numel()] = clip
        lens[i] = clip.numel()
    return wav, lens


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(
    model_dir: str, frontend_dir: Optional[str], wavs: List[str], batch: int, seconds: float, reps: int
) -> None:
    from espnet_omni_avsr.encoders.whisper_encoder import WhisperEncoder
    from espnet_omni_avsr.frontends.whisper_logmel_frontend import WhisperLogMelFrontend

    exact_fe = WhisperLogMelFrontend(pad_to_30s=True, model_dir=frontend_dir)
    true_fe = WhisperLogMelFrontend(pad_to_30s=False, model_dir=frontend_dir)
    encoder = WhisperEncoder(input_size=exact_fe.output_size(), model_dir=model_dir).eval()

    n = int(seconds * 16000)
    if wavs:
        wav, lens = wav_batch(wavs, batch, n)  # (B, S), (B,)
    else:
        wav, lens = speech_like_batch(batch, n), torch.full((batch,), n, dtype=torch.long)

    def forward(fe):
        with torch.inference_mode():
            feats, feats_lens = fe(wav, lens)
            return encoder(feats, feats_lens)

    results = {}
    for name, fe in (("exact 30 s", exact_fe), ("true length", true_fe)):
        fe_time = median_time(lambda: fe(wav, lens), reps)
        total = median_time(lambda: forward(fe), reps)
        out, out_lens, _ = forward(fe)
        results[name] = (fe_time, total, out, out_lens)

    print(f"model: {model_dir}  d_model {encoder.output_size()}  layers {len(encoder.encoder.layers)}")
    source = f"{len(wavs)} wav files" if wavs else "synthetic"
    print(f"batch {batch} x {seconds:.1f} s clips ({source}), threads {torch.get_num_threads()}, median of {reps}")
    print(f"{'mode':<12} {'frontend s':>11} {'frontend+encoder s':>19} {'ms/utt':>8} {'out frames':>11}")
    for name, (fe_time, total, out, _) in results.items():
        print(f"{name:<12} {fe_time:>11.4f} {total:>19.4f} {1000 * total / batch:>8.1f} {out.size(1):>11}")
    speedup = results["exact 30 s"][1] / results["true length"][1]
    print(f"speed-up of the true length: {speedup:.1f}x")

    exact_out, exact_lens = results["exact 30 s"][2:]
    true_out, true_lens = results["true length"][2:]
    assert torch.equal(exact_lens, true_lens)
    cos = []
    for i in range(batch):
        m = int(true_lens[i])
        cos.append(torch.nn.functional.cosine_similarity(exact_out[i, :m], true_out[i, :m], dim=-1))
    cos = torch.cat(cos)
    print(
        f"cosine(exact, true length) over {cos.numel()} valid frames: "
        f"mean {cos.mean():.4f}  min {cos.min():.4f}  median {cos.median():.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", default=None, help="local HF Whisper folder (default: random tiny.en size)")
    parser.add_argument("--wav", nargs="*", default=[], help="16 kHz wav files (default: synthetic clips)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    if args.model_dir:
        has_fe = os.path.isfile(os.path.join(args.model_dir, "preprocessor_config.json"))
        run(args.model_dir, args.model_dir if has_fe else None, args.wav, args.batch, args.seconds, args.reps)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build_random_tiny_en(tmp)
            run(tmp, None, args.wav, args.batch, args.seconds, args.reps)


if __name__ == "__main__":
    main()
