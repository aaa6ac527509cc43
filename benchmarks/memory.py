"""Peak memory (RSS) of training steps and of decoding, and what decoder_conf.gradient_checkpointing
saves, each measurement in a fresh process so that one peak never hides another.

    python benchmarks/memory.py                                   # the three parts below, defaults
    python benchmarks/memory.py --config conf/omni_avsr/multitask_small.yaml \
        --pretrained_dir egs2/avopen/avsr1/pretrained --batch_size 4 --seconds 3 --steps 3 \
        --paper_config conf/omni_avsr/omni_st_paper.yaml --paper_seconds 20 --paper_batch_size 2

1. train: --steps forward+backward+AdamW steps of --config (its models from --pretrained_dir) on a
   batch of --batch_size random --seconds clips (audio and 96x96 video) with a short transcript.
2. decode: greedy decoding (`recognize`, --max_new_tokens) of every task of the model on such a batch.
3. checkpointing: --paper_config at tiny width with gradient_checkpointing false, then true: a
   random Llama of the paper LLM's depth (PAPER_DEPTHS, or --llm_layers) at hidden --llm_hidden,
   a random Whisper of the paper encoder's depth at --encoder_width, the video encoder's blocks
   kept but narrowed, the pixel lip front end instead of ResNet-18 (whose width is fixed), and
   --paper_seconds clips so that the LLM's activations dominate. Tiny models are built with
   espnet_omni_avsr/pretrained/tiny_random.py (into --tiny_dir, reused when there).

Each line gives, in MB: the resident memory after building the model ("built"), the peak while
building ("build peak"), the peak during the steps or the decoding ("run peak": the high-water mark
is reset through /proc/self/clear_refs after building, Linux only; else only the lifetime peak of
getrusage is known) and run peak minus built (what the steps add: activations, gradients,
optimizer state). Part 3 also prints how often the first LLM layer's MLP runs per step (twice the
LLM passes when the layers are recomputed in backward) and the norm of the LLM adapter's gradients
(LoRA or MoME) after the first step (the same with and without checkpointing when gradients are
intact). It prints figures
and asserts nothing; --device cuda adds torch.cuda.max_memory_allocated.
--overlay / --set change the config of parts 1-2 as in benchmarks/model_step.py (e.g.
--overlay conf/overlays/float32.yaml on CPUs without bf16 units).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "MEMORY_JSON "

# Transformer layers of the paper models (their published configs), for tiny stand-ins of that depth.
PAPER_DEPTHS = {
    "Llama-3.2-1B": 16,
    "Llama-3.2-3B": 28,
    "Llama-3.1-8B": 32,
    "whisper-small.en": 12,
    "whisper-medium.en": 24,
    "whisper-large-v3": 32,
}


# --------------------------------------------------------------------------- memory readings


def is_llm_adapter(name: str) -> bool:
    """A parameter of the LLM adapter: peft's LoRA tensors or MoME's experts and routers."""
    return "lora_" in name or ".mome." in name


def _status_mb(field: str):
    """VmRSS / VmHWM of this process from /proc/self/status in MB (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except FileNotFoundError:
        return None
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


# --------------------------------------------------------------------------- the child: one measurement


def _build(spec):
    """The model of spec's config through the task's registry, as avsr_train builds it."""
    import yaml

    from common import apply_overrides
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
    from espnet_omni_avsr.utils.config_stack import load_config, merge

    config = load_config(spec["config"])
    for overlay in spec.get("overlays", []):
        with open(overlay) as f:
            config = merge(config, yaml.safe_load(f))
    apply_overrides(config, spec.get("sets", []))
    for key, folder in spec.get("model_dirs", {}).items():
        config[key]["model_dir"] = folder
    if spec.get("pretrained_dir"):
        for key in ("audio_encoder_conf", "decoder_conf"):
            conf = config.get(key) or {}
            if conf.get("model_dir") and key not in spec.get("model_dirs", {}):
                conf["model_dir"] = os.path.join(spec["pretrained_dir"], os.path.basename(conf["model_dir"]))
    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    return AVSRLLMTask.build_model(args)


def _batch(model, batch_size: int, seconds: float, device):
    import torch

    tok = model.decoder.tokenizer
    text = [torch.tensor(tok("bin blue at f two now please", add_special_tokens=False)["input_ids"])] * batch_size
    n_audio, n_video = int(seconds * 16000), int(seconds * 25)
    g = torch.Generator().manual_seed(0)
    batch = dict(
        speech=torch.randn(batch_size, n_audio, generator=g) * 0.1,
        speech_lengths=torch.full((batch_size,), n_audio),
        video=torch.randint(0, 256, (batch_size, n_video, 96, 96), dtype=torch.uint8, generator=g),
        video_lengths=torch.full((batch_size,), n_video),
        text=torch.nn.utils.rnn.pad_sequence(text, batch_first=True, padding_value=-1),
        text_lengths=torch.tensor([len(t) for t in text]),
    )
    return {k: v.to(device) for k, v in batch.items()}


def child(spec) -> dict:
    import random

    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    model = _build(spec).to(device)
    batch = _batch(model, spec["batch_size"], spec["seconds"], device)
    out = {"built_mb": _status_mb("VmRSS"), "build_peak_mb": _status_mb("VmHWM")}
    resettable = _reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    if spec["mode"] == "train":
        layer = model.decoder.base_model.get_decoder().layers[0]
        calls = [0]
        # a pre-hook: a recompute may stop inside the module, before a forward hook would run
        layer.mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        for step in range(spec["steps"]):
            loss, _, _ = model(**batch)
            loss.backward()
            if step == 0:
                grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and is_llm_adapter(n)]
                out["adapter_params"] = len(grads)
                out["adapter_without_grad"] = sum(g is None for g in grads)
                out["adapter_grad_norm"] = float(sum(g.float().norm() ** 2 for g in grads if g is not None) ** 0.5)
            opt.step()
            opt.zero_grad(set_to_none=True)
        out["mlp0_calls_per_step"] = calls[0] / spec["steps"]
        out["seconds_per_unit"] = (time.perf_counter() - t0) / spec["steps"]
        out["gradient_checkpointing"] = bool(getattr(model.decoder.base_model.get_decoder(),
                                                     "gradient_checkpointing", False))
    else:
        model.eval()
        out["tasks"] = list(model.tasks)
        for task in model.tasks:
            model.recognize(**{k: v for k, v in batch.items() if not k.startswith("text")}, task=task,
                            max_new_tokens=spec["max_new_tokens"])
        out["seconds_per_unit"] = (time.perf_counter() - t0) / len(model.tasks)
    out["run_peak_mb"] = _status_mb("VmHWM") if resettable else None
    out["lifetime_peak_mb"] = _maxrss_mb()
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    out["llm_dtype"] = str(model.decoder.dtype)
    out["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return out


# --------------------------------------------------------------------------- the parent


def measure(spec) -> dict:
    """Run one measurement in a fresh interpreter; its result is the last MARK line it prints."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd(),
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                              [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])))
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {spec['label']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(MARK):])


def _fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def report(label: str, r: dict) -> None:
    added = None if r["run_peak_mb"] is None else r["run_peak_mb"] - r["built_mb"]
    line = (f"{label}: built {_fmt(r['built_mb'])} MB, build peak {_fmt(r['build_peak_mb'])} MB, "
            f"run peak {_fmt(r['run_peak_mb'])} MB (+{_fmt(added)} over built), "
            f"lifetime peak {_fmt(r['lifetime_peak_mb'])} MB")
    if "cuda_peak_mb" in r:
        line += f", CUDA peak {_fmt(r['cuda_peak_mb'])} MB"
    unit = "step" if "mlp0_calls_per_step" in r else "task"
    line += f"; {r['seconds_per_unit']:.2f} s per {unit}"
    print(line, flush=True)


def tiny_paper_models(paper_config: str, tiny_dir: str, llm_hidden: int, encoder_width: int,
                      llm_layers=None, encoder_layers=None) -> dict:
    """Tiny random folders of the paper models' depth: {config key: folder}."""
    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_llama, build_tiny_whisper
    from espnet_omni_avsr.utils.config_stack import load_config

    config = load_config(paper_config)
    dirs = {}
    for key, width, layers, build in (("decoder_conf", llm_hidden, llm_layers, build_tiny_llama),
                                      ("audio_encoder_conf", encoder_width, encoder_layers, build_tiny_whisper)):
        if not (config.get(key) or {}).get("model_dir"):
            continue
        name = os.path.basename(config[key]["model_dir"].rstrip("/"))
        if layers is None:
            if name not in PAPER_DEPTHS:
                raise SystemExit(f"{paper_config}: {key}.model_dir {name!r} is not in PAPER_DEPTHS; "
                                 f"give its depth (--llm_layers / --encoder_layers)")
            layers = PAPER_DEPTHS[name]
        out = os.path.join(tiny_dir, f"tiny-{name}-w{width}-l{layers}")
        if not os.path.isfile(os.path.join(out, "config.json")):
            build(out, width, num_layers=layers)
        dirs[key] = out
    return dirs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--parts", nargs="+", default=["train", "decode", "checkpointing"],
                   choices=["train", "decode", "checkpointing"])
    p.add_argument("--config", default="conf/omni_avsr/multitask_small.yaml")
    p.add_argument("--pretrained_dir", default="egs2/avopen/avsr1/pretrained")
    p.add_argument("--overlay", action="append", default=[], help="a config stacked on --config (parts 1-2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a config value (1-2)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--paper_config", default="conf/omni_avsr/omni_st_paper.yaml")
    p.add_argument("--paper_batch_size", type=int, default=2)
    p.add_argument("--paper_seconds", type=float, default=20.0)
    p.add_argument("--paper_steps", type=int, default=2)
    p.add_argument("--llm_hidden", type=int, default=64, help="hidden size of the tiny paper-depth LLM")
    p.add_argument("--llm_layers", type=int, default=None, help="default: the paper LLM's (PAPER_DEPTHS)")
    p.add_argument("--encoder_width", type=int, default=64, help="d_model of the tiny paper-depth Whisper")
    p.add_argument("--encoder_layers", type=int, default=None, help="default: the paper encoder's")
    p.add_argument("--tiny_dir", default=os.path.join(tempfile.gettempdir(), "memory_benchmark_models"))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.child:
        print(MARK + json.dumps(child(json.loads(a.child))), flush=True)
        return

    common = dict(threads=a.threads, device=a.device, max_new_tokens=a.max_new_tokens)
    base = dict(common, config=a.config, pretrained_dir=a.pretrained_dir, overlays=a.overlay, sets=a.set,
                batch_size=a.batch_size, seconds=a.seconds, steps=a.steps)
    print(f"threads={a.threads} device={a.device} python={sys.executable}", flush=True)
    if "train" in a.parts or "decode" in a.parts:
        print(f"[{a.config}, models from {a.pretrained_dir}, overlays {a.overlay}, set {a.set}; "
              f"batch {a.batch_size} x {a.seconds:g} s]", flush=True)
    if "train" in a.parts:
        r = measure(dict(base, mode="train", label="train"))
        report(f"1. training, {a.steps} steps", r)
        print(f"   LLM {r['llm_dtype']}, trainable parameters {r['trainable_params']:,}", flush=True)
    if "decode" in a.parts:
        r = measure(dict(base, mode="decode", label="decode"))
        report(f"2. decoding {'/'.join(r['tasks'])}, greedy, {a.max_new_tokens} new tokens", r)
    if "checkpointing" in a.parts:
        dirs = tiny_paper_models(a.paper_config, a.tiny_dir, a.llm_hidden, a.encoder_width, a.llm_layers,
                                 a.encoder_layers)
        w = a.encoder_width
        narrow = [  # tiny width, the paper's depth (blocks, layers) kept
            "video_frontend=pixel", f"video_frontend_conf={{output_size: {w}}}",
            f"video_encoder_conf.output_size={w}", "video_encoder_conf.attention_heads=4",
            f"video_encoder_conf.linear_units={4 * w}",
            f"audio_projector_conf.hidden_size={2 * a.llm_hidden}",
            f"video_projector_conf.hidden_size={2 * a.llm_hidden}",
        ]
        print(f"[{a.paper_config} at tiny width: {', '.join(os.path.basename(d) for d in dirs.values())}, "
              f"{' '.join(narrow)}; batch {a.paper_batch_size} x {a.paper_seconds:g} s, "
              f"{a.paper_steps} steps]", flush=True)
        results = {}
        for gc in (False, True):
            spec = dict(common, config=a.paper_config, model_dirs=dirs, overlays=[],
                        sets=narrow + [f"decoder_conf.gradient_checkpointing={str(gc).lower()}"],
                        batch_size=a.paper_batch_size, seconds=a.paper_seconds, steps=a.paper_steps,
                        mode="train", label=f"checkpointing {gc}")
            results[gc] = r = measure(spec)
            report(f"3. training, gradient_checkpointing {str(gc).lower()}", r)
            print(f"   LLM {r['llm_dtype']}, layers checkpointed: {r['gradient_checkpointing']}; "
                  f"first LLM layer's MLP runs {r['mlp0_calls_per_step']:g} times per step; "
                  f"LLM adapter tensors {r['adapter_params']} ({r['adapter_without_grad']} without gradient), "
                  f"their gradient norm after step 1 {r['adapter_grad_norm']:.6g}", flush=True)
        off, on = results[False], results[True]
        if off["run_peak_mb"] is not None:
            saved = (off["run_peak_mb"] - off["built_mb"]) - (on["run_peak_mb"] - on["built_mb"])
            print(f"   checkpointing: run peak {off['run_peak_mb']:,.0f} -> {on['run_peak_mb']:,.0f} MB; "
                  f"memory the steps add {off['run_peak_mb'] - off['built_mb']:,.0f} -> "
                  f"{on['run_peak_mb'] - on['built_mb']:,.0f} MB ({saved:,.0f} MB less); "
                  f"step time {off['seconds_per_unit']:.2f} -> {on['seconds_per_unit']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
