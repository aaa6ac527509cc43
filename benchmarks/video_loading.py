"""Reading mouth-ROI videos as the training loader does: mp4 (decoded each time) against npy frames.

    python benchmarks/video_loading.py --scp egs2/avgrid/avsr1/dump/train/video.scp [--num_utts 100]

Takes the first utterances of a video scp, stores their decoded frames as .npy in a temporary
folder (what stage 2 writes with `--video_prep_conf "{roi_format: npy}"`), then reads each
utterance through the `video` data type's loader (`VideoFramesLoader`) from both, alternately,
and prints the milliseconds per utterance and the bytes on disk per frame of each format.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from espnet_omni_avsr.data.espnet_video_type import VideoFramesLoader
from espnet_omni_avsr.prep import kaldi_dir


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scp", required=True, help="a video.scp of mp4 files")
    p.add_argument("--num_utts", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="times each utterance is read from each format")
    a = p.parse_args()
    source = dict(list(kaldi_dir.read_table(a.scp).items())[: a.num_utts])
    if not source:
        raise SystemExit(f"{a.scp}: no utterances")
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = VideoFramesLoader(a.scp)
        npy_scp = os.path.join(tmp, "video.scp")
        frames = 0
        for uid in source:
            array = mp4[uid].astype(np.uint8)
            frames += len(array)
            np.save(os.path.join(tmp, f"{uid}.npy"), array)
        kaldi_dir.write_table(npy_scp, {u: os.path.join(tmp, f"{u}.npy") for u in source})
        npy = VideoFramesLoader(npy_scp)
        times = {"mp4": [], "npy": []}
        for _ in range(a.rounds):
            for uid in source:
                for name, loader in (("mp4", mp4), ("npy", npy)):
                    t0 = time.perf_counter()
                    loader[uid]
                    times[name].append(time.perf_counter() - t0)
        sizes = {"mp4": sum(os.path.getsize(path) for path in source.values()),
                 "npy": sum(os.path.getsize(os.path.join(tmp, f"{u}.npy")) for u in source)}
    print(f"{len(source)} utterances, {frames} frames, each read {a.rounds} times per format")
    for name in ("mp4", "npy"):
        print(f"{name}: {1000 * statistics.median(times[name]):.2f} ms an utterance (median), "
              f"{sizes[name] / frames / 1024:.1f} KiB a frame on disk")
    print(f"npy reads {statistics.median(times['mp4']) / statistics.median(times['npy']):.0f}x faster")


if __name__ == "__main__":
    main()
