"""Generate the AVGRID corpus (GRID sentences, TTS audio, rendered mouth video) in the LRS3 layout.

    python -m espnet_omni_avsr.bin.generate_avgrid --out_dir data/avgrid --num_utts 1000 --nj 2
    python -m espnet_omni_avsr.bin.generate_avgrid --out_dir data/avopen --text open   # open English

--text grid: the 51-word GRID grammar. --text open: plain English sentences from Debian's
`fortunes` (espnet_omni_avsr/prep/avgrid/open_text.py: normalisation, and the sentence split that
keeps every test sentence out of training).

See espnet_omni_avsr/prep/avgrid/generate.py for the layout. Rerunning with the same settings on
a finished corpus does nothing; an interrupted run resumes.
"""
import argparse
import logging

from espnet_omni_avsr.prep.avgrid.generate import TEXT_SOURCES, generate
from espnet_omni_avsr.utils.cli import setup_logging


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="corpus root (created; written via <out_dir>.partial)")
    parser.add_argument("--num_utts", type=int, default=1000)
    parser.add_argument("--num_speakers", type=int, default=40, help="split ~80/10/10 into train/valid/test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nj", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--corrupt", action="store_true", help="also write a few bad items, listed in <out_dir>/corrupt.tsv"
    )
    parser.add_argument("--text", choices=sorted(TEXT_SOURCES), default="grid",
                        help="sentence source: the GRID grammar or open English (fortunes)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    setup_logging("INFO")
    root = generate(
        args.out_dir,
        num_utts=args.num_utts,
        num_speakers=args.num_speakers,
        seed=args.seed,
        nj=args.nj,
        corrupt=args.corrupt,
        progress=not args.no_progress,
        text=args.text,
    )
    logging.info("AVGRID corpus at %s", root)


if __name__ == "__main__":
    main()
