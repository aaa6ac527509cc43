#!/usr/bin/env python3
"""Train MMS-LLaMA's speech-rate predictor on its own, on frozen Whisper features.

    python -m espnet_omni_avsr.bin.train_speech_rate --train_dir dump/train --valid_dir dump/valid \\
        --whisper_dir pretrained/whisper-medium.en --output exp/speech_rate/rate.pth [--epochs 20]

Set dirs are Kaldi-style: ``wav.scp`` and ``text`` (``video.scp`` optional). For each utterance:

* words: the whitespace tokens of its transcript;
* duration: with a ``video.scp``, its video frames / ``--fps`` (the frame count from the set's
  ``utt2num_frames`` when it has one, else from the video's header); without, the audio's length;
* label: (words / duration) / mean_wps, where mean_wps is the training set's mean of the
  utterances' words per second;
* features: WhisperLogMelFrontend(pad_to_30s=False) + WhisperEncoder(frozen) on the 16 kHz audio
  (50 Hz frames), cut to 2 x the video frames when there is a video (``cut_to_video``), subsampled
  as the predictor does; computed once and kept in memory (``--cache_dtype``; LRS3's 30 h of
  training audio at 12.5 Hz x 1024 dims in float16 are about 3 GB).

Bad utterances (unreadable audio or video, no or an empty transcript, zero duration, audio longer
than Whisper's 30 s) are skipped with a warning naming them; the summary counts them and
``<output minus .pth>.json`` lists them. Training: MSE on the relative rate, AdamW with a linear
warmup over ``--warmup_steps`` and a constant learning rate after it, the epoch with the lowest valid
MAE kept. The valid MAE in words per second (prediction x mean_wps against the truth) and the
constant predictor's (always mean_wps) are printed, stored in the checkpoint's meta and in the json.
"""
import argparse
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from espnet_omni_avsr.names import MODALITIES, TEXT
from espnet_omni_avsr.prep.errors import ItemError, PrepError
from espnet_omni_avsr.prep.kaldi_dir import read_int_table, read_table
from espnet_omni_avsr.speech_rate.predictor import (
    SpeechRatePredictor,
    cut_to_video,
    save_predictor,
    subsample_frames,
)
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging

AUDIO_SCP = MODALITIES["audio"].scp
VIDEO_SCP = MODALITIES["video"].scp
NUM_FRAMES = "utt2num_frames"
SAMPLE_RATE = 16000


@dataclass
class Utt:
    uid: str
    wav: str
    words: int
    video_frames: Optional[int]
    seconds: float = 0.0  # the label's duration, set once the audio is read
    wps: float = 0.0
    feats: Optional[torch.Tensor] = None  # (T, D), subsampled encoder frames


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_dir", required=True, help="Kaldi-style set dir: wav.scp, text (video.scp optional)")
    p.add_argument("--valid_dir", required=True, help="as --train_dir; picks the best epoch")
    p.add_argument("--whisper_dir", required=True, help="a local Hugging Face Whisper folder")
    p.add_argument("--output", required=True, help="the checkpoint to write (FILE.pth); FILE.json beside it")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight_decay", type=float, default=0.01, help="AdamW's")
    p.add_argument("--warmup_steps", type=int, default=100, help="linear learning-rate warmup (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--ngpu", type=int, default=0, help="1: Whisper and training on cuda")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate (the label's duration)")
    p.add_argument("--whisper_output_layer", type=int, default=-1, help="WhisperEncoder's output_layer")
    p.add_argument("--feat_batch_size", type=int, default=8, help="utterances per Whisper forward")
    p.add_argument("--cache_dtype", choices=["float16", "float32"], default="float16",
                   help="how the features are kept in memory")
    g = p.add_argument_group("predictor")
    g.add_argument("--hidden_size", type=int, default=256)
    g.add_argument("--num_layers", type=int, default=2)
    g.add_argument("--num_heads", type=int, default=4)
    g.add_argument("--ffn_size", type=int, default=1024)
    g.add_argument("--subsample", type=int, default=4)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--positional", choices=["sinusoidal", "none"], default="sinusoidal")
    add_log_level(p)
    return p


def json_path(output: str) -> str:
    """``exp/rate.pth`` -> ``exp/rate.json``."""
    root, ext = os.path.splitext(output)
    return (root if ext else output) + ".json"


# --------------------------------------------------------------------------- data


class Skipped:
    """The utterances left out, with the reason; each is logged as a warning when added."""

    def __init__(self):
        self.items: List[Dict[str, str]] = []

    def add(self, set_name: str, uid: str, reason: str) -> None:
        logging.warning(f"{set_name}: skipping utterance {uid}: {reason}")
        self.items.append(dict(set=set_name, utt=uid, reason=reason))

    def count(self, set_name: str) -> int:
        return sum(1 for item in self.items if item["set"] == set_name)


def list_set(set_dir: str, set_name: str, skipped: Skipped) -> List[Utt]:
    """The utterances of a set dir with a transcript of at least one word (and, when the set has a
    video.scp, a readable video frame count > 0); the others go to `skipped`."""
    wavs = read_table(os.path.join(set_dir, AUDIO_SCP))
    texts = read_table(os.path.join(set_dir, TEXT.file), allow_empty=True)
    video_scp = os.path.join(set_dir, VIDEO_SCP)
    videos = read_table(video_scp) if os.path.isfile(video_scp) else None
    num_frames_path = os.path.join(set_dir, NUM_FRAMES)
    counts = read_int_table(num_frames_path) if videos is not None and os.path.isfile(num_frames_path) else {}
    out = []
    for uid, wav in wavs.items():
        if uid not in texts:
            skipped.add(set_name, uid, f"no transcript in {os.path.join(set_dir, TEXT.file)}")
            continue
        words = len(texts[uid].split())
        if words == 0:
            skipped.add(set_name, uid, "empty transcript")
            continue
        frames = None
        if videos is not None:
            if uid not in videos:
                skipped.add(set_name, uid, f"not in {video_scp}")
                continue
            if uid in counts:
                frames = counts[uid]
            else:
                from espnet_omni_avsr.data.video_io import VideoReadError, video_info

                try:
                    frames = video_info(videos[uid])[0]
                except VideoReadError as e:
                    skipped.add(set_name, uid, f"unreadable video: {e}")
                    continue
            if frames <= 0:
                skipped.add(set_name, uid, f"zero duration ({frames} video frames)")
                continue
        out.append(Utt(uid, wav, words, frames))
    return out


def read_wave(path: str) -> np.ndarray:
    """A wav.scp entry -> (N,) float32 mono at 16 kHz; ItemError naming the file when unreadable."""
    from espnet_omni_avsr.prep.audio_prep import read_audio, resample

    audio, rate = read_audio(path)
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        logging.info(f"{path}: resampled {rate} -> {SAMPLE_RATE} Hz")
        mono = resample(mono, rate, SAMPLE_RATE)
    return mono.astype(np.float32)


class Featurizer:
    """16 kHz waveforms -> Whisper encoder frames (50 Hz), cut to the video and subsampled."""

    def __init__(self, whisper_dir: str, output_layer: int, subsample: int, device: str, cache_dtype: torch.dtype):
        from espnet_omni_avsr.encoders.whisper_encoder import WhisperEncoder
        from espnet_omni_avsr.frontends.whisper_logmel_frontend import WhisperLogMelFrontend

        self.frontend = WhisperLogMelFrontend(pad_to_30s=False, model_dir=whisper_dir).to(device).eval()
        self.encoder = WhisperEncoder(input_size=self.frontend.output_size(), model_dir=whisper_dir, frozen=True,
                                      output_layer=output_layer).to(device).eval()
        self.max_samples = self.frontend.n_samples  # 30 s
        self.exact_frames = self.encoder.exact_length  # 3000: WhisperEncoder's 30-s (unmasked) mode
        self.hop = self.frontend.hop_length
        self.subsample = subsample
        self.device = device
        self.cache_dtype = cache_dtype

    def output_size(self) -> int:
        return self.encoder.output_size()

    @torch.no_grad()
    def __call__(self, waves: List[np.ndarray], video_frames: List[Optional[int]]) -> List[torch.Tensor]:
        lens = torch.tensor([len(w) for w in waves])
        batch = torch.zeros(len(waves), int(lens.max()))
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(w)
        feats, flens = self.frontend(batch.to(self.device), lens.to(self.device))
        enc, olens, _ = self.encoder(feats, flens)
        if all(v is not None for v in video_frames):
            enc, olens = cut_to_video(enc, olens, torch.tensor(video_frames, device=enc.device))
        enc, olens = subsample_frames(enc, olens, self.subsample)
        return [enc[i, : olens[i]].to("cpu", self.cache_dtype).clone() for i in range(len(waves))]


def featurize_set(utts: List[Utt], set_name: str, featurizer: Featurizer, batch_size: int,
                  skipped: Skipped, fps: float) -> List[Utt]:
    """Reads every utterance's audio, sets its duration, label and features; returns those kept."""
    kept: List[Utt] = []
    chunk = max(batch_size * 8, 1)  # read this many, sort them by length, batch them
    with tqdm(total=len(utts), desc=f"whisper features {set_name}", unit="utt", file=sys.stderr) as bar:
        for start in range(0, len(utts), chunk):
            ready: List[Tuple[Utt, np.ndarray]] = []
            for u in utts[start:start + chunk]:
                try:
                    wave = read_wave(u.wav)
                except ItemError as e:
                    skipped.add(set_name, u.uid, f"unreadable audio: {e}")
                    bar.update(1)
                    continue
                if len(wave) // featurizer.hop == 0:
                    skipped.add(set_name, u.uid, f"zero duration ({len(wave)} audio samples)")
                    bar.update(1)
                    continue
                if len(wave) > featurizer.max_samples:
                    skipped.add(set_name, u.uid, f"{len(wave) / SAMPLE_RATE:.1f} s of audio: longer than "
                                                 f"Whisper's {featurizer.max_samples / SAMPLE_RATE:.0f} s")
                    bar.update(1)
                    continue
                u.seconds = u.video_frames / fps if u.video_frames is not None else len(wave) / SAMPLE_RATE
                u.wps = u.words / u.seconds
                ready.append((u, wave))
            ready.sort(key=lambda item: len(item[1]))
            # WhisperEncoder runs a batch whose longest input is exactly 3000 frames in its unmasked
            # 30-s mode: keep such utterances apart from shorter ones
            groups = [[r for r in ready if len(r[1]) // featurizer.hop < featurizer.exact_frames],
                      [r for r in ready if len(r[1]) // featurizer.hop >= featurizer.exact_frames]]
            for group in groups:
                for b in range(0, len(group), batch_size):
                    part = group[b:b + batch_size]
                    feats = featurizer([w for _, w in part], [u.video_frames for u, _ in part])
                    for (u, _), f in zip(part, feats):
                        u.feats = f
                        kept.append(u)
                    bar.update(len(part))
    return kept


# --------------------------------------------------------------------------- training


def collate(utts: List[Utt], device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([u.feats.size(0) for u in utts])
    x = torch.zeros(len(utts), max(int(lens.max()), 1), utts[0].feats.size(1))
    for i, u in enumerate(utts):
        x[i, : lens[i]] = u.feats.float()
    return x.to(device), lens.to(device)


@torch.no_grad()
def evaluate(model: SpeechRatePredictor, utts: List[Utt], mean_wps: float, batch_size: int,
             device: str) -> Dict[str, float]:
    """MSE on the relative rate and MAE in words per second, of the model and of the constant
    predictor (mean_wps)."""
    was_training = model.training
    model.eval()
    preds = []
    for b in range(0, len(utts), batch_size):
        part = utts[b:b + batch_size]
        preds.append(model.forward_subsampled(*collate(part, device)).float().cpu())
    model.train(was_training)
    pred = torch.cat(preds).double()
    wps = torch.tensor([u.wps for u in utts], dtype=torch.float64)
    target = wps / mean_wps
    return dict(
        mse=float(((pred - target) ** 2).mean()),
        mae_wps=float((pred * mean_wps - wps).abs().mean()),
        baseline_mse=float(((1.0 - target) ** 2).mean()),
        baseline_mae_wps=float((mean_wps - wps).abs().mean()),
    )


def train(model: SpeechRatePredictor, train_utts: List[Utt], valid_utts: List[Utt], mean_wps: float,
          args, device: str) -> Tuple[Dict[str, torch.Tensor], List[dict]]:
    """AdamW on the MSE; returns the best epoch's weights (lowest valid MAE) and each epoch's record."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = max(args.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
    rng = random.Random(args.seed)
    best_state, best_mae, history = None, math.inf, []
    order = list(range(len(train_utts)))
    for epoch in range(1, args.epochs + 1):
        model.train()
        rng.shuffle(order)
        total, n = 0.0, 0
        t0 = time.time()
        for b in range(0, len(order), args.batch_size):
            part = [train_utts[i] for i in order[b:b + args.batch_size]]
            x, lens = collate(part, device)
            target = torch.tensor([u.wps / mean_wps for u in part], device=device)
            loss = torch.nn.functional.mse_loss(model.forward_subsampled(x, lens).float(), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(part)
            n += len(part)
        valid = evaluate(model, valid_utts, mean_wps, args.batch_size, device)
        record = dict(epoch=epoch, train_mse=total / n, valid_mse=valid["mse"], valid_mae_wps=valid["mae_wps"],
                      seconds=round(time.time() - t0, 2))
        history.append(record)
        better = valid["mae_wps"] < best_mae
        if better:
            best_mae = valid["mae_wps"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        logging.info(f"epoch {epoch}: train MSE {record['train_mse']:.4f}, valid MSE {valid['mse']:.4f}, "
                     f"valid MAE {valid['mae_wps']:.3f} words/s{' (best)' if better else ''}")
    return best_state, history


# --------------------------------------------------------------------------- main


def _check_args(args) -> None:
    for name in ("epochs", "batch_size", "feat_batch_size", "num_threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not args.fps > 0:
        raise ValueError(f"--fps must be > 0, got {args.fps}")
    if args.ngpu > 0 and not torch.cuda.is_available():
        raise ValueError(f"--ngpu {args.ngpu}, but no CUDA device is available")
    for name in ("train_dir", "valid_dir", "whisper_dir"):
        if not os.path.isdir(getattr(args, name)):
            raise ValueError(f"--{name} {getattr(args, name)}: not a directory")


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        _check_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        return _main(args)
    except PrepError as e:  # a malformed or missing list file of a set dir: the message names file:line
        logging.error(f"train_speech_rate: {e}")
        return 1


def _main(args) -> int:
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    device = "cuda" if args.ngpu > 0 else "cpu"
    cache_dtype = getattr(torch, args.cache_dtype)

    skipped = Skipped()
    featurizer = Featurizer(args.whisper_dir, args.whisper_output_layer, args.subsample, device, cache_dtype)
    sets = {}
    for set_name, set_dir in (("train", args.train_dir), ("valid", args.valid_dir)):
        utts = list_set(set_dir, set_name, skipped)
        sets[set_name] = featurize_set(utts, set_name, featurizer, args.feat_batch_size, skipped, args.fps)
        logging.info(f"{set_name}: {len(sets[set_name])} utterances kept, {skipped.count(set_name)} skipped")
        if not sets[set_name]:
            logging.error(f"{set_dir}: no usable utterances ({skipped.count(set_name)} skipped)")
            return 1
    train_utts, valid_utts = sets["train"], sets["valid"]
    mean_wps = float(np.mean([u.wps for u in train_utts]))

    model = SpeechRatePredictor(
        featurizer.output_size(), hidden_size=args.hidden_size, num_layers=args.num_layers,
        num_heads=args.num_heads, ffn_size=args.ffn_size, subsample=args.subsample, dropout=args.dropout,
        positional=args.positional,
    ).to(device)
    del featurizer  # Whisper is no longer needed
    best_state, history = train(model, train_utts, valid_utts, mean_wps, args, device)
    model.load_state_dict(best_state)
    valid = evaluate(model, valid_utts, mean_wps, args.batch_size, device)
    best = min(history, key=lambda r: r["valid_mae_wps"])

    meta = dict(
        encoder=dict(type="whisper", model_dir=os.path.abspath(args.whisper_dir),
                     output_layer=args.whisper_output_layer, output_size=model.input_size, frame_rate_hz=50,
                     frontend=dict(type="whisper_logmel", pad_to_30s=False, normalize_waveform=True)),
        input="whisper encoder frames (50 Hz) cut to min(audio frames, 2 x video frames) when there is a video",
        fps=args.fps,
        label="(words / duration) / mean_wps; duration = video frames / fps, else audio seconds",
        train_dir=os.path.abspath(args.train_dir), valid_dir=os.path.abspath(args.valid_dir),
        num_train=len(train_utts), num_valid=len(valid_utts),
        skipped=dict(train=skipped.count("train"), valid=skipped.count("valid")),
        best_epoch=best["epoch"], epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, seed=args.seed,
        valid_mae_wps=valid["mae_wps"], valid_baseline_mae_wps=valid["baseline_mae_wps"],
        valid_mse=valid["mse"], valid_baseline_mse=valid["baseline_mse"],
        valid_mean_wps=float(np.mean([u.wps for u in valid_utts])),
        history=history,
    )
    record = dict(output=os.path.abspath(args.output), mean_wps=mean_wps, kwargs=model.kwargs, meta=meta,
                  skipped_utterances=skipped.items)
    # the record first, both atomically: stage 8 takes an existing predictor as finished
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = f"{json_path(args.output)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, json_path(args.output))
    save_predictor(args.output, model, mean_wps, meta)

    print(f"speech-rate predictor -> {args.output} (and {json_path(args.output)})")
    print(f"train: {len(train_utts)} utterances ({skipped.count('train')} skipped), "
          f"mean {mean_wps:.3f} words/s")
    print(f"valid: {len(valid_utts)} utterances ({skipped.count('valid')} skipped), "
          f"mean {meta['valid_mean_wps']:.3f} words/s")
    print(f"best epoch {best['epoch']}/{args.epochs}: valid MAE {valid['mae_wps']:.3f} words/s "
          f"(constant predictor {valid['baseline_mae_wps']:.3f} words/s); valid MSE {valid['mse']:.4f} "
          f"(constant {valid['baseline_mse']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
