"""How fast a lip front end learns to read: character CTC on a lip encoder alone, for a fixed time.

    python benchmarks/lip_frontend.py --dump_dir egs2/avgrid/avsr1/dump --frontend pixel --seconds 300
    python benchmarks/lip_frontend.py --dump_dir egs2/avgrid/avsr1/dump --frontend light --seconds 300

Trains front end -> 2-layer Transformer (the default recipe's lip encoder) -> character CTC head on
<dump_dir>/train (video.scp, text) for --seconds of wall time (batch 8, AdamW, constant learning rate
after 50 warm-up steps) and prints, every --eval_every steps, the seconds per step, the training loss
and, on <dump_dir>/dev, the CTC loss (nats per character) and the greedy character error rate.
Evaluation time is not counted. Videos are read once into memory.
"""
import argparse
import os
import sys
import time

import jiwer
import numpy as np
import torch
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from espnet_omni_avsr.data.collate import AVSRCollateFn  # noqa: E402
from espnet_omni_avsr.data.video_io import VideoScpReader  # noqa: E402
from espnet_omni_avsr.frontends.light_video_frontend import LightVideoFrontend  # noqa: E402
from espnet_omni_avsr.frontends.pixel_video_frontend import PixelVideoFrontend  # noqa: E402
from espnet_omni_avsr.losses.char_ctc import CharCTC  # noqa: E402

FRONTENDS = dict(light=LightVideoFrontend, pixel=PixelVideoFrontend)


def load(set_dir: str):
    texts = dict(line.rstrip("\n").split(" ", 1) for line in open(os.path.join(set_dir, "text")))
    videos, refs = [], []
    for key, frames in VideoScpReader(os.path.join(set_dir, "video.scp")).items():
        videos.append(frames)
        refs.append(" ".join(texts[key].lower().split()))
    return videos, refs


def pad(videos, idx):
    """(B, T_max, H, W) uint8 frames and (B,) lengths, padded as in training."""
    _, batch = AVSRCollateFn()([(str(i), {"video": videos[i]}) for i in idx])
    return batch["video"], batch["video_lengths"]


class LipEncoder(torch.nn.Module):
    def __init__(self, frontend: str):
        super().__init__()
        self.frontend = FRONTENDS[frontend](output_size=256)
        self.encoder = TransformerEncoder(
            256, output_size=256, attention_heads=4, linear_units=1024, num_blocks=2, input_layer="linear"
        )
        self.ctc = CharCTC(256)

    def forward(self, video, lengths):
        x, lengths = self.frontend(video, lengths)
        x, lengths, _ = self.encoder(x, lengths)
        return x, lengths


def evaluate(model, videos, refs):
    model.eval()
    loss, hyps = 0.0, []
    with torch.no_grad():
        for start in range(0, len(videos), 16):
            idx = list(range(start, min(start + 16, len(videos))))
            feats, lengths = model(*pad(videos, idx))
            loss += model.ctc.compute(feats, lengths, [refs[i] for i in idx]).item() * len(idx)
            hyps.extend(model.ctc.greedy(feats, lengths))
    model.train()
    return loss / len(videos), jiwer.cer(refs, hyps)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump_dir", required=True)
    p.add_argument("--frontend", choices=sorted(FRONTENDS), default="pixel")
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--eval_every", type=int, default=250)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train_videos, train_refs = load(os.path.join(a.dump_dir, "train"))
    dev_videos, dev_refs = load(os.path.join(a.dump_dir, "dev"))
    model = LipEncoder(a.frontend)
    print(f"frontend={a.frontend} params={sum(q.numel() for q in model.parameters()) / 1e6:.2f}M "
          f"train={len(train_videos)} dev={len(dev_videos)} threads={a.threads}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    trained, step, losses = 0.0, 0, []
    while trained < a.seconds:
        start = time.perf_counter()
        idx = rng.choice(len(train_videos), 8, replace=False).tolist()
        feats, lengths = model(*pad(train_videos, idx))
        loss = model.ctc.compute(feats, lengths, [train_refs[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        trained += time.perf_counter() - start
        losses.append(loss.item())
        step += 1
        if step % a.eval_every == 0 or trained >= a.seconds:
            dev_loss, cer = evaluate(model, dev_videos, dev_refs)
            print(f"step {step:5d} trained {trained:6.0f} s ({trained / step:.3f} s/step) "
                  f"train CTC {np.mean(losses[-a.eval_every:]):.3f} dev CTC {dev_loss:.3f} dev CER {cer:.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
