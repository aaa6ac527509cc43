"""Decode a data set: writes <output_dir>/text (utt hypothesis) and <output_dir>/llm_tokens."""
import argparse
import logging
import sys
import time
from pathlib import Path

from espnet2.utils import config_argparse
from espnet2.utils.types import str2triple_str
from tqdm import tqdm

from espnet_omni_avsr.recognizer import AVSRRecognizer
from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask


def get_parser() -> argparse.ArgumentParser:
    p = config_argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train_config", required=True, help="config.yaml of the trained model")
    p.add_argument("--model_file", default=None, help="trained weights (.pth)")
    p.add_argument("--data_path_and_name_and_type", type=str2triple_str, action="append", required=True,
                   help="e.g. dump/test/wav.scp,speech,sound and dump/test/video.scp,video,video")
    p.add_argument("--key_file", default=None, help="decode only these utterance ids")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--task", choices=["asr", "vsr", "avsr"], default=None, help="default: the trained task")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--beam_size", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--ngpu", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--log_level", default="INFO")
    return p


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    rec = AVSRRecognizer(
        args.train_config, args.model_file, device="cuda" if args.ngpu > 0 else "cpu",
        task=args.task, beam_size=args.beam_size, max_new_tokens=args.max_new_tokens,
    )
    loader = AVSRLLMTask.build_streaming_iterator(
        args.data_path_and_name_and_type,
        preprocess_fn=rec.preprocess,
        collate_fn=rec.collate,
        key_file=args.key_file,
        dtype="float32",
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        allow_variable_data_keys=True,
        inference=True,
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_utt, start = 0, time.perf_counter()
    with (out / "text").open("w", encoding="utf-8") as f_text, (out / "llm_tokens").open("w") as f_tok:
        for keys, batch in tqdm(loader, desc="decoding", unit="batch", file=sys.stderr):
            result = rec.recognize_batch(batch)
            for key, text, n in zip(keys, result["text"], result["llm_tokens"]):
                f_text.write(f"{key} {text}\n")
                f_tok.write(f"{key} {n}\n")
            n_utt += len(keys)
    logging.info(f"decoded {n_utt} utterances in {time.perf_counter() - start:.1f} s -> {out / 'text'}")


if __name__ == "__main__":
    main()
