"""AV-HuBERT encoder time per second of video on CPU (random weights, eval mode, batch 1).

    python benchmarks/avhubert_encoder.py [--size base|large] [--seconds 2 5] [--reps 3] [--threads 2]
        [--compare]

Times the mouth_roi front end + AVHubertEncoder (visual-only) on 96x96 uint8 frames at 25 fps and
prints the median seconds of compute per second of video for each clip length. --compare also
builds the ESPnet-based reference of tests/encoders/avhubert_reference.py with random weights at
the chosen size, loads its weights into the port through an official-layout checkpoint file and
prints the maximum absolute difference of the outputs.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from espnet_omni_avsr.encoders.avhubert_encoder import AVHubertEncoder
from espnet_omni_avsr.encoders.avhubert_modules import BASE, LARGE
from espnet_omni_avsr.frontends.mouth_roi_frontend import MouthROIFrontend

SIZES = {"base": BASE, "large": LARGE}


def time_per_second(size: str, seconds: float, reps: int) -> float:
    torch.manual_seed(0)
    frontend = MouthROIFrontend().eval()
    encoder = AVHubertEncoder(input_size=frontend.output_size(), **SIZES[size].as_dict()).eval()
    n = int(seconds * 25)
    video = torch.randint(0, 256, (1, n, 96, 96), dtype=torch.uint8)
    lengths = torch.tensor([n])
    times = []
    with torch.inference_mode():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            encoder(*frontend(video, lengths))
            if i:  # the first run warms up
                times.append(time.perf_counter() - t0)
    return statistics.median(times) / seconds


def compare(size: str) -> float:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from espnet_omni_avsr.encoders.avhubert_checkpoint import official_checkpoint
    from tests.encoders.avhubert_reference import build_reference, official_state_dict, reference_forward

    arch = SIZES[size]
    reference = build_reference(arch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.pt")
        torch.save(official_checkpoint(official_state_dict(reference), arch), path)
        encoder = AVHubertEncoder(input_size=88 * 88, checkpoint=path)
    video = torch.randn(2, 50, 88, 88)
    lengths = torch.tensor([50, 35])
    video[1, 35:] = 0
    pad = torch.arange(50)[None, :] >= lengths[:, None]
    expected = reference_forward(reference, video, None, pad)
    with torch.no_grad():
        got, _, _ = encoder(video, lengths)
    return float((got[~pad] - expected[~pad]).abs().max())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for s in args.seconds:
        print(f"AV-HuBERT {args.size}, {s:g} s clip, {args.threads} threads: "
              f"{time_per_second(args.size, s, args.reps):.3f} s of compute per second of video")
    if args.compare:
        print(f"max abs difference to the ESPnet-based reference ({args.size}, via checkpoint): {compare(args.size):.3g}")


if __name__ == "__main__":
    main()
