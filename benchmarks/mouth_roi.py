#!/usr/bin/env python3
"""Mouth-ROI extraction speed (stage 2 face modes), in frames per second per core.

    OMP_NUM_THREADS=1 python benchmarks/mouth_roi.py [--frames 250] [--size 160] [--backends mediapipe dlib]

Times one process on a synthetic face clip (tests/prep/fake_lrs_trees.py: the astronaut photograph
moving and scaling, 25 fps): decode + landmarks + interpolation/smoothing + alignment + crop +
H.264 write, i.e. what one worker of ``preprocess_video --nj N`` does per clip; with N workers on
N cores the throughput is about N times this. Also prints the landmark step alone.
Not a test: the numbers depend on the machine and its load.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from espnet_omni_avsr.prep.face.face_video_prep import read_rgb_video  # noqa: E402
from espnet_omni_avsr.prep.sharding import WorkItem  # noqa: E402
from espnet_omni_avsr.prep.video_prep import build_video_prep  # noqa: E402
from tests.prep import fake_lrs_trees as fake  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250, help="clip length in frames (25 fps)")
    parser.add_argument("--size", type=int, default=160, help="frame side in pixels (LRS2 160, LRS3 224)")
    parser.add_argument("--backends", nargs="+", default=["mediapipe", "dlib"])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    fake.SIZE = args.size
    with tempfile.TemporaryDirectory() as tmp:
        clip = os.path.join(tmp, "clip")
        fake.write_item(clip, seed=1, seconds=args.frames / fake.FPS)
        frames, _ = read_rgb_video(clip + ".mp4")
        print(f"clip: {len(frames)} frames of {args.size}x{args.size}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
        for backend in args.backends:
            try:
                prep = build_video_prep(backend, os.path.join(tmp, backend, "video"))
            except Exception as e:  # a backend that is not installed
                print(f"{backend}: skipped ({e})")
                continue
            best_all = best_lm = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                prep.track(WorkItem("x-1", clip + ".mp4"), frames)
                best_lm = min(best_lm, time.perf_counter() - start)
                start = time.perf_counter()
                prep(WorkItem("x-1", clip + ".mp4"))
                best_all = min(best_all, time.perf_counter() - start)
            print(f"{backend}: {len(frames) / best_all:.1f} frames/s per core end to end "
                  f"({len(frames) / best_lm:.1f} frames/s landmarks alone)")


if __name__ == "__main__":
    main()
