"""Golden numbers: the losses, statistics, gradients and greedy hypotheses of every model type the
project's configs build, pinned so that a refactoring cannot change behaviour unseen.

Each case is a conf YAML of the project (or one with a few keys changed: the recipe's warm-up, token
CTC with and without a restricted vocabulary, ...) with its pretrained folders replaced by tiny random
ones, its trainable encoders shrunk and the LLM in float32; the model *type* (tasks, rates, rate sampling, LoRA strategy,
loss terms, front ends) is the config's own. For each case, on a fixed batch of two utterances:
- eval mode: the loss and every statistic the model reports;
- training mode, seeded: the loss, the statistics, and the norm of the gradient over the trainable
  parameters (with their count), after one backward;
- greedy decoding of every task x rate condition the model can decode (hypotheses and token counts).

Regenerate (only when a change of behaviour is intended, and say so in the commit):
    tools/venv/bin/python -m tests.models.golden --write
Pin new cases (a new config) without recomputing the others:
    tools/venv/bin/python -m tests.models.golden --add sinks/multitask_small_sink
Re-pin cases whose config was changed on purpose (say so in the commit), leaving the others as they are:
    tools/venv/bin/python -m tests.models.golden --repin omni_avsr/llama_mtsk_small
"""
import argparse
import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
VALUES = Path(__file__).with_name("golden_values.json")
CONF_DIRS = ("debug", "llama_avsr", "omni_avsr", "sinks", "mome", "mms_llama")
TEXTS = ["bin blue at f two now", "lay green by a nine again"]


# packed case -> the pinned padded case it must equal (test_golden.py): eager attention, no dropout
# in the LLM (LoRA dropout would draw its masks over another layout); omni_s: all tasks in one pass,
# omni_t: a pass per task (task LoRA), llama_mtsk: a pass per task and rate pair
PACKED_TWINS = {
    "variant/omni_s_small_packed": "omni_avsr/omni_s_small",
    "variant/omni_t_small_packed": "omni_avsr/omni_t_small",
    "variant/llama_mtsk_small_packed": "omni_avsr/llama_mtsk_small",
}


def _set(config: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = config
    for k in path:
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
    node[last] = value


def _load(name: str) -> dict:
    from espnet_omni_avsr.utils.config_stack import load_config

    return load_config(str(ROOT / "conf" / f"{name}.yaml"))


def variants() -> Dict[str, tuple]:
    """case name -> (conf YAML name, overrides {dotted key: value} or the name of an overlay YAML
    stacked on it); a token CTC `vocab` becomes the tiny transcript file."""
    cases = {}
    for d in CONF_DIRS:
        for p in sorted((ROOT / "conf" / d).glob("*.yaml")):
            if p.stem.endswith("_warmup"):  # overlays, not configs of their own
                continue
            cases[f"{d}/{p.stem}"] = (f"{d}/{p.stem}", {})
    aux = [  # the small configs' losses: LLM cross entropy, lip character CTC, distillation
        {"type": "llm_cross_entropy"},
        {"type": "char_ctc", "weight": 0.3, "conf": {"modality": "video"}},
        {"type": "av_distill", "weight": 1.0},
    ]
    # egs2/avgrid/avsr1's warm-up of its default config (an overlay YAML): no LLM pass, aux losses only
    cases["variant/multitask_small_warmup"] = ("omni_avsr/multitask_small", "omni_avsr/multitask_small_warmup")
    # run_mms.sh's warm-up of MMS-LLaMA (an overlay YAML): token CTC on the fused stream's queries, no LLM pass
    # (that term pins 0 here: the tiny tokenizer spells a text in 15 ids, more than 2 x 3 queries align;
    # tests/losses/test_token_ctc.py tests it on a stream long enough)
    cases["variant/mms_small_warmup"] = ("mms_llama/mms_small", "mms_llama/mms_small_warmup")
    cases["variant/token_ctc_full_vocab_with_llm"] = ("debug/multitask_tiny", {"losses": aux + [
        {"type": "token_ctc", "weight": 0.5, "conf": {"modality": "audio"}},
        {"type": "token_ctc", "weight": 0.25, "conf": {"modality": "video"}},
    ]})
    cases["variant/rates_all_pairs_task_lora_separate_passes"] = (
        "omni_avsr/omni_t_small",
        {"model_conf.rate_sampling": "all_pairs", "model_conf.batched_tasks": False},
    )
    cases["variant/shared_projector_one_pair"] = ("omni_avsr/omni_s_small", {"share_projector": True})
    for packed, padded in PACKED_TWINS.items():  # model_conf.pack_sequences: the padded case's numbers
        cases[packed] = (padded, {"model_conf.pack_sequences": True})
    return cases



def tiny_config(name: str, overrides: dict, dirs: dict) -> dict:
    """The conf YAML with tiny pretrained folders, shrunk trainable encoders and the overrides."""
    from espnet_omni_avsr.utils.config_stack import merge

    config = copy.deepcopy(_load(name))
    if isinstance(overrides, str):
        config = merge(config, _load(overrides))
    else:
        for key, value in overrides.items():
            _set(config, key, copy.deepcopy(value))
    for spec in config.get("losses") or []:
        if (spec.get("conf") or {}).get("vocab"):
            spec["conf"]["vocab"] = dirs["vocab"]
    config["decoder_conf"]["model_dir"] = dirs["llm"]
    config["decoder_conf"]["gradient_checkpointing"] = False
    # bf16 arithmetic on the CPU depends on the hardware (avx512_bf16 / AMX kernels round differently
    # from the emulated path): the golden numbers are measured in float32 so that they hold anywhere
    config["decoder_conf"]["dtype"] = "float32"
    if config.get("audio_encoder"):
        config["audio_encoder_conf"]["model_dir"] = dirs["whisper"]
        if "dtype" in config["audio_encoder_conf"]:  # "auto" would follow the machine, as above
            config["audio_encoder_conf"]["dtype"] = "float32"
    venc = config.get("video_encoder")
    if venc in ("conformer", "transformer"):
        config["video_encoder_conf"].update(output_size=16, attention_heads=2, linear_units=32, num_blocks=1)
    elif venc == "avhubert":
        conf = config["video_encoder_conf"]
        for k in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                  "conv_pos", "conv_pos_groups"):
            conf.pop(k, None)
        conf["checkpoint"] = dirs["avhubert"]
    if config.get("video_frontend") in ("light", "pixel"):
        config["video_frontend_conf"]["output_size"] = 16
    for m in ("audio", "video"):
        if config.get(f"{m}_projector"):
            config[f"{m}_projector_conf"]["hidden_size"] = 16
    if config.get("fused_compressor") == "qformer":
        config["fused_compressor_conf"].update(hidden_size=16, num_heads=2)
    config["preprocessor_conf"] = {}
    return config


def make_batch(tokenizer) -> dict:
    """Two utterances (1.0 s and 0.6 s: random audio and video, the first two TEXTS)."""
    from tests.models.test_avsr_llm_model import make_batch as batch_of

    return batch_of(tokenizer, n=2, seed=0)


def _floats(stats: dict) -> dict:
    return {k: float(v) for k, v in sorted(stats.items())}


def measure(config: dict) -> dict:
    """The golden record of one case."""
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
    from espnet_omni_avsr.utils.rates import conditions

    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    model = AVSRLLMTask.build_model(args)
    batch = make_batch(model.decoder.tokenizer)
    out = {}
    model.eval()
    with torch.no_grad():
        loss, stats, weight = model(**batch)
    out["eval"] = dict(loss=float(loss), stats=_floats(stats), weight=float(weight))

    model.train()
    torch.manual_seed(1)
    loss, stats, weight = model(**batch)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    sq = sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None)
    out["train"] = dict(
        loss=float(loss.detach()), stats=_floats(stats), grad_norm=sq ** 0.5,
        n_trainable=sum(p.numel() for p in params), n_with_grad=sum(p.grad is not None for p in params),
    )

    model.eval()
    decode = {}
    inputs = {k: v for k, v in batch.items() if not k.startswith("text")}
    for c in conditions(config):
        hyps, n_tok = model.recognize(**inputs, task=c["task"], rates=c["rates"], max_new_tokens=5)
        decode[c["label"]] = dict(hyps=list(hyps), n_tokens=[int(n) for n in n_tok])
    out["greedy"] = decode
    return out


def _sharpen(llm_dir: str) -> None:
    """Give the random LLM an untied output layer of unit-variance rows. With the tied embeddings
    of the tiny Llama, the last hidden state stays near the last input token's embedding and greedy
    decoding repeats the instruction's final "." whatever the input; with its own head the
    hypotheses depend on the audio and video tokens."""
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(llm_dir, local_files_only=True)
    llm.config.tie_word_embeddings = False
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(llm.config.hidden_size, llm.config.vocab_size, bias=False)
    head.weight.data = torch.randn(head.weight.shape, generator=g)
    llm.set_output_embeddings(head)
    llm.save_pretrained(llm_dir)


def tiny_dirs(root: str) -> dict:
    """Tiny random LLM, Whisper and AV-HuBERT, and a transcript file, under `root` (built once)."""
    from espnet_omni_avsr.encoders.avhubert_checkpoint import official_checkpoint
    from espnet_omni_avsr.encoders.avhubert_modules import AVHubertArch, AVHubertModel
    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_llama, build_tiny_whisper

    root = Path(root)
    dirs = dict(llm=str(root / "llm"), whisper=str(root / "whisper"), avhubert=str(root / "avhubert.pt"),
                vocab=str(root / "text"))
    if not (root / "done").exists():
        build_tiny_llama(dirs["llm"])
        _sharpen(dirs["llm"])
        build_tiny_whisper(dirs["whisper"])
        torch.manual_seed(0)
        arch = AVHubertArch(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                            encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4)
        torch.save(official_checkpoint(AVHubertModel(arch).state_dict(), arch), dirs["avhubert"])
        Path(dirs["vocab"]).write_text("".join(f"u{i} {t}\n" for i, t in enumerate(TEXTS + ["set white with q one soon"])))
        (root / "done").write_text("")
    return dirs


def compute_all(dirs: dict, names: Optional[List[str]] = None) -> dict:
    return {name: measure(tiny_config(conf, overrides, dirs))
            for name, (conf, overrides) in variants().items() if names is None or name in names}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help=f"write {VALUES.name} (else print)")
    p.add_argument("--add", nargs="+", default=None, metavar="CASE",
                   help=f"compute only these new cases and add them to {VALUES.name}")
    p.add_argument("--repin", nargs="+", default=None, metavar="CASE",
                   help=f"recompute only these pinned cases (their config changed on purpose) in {VALUES.name}")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    if a.add or a.repin:
        names = a.add or a.repin
        values = json.loads(VALUES.read_text())
        unknown = sorted(set(names) - set(variants()))
        present = sorted(set(names) & set(values))
        if a.add and (unknown or present):
            raise SystemExit(f"--add: unknown cases {unknown}, already pinned {present} (use --repin for those)")
        missing = sorted(set(names) - set(values))
        if a.repin and (unknown or missing):
            raise SystemExit(f"--repin: unknown cases {unknown}, not pinned yet {missing} (use --add for those)")
        with tempfile.TemporaryDirectory() as tmp:
            values.update(compute_all(tiny_dirs(tmp), names))
        VALUES.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
        print(f"{'added' if a.add else 're-pinned'} {len(names)} cases in {VALUES}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        values = compute_all(tiny_dirs(tmp))
    text = json.dumps(values, indent=1, sort_keys=True) + "\n"
    if a.write:
        VALUES.write_text(text)
        print(f"wrote {len(values)} cases to {VALUES}")
    else:
        print(text)


if __name__ == "__main__":
    main()
