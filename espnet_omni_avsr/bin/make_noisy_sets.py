#!/usr/bin/env python3
"""Stage 5: training and test babble from disjoint halves of the training speakers, and fixed noisy
copies of test sets mixed with the test babble.

    # babble from dump/train, then dump/test_snr10 ... _snr-5 mixed with the test babble
    python -m espnet_omni_avsr.bin.make_noisy_sets --train_dir dump/train --noise_out dump/noise \
        --src dump/test [dump/test2 ...] --snrs 10 5 0 -5 [--seed 0] \
        [--num_speakers 30] [--babble_duration 120]

    # your own noise for the noisy sets (MUSAN-style folder, searched recursively, or wav files);
    # with --train_dir/--noise_out the training babble is made as well
    python -m espnet_omni_avsr.bin.make_noisy_sets --noise_dir /data/musan/noise --src dump/test --snrs 0 -5
    python -m espnet_omni_avsr.bin.make_noisy_sets --noise my_noise.wav --src dump/test --snrs 0

The training speakers (utt2spk of --train_dir) are split into two disjoint halves by a seeded
permutation (prep/noise.py, "Speaker folds"):

    <noise_out>/babble.wav        TRAINING babble, fold 0/2: the training noise of the configs
                                  (preprocessor_conf.noise: dump/noise/babble.wav)
    <noise_out>/babble_test.wav   TEST babble, fold 1/2: the only noise of the noisy test sets
                                  (made only when there are noisy sets to mix and no --noise/--noise_dir)

each with <stem>.json (seed, streams, utterances) and <stem>_speakers.txt (its speakers, one a
line); the two lists are checked to share no speaker. Without --src, or with an empty --snrs (the
recipes' `--snrs ""`: clean test sets only), only the training babble is made. Each noisy set
<src>_snr<X> (beside --src, or under --out_root) holds wav/, wav.scp, snr.tsv, noise_speakers.txt
(the test babble's speakers; absent with your own noise, whose files snr.tsv names), .done and the
other files of --src copied. Definitions (SNR, babble, segment choice, clipping):
espnet_omni_avsr/prep/noise.py. Finished outputs are skipped on a rerun with the same arguments;
other arguments are an error unless --force.
Exit status 0 on success, 1 on an error (logged).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from espnet_omni_avsr.names import MODALITIES, noisy_set_name
from espnet_omni_avsr.prep.errors import PrepError
from espnet_omni_avsr.prep.noise import (
    TEST_BABBLE_FOLD,
    TRAIN_BABBLE_FOLD,
    NoiseBank,
    check_disjoint_babbles,
    make_babble,
    make_noisy_set,
)
from espnet_omni_avsr.utils.cli import add_log_level, setup_logging

BABBLE_NAME = "babble.wav"  # the training babble (the configs' preprocessor_conf.noise)
TEST_BABBLE_NAME = "babble_test.wav"  # the test babble (the noisy test sets)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("babble (training babble always; test babble unless --noise or --noise_dir)")
    g.add_argument("--train_dir", help="Kaldi-style dir with wav.scp and utt2spk (training speech)")
    g.add_argument("--noise_out", help=f"folder for {BABBLE_NAME} (training) and {TEST_BABBLE_NAME} (test)")
    g.add_argument("--num_speakers", type=int, default=30, help="streams summed per babble, one speaker each")
    g.add_argument("--babble_duration", type=float, default=120.0, help="seconds of each babble")
    n = p.add_argument_group("other noise for the noisy sets").add_mutually_exclusive_group()
    n.add_argument("--noise", nargs="+", help="noise wav file(s)")
    n.add_argument("--noise_dir", help="a folder searched recursively for *.wav (MUSAN-style)")
    m = p.add_argument_group("noisy sets")
    m.add_argument("--src", nargs="+", default=[], help="Kaldi-style dirs with wav.scp (16 kHz mono)")
    m.add_argument("--snrs", type=float, nargs="*", default=None,
                   help="SNRs in dB, one output set each; given without values: no noisy sets")
    m.add_argument("--out_root", default=None, help="where <src name>_snr<X> dirs go (default: beside each --src)")
    m.add_argument("--subtype", default="PCM_16", help="soundfile subtype of the written wavs")
    p.add_argument("--seed", type=int, default=0, help="babble seed; with the utterance id, fixes each segment")
    p.add_argument("--force", action="store_true", help="rewrite outputs made with other arguments")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_log_level(p)
    return p


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if bool(args.src) != (args.snrs is not None):
        parser.error("--src and --snrs go together (an empty --snrs makes no noisy sets)")
    if args.src and not args.snrs:
        logging.info(f"no SNRs given: no noisy copies of {' '.join(args.src)}")
    own_noise = args.noise or args.noise_dir
    babble = bool(args.train_dir or args.noise_out)
    if babble and not (args.train_dir and args.noise_out):
        parser.error("--train_dir and --noise_out go together (the babble's speech and its folder)")
    if not own_noise and not babble:
        parser.error("give --train_dir and --noise_out (babble), or --noise / --noise_dir")
    noisy_sets = bool(args.src and args.snrs)
    report = {}

    def babble_of(fold, name):
        train, out = Path(args.train_dir), Path(args.noise_out) / name
        rec = make_babble(
            train / MODALITIES["audio"].scp, train / "utt2spk", out, num_speakers=args.num_speakers,
            duration_s=args.babble_duration, seed=args.seed, speaker_fold=fold,
            force=args.force, progress=not args.no_progress,
        )
        report[str(out)] = {"status": rec["status"], "num_distinct_speakers": rec["num_distinct_speakers"]}
        return out

    try:
        noise_speakers = None
        if babble:
            train_babble = babble_of(TRAIN_BABBLE_FOLD, BABBLE_NAME)
        if own_noise:
            bank = NoiseBank.from_dir(args.noise_dir) if args.noise_dir else NoiseBank(args.noise)
        elif noisy_sets:
            test_babble = babble_of(TEST_BABBLE_FOLD, TEST_BABBLE_NAME)
            noise_speakers = check_disjoint_babbles(train_babble, test_babble)
            bank = NoiseBank([test_babble])
        for src in (Path(s.rstrip("/")) for s in args.src):
            out_root = Path(args.out_root) if args.out_root else src.parent
            for snr in args.snrs or []:
                out = out_root / noisy_set_name(src.name, snr)
                r = make_noisy_set(src, out, bank, snr, seed=args.seed, subtype=args.subtype,
                                   force=args.force, progress=not args.no_progress,
                                   noise_speakers=noise_speakers)
                report[str(out)] = {"status": r["status"], "num_utts": r.get("num_utts"),
                                    "clipped": len(r.get("clipped", []))}
    except (PrepError, OSError, ValueError, RuntimeError) as e:
        logging.error("%s", e)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
