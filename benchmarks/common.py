"""What the benchmarks share: a model built from a conf YAML through the task's registry, a random
batch of the recipe's shapes, and the reference random Llama of the speed comparisons.

Run the benchmarks as scripts (`python benchmarks/NAME.py`); this module sits beside them.
"""
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

# The LLM of the side-by-side speed comparison (issue "Speed"): a random Llama of hidden 256 x 4
# layers, 4 heads, 1 key/value head, FFN 1024, with SmolLM2's real tokenizer and vocabulary.
REFERENCE_LLM = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=1, intermediate_size=1024)


def reference_llm(pretrained_dir: str, cache_dir: Optional[str] = None) -> str:
    """The folder of the reference random Llama (built once, seed 0, next to `pretrained_dir`)."""
    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_llama

    out = Path(cache_dir or pretrained_dir) / "reference-random-llama-256x4"
    if not (out / "config.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        build_tiny_llama(str(tmp), tokenizer_dir=os.path.join(pretrained_dir, "SmolLM2-135M-Instruct"),
                         **REFERENCE_LLM)
        tmp.rename(out)
    return str(out)


def add_model_options(parser) -> None:
    """The options of which model a benchmark builds, beyond --config: --set and --reference_llm;
    give the parsed arguments to :func:`llm_dir_of`."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a config value")
    parser.add_argument("--reference_llm", action="store_true",
                        help="the comparison's random Llama (hidden 256 x 4 layers, SmolLM2 vocabulary) as the LLM")


def llm_dir_of(args) -> Optional[str]:
    """The LLM folder that --reference_llm asks for (built on first use), else None: the config's."""
    return reference_llm(args.pretrained_dir) if args.reference_llm else None


def apply_overrides(config: dict, overrides: Sequence[str]) -> dict:
    """`--set KEY=VALUE` items (dotted key, YAML value) written into `config`."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = config
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return config


def build(config_path: str, pretrained_dir: str, pad_to_30s: bool = False, llm_dtype: Optional[str] = None,
          overrides: Sequence[str] = (), overlay: Optional[str] = None, llm_dir: Optional[str] = None):
    """The model of `config_path` (+ `overlay`, + `--set KEY=VALUE` overrides) with its pretrained
    folders looked up in `pretrained_dir` (or the LLM at `llm_dir`)."""
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
    from espnet_omni_avsr.utils.config_stack import load_config, merge

    config = load_config(config_path)
    if overlay:
        with open(overlay) as f:
            config = merge(config, yaml.safe_load(f))
    apply_overrides(config, overrides)
    for key in ("audio_encoder_conf", "decoder_conf"):
        conf = config.get(key) or {}
        if conf.get("model_dir"):
            conf["model_dir"] = os.path.join(pretrained_dir, os.path.basename(conf["model_dir"]))
    if llm_dir:
        config["decoder_conf"]["model_dir"] = llm_dir
    if llm_dtype:
        config["decoder_conf"]["dtype"] = llm_dtype
    if config.get("audio_frontend_conf") is not None:
        config["audio_frontend_conf"]["pad_to_30s"] = pad_to_30s
    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    return AVSRLLMTask.build_model(args)


def random_batch(model, batch_size: int, seconds: float, text: str = "bin blue at f two now") -> dict:
    """Random 16-kHz audio and 96x96 video of `seconds`, with a short transcript, as collated."""
    tok = model.decoder.tokenizer
    ids = [torch.tensor(tok(text, add_special_tokens=False)["input_ids"])] * batch_size
    return dict(
        speech=torch.randn(batch_size, int(seconds * 16000)) * 0.1,
        speech_lengths=torch.full((batch_size,), int(seconds * 16000)),
        video=torch.randint(0, 256, (batch_size, int(seconds * 25), 96, 96), dtype=torch.uint8),
        video_lengths=torch.full((batch_size,), int(seconds * 25)),
        text=torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=-1),
        text_lengths=torch.tensor([len(t) for t in ids]),
    )


class LLMPositions:
    """Counts, per step, the LLM positions: real tokens and the padded layout of each pass (the
    decoder's prompts), and the positions the LLM's layers ran on (their inputs_embeds)."""

    def __init__(self, decoder):
        self.real = self.padded = self.computed = 0
        decoder.register_forward_pre_hook(self._prompt, with_kwargs=True)
        decoder.base_model.get_decoder().register_forward_pre_hook(self._layers, with_kwargs=True)

    def reset(self):
        self.real = self.padded = self.computed = 0

    def _prompt(self, module, args, kwargs):
        prompt = args[0] if args else kwargs["prompt"]
        self.real += int(prompt.mask.sum())
        self.padded += prompt.mask.numel()

    def _layers(self, module, args, kwargs):
        rows, length = kwargs["inputs_embeds"].shape[:2]
        self.computed += rows * length
