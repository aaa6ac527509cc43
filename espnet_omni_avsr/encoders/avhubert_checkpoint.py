"""Official AV-HuBERT checkpoints (fairseq files) without fairseq and without running pickled code.

A fairseq checkpoint is a dict: "model" (the state dict) and the configuration, either "cfg"
(an omegaconf tree, or the plain dict `OmegaConf.to_container` makes of it, with a "model"
section) or, in older files, "args" (an argparse.Namespace holding every option flat). The file
is read by `utils.safe_checkpoint.load_checkpoint` (weights_only, else a restricted unpickler),
the architecture comes from the stored configuration, and the state dict keys are AV-HuBERT's own
names, which `AVHubertModel` uses too. Fine-tuned files (AV-HuBERT seq2seq: the pre-trained
network under "encoder.w2v_model.", its configuration under model.w2v_args) give their encoder.
"""
import argparse
import logging
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List

import torch

from espnet_omni_avsr.encoders.avhubert_modules import AVHubertArch, AVHubertModel
from espnet_omni_avsr.utils.safe_checkpoint import load_checkpoint

#: configuration values this port implements; a checkpoint asking for others is refused
REQUIRED_VALUES = {"sub_encoder_layers": 0, "activation_fn": "gelu"}
#: sizes a checkpoint must state (the others have AV-HuBERT's defaults)
REQUIRED_KEYS = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                 "layer_norm_first")
#: tensors of the pre-training objective, not of the encoder
PRETRAINING_ONLY = ("mask_emb", "final_proj.", "label_embs_concat")
FINETUNED_PREFIX = "encoder.w2v_model."
_RENAMED = {  # torch.nn.utils.parametrizations.weight_norm names -> the classic ones
    "encoder.pos_conv.0.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
}


class AVHubertCheckpointError(ValueError):
    """A checkpoint that does not fit the AV-HuBERT encoder (the message names the file and keys)."""


@dataclass
class AVHubertCheckpoint:
    path: str
    arch: AVHubertArch
    state: Dict[str, torch.Tensor]
    ignored: List[str] = field(default_factory=list)  # pre-training heads, a fine-tuned model's decoder
    read_with: str = "weights_only"  # or "restricted"
    finetuned: bool = False


def _model_config(ckpt: Dict[str, Any], path: str) -> Dict[str, Any]:
    cfg, args = ckpt.get("cfg"), ckpt.get("args")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return dict(cfg["model"])
    if isinstance(args, argparse.Namespace):  # weights_only never gives one, but a caller might
        args = vars(args)
    if isinstance(args, dict):
        return dict(args)
    raise AVHubertCheckpointError(f"{path}: no configuration found (neither 'cfg' with a 'model' section nor 'args')")


def arch_from_config(model_cfg: Dict[str, Any], state: Dict[str, torch.Tensor], path: str = "<config>") -> AVHubertArch:
    """AVHubertArch from a checkpoint's model configuration (checked against what this port supports)."""
    missing = [k for k in REQUIRED_KEYS if model_cfg.get(k) is None]
    if missing:
        raise AVHubertCheckpointError(f"{path}: the model configuration lacks {missing}")
    for key, value in REQUIRED_VALUES.items():
        if model_cfg.get(key, value) not in (value, None):
            raise AVHubertCheckpointError(
                f"{path}: unsupported configuration {key}={model_cfg[key]!r} (this AV-HuBERT port supports {value!r})"
            )
    values = {}
    for f in fields(AVHubertArch):
        if model_cfg.get(f.name) is not None:
            values[f.name] = model_cfg[f.name]
    if int(values.get("audio_feat_dim", -1)) < 1 and "feature_extractor_audio.proj.weight" in state:
        values["audio_feat_dim"] = state["feature_extractor_audio.proj.weight"].shape[1]
    values = {k: (v if isinstance(getattr(AVHubertArch, k), str) else type(getattr(AVHubertArch, k))(v))
              for k, v in values.items()}
    try:
        return AVHubertArch(**values)
    except ValueError as e:
        raise AVHubertCheckpointError(f"{path}: {e}") from e


def read_avhubert_checkpoint(path: str) -> AVHubertCheckpoint:
    """Reads the file; raises FileNotFoundError, AVHubertCheckpointError (not an AV-HuBERT
    checkpoint, unsupported configuration) or UnsafeCheckpointError (the pickle names code)."""
    try:
        ckpt, read_with = load_checkpoint(path)
    except ValueError as e:
        raise AVHubertCheckpointError(str(e)) from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise AVHubertCheckpointError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict)")
    state = {_RENAMED.get(k, k): v for k, v in ckpt["model"].items()}
    model_cfg = _model_config(ckpt, path)
    finetuned = any(k.startswith(FINETUNED_PREFIX) for k in state)
    ignored = []
    if finetuned:
        ignored = sorted(k for k in state if not k.startswith(FINETUNED_PREFIX))
        state = {k[len(FINETUNED_PREFIX):]: v for k, v in state.items() if k.startswith(FINETUNED_PREFIX)}
        w2v = model_cfg.get("w2v_args")
        if not isinstance(w2v, dict):
            raise AVHubertCheckpointError(f"{path}: fine-tuned checkpoint without model.w2v_args (the encoder's configuration)")
        model_cfg = dict(w2v["model"]) if isinstance(w2v.get("model"), dict) else dict(w2v)
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise AVHubertCheckpointError(f"{path}: 'model' entries that are not tensors: {bad[:8]}")
    ignored += sorted(k for k in state if k.startswith(PRETRAINING_ONLY))
    state = {k: v for k, v in state.items() if not k.startswith(PRETRAINING_ONLY)}
    arch = arch_from_config(model_cfg, state, path)
    return AVHubertCheckpoint(path, arch, state, ignored, read_with, finetuned)


def load_avhubert_state(model: AVHubertModel, ckpt: AVHubertCheckpoint) -> None:
    """Copies the checkpoint's tensors into `model`. Every parameter and buffer must be present
    with its shape (BatchNorm's num_batches_tracked may be absent); unknown keys are logged."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in ckpt.state and not k.endswith("num_batches_tracked"))
    if missing:
        raise AVHubertCheckpointError(
            f"{ckpt.path}: missing {len(missing)} key(s) the AV-HuBERT encoder needs: {missing[:10]}"
            + (" ..." if len(missing) > 10 else "")
        )
    wrong = [f"{k}: checkpoint {tuple(ckpt.state[k].shape)}, model {tuple(v.shape)}"
             for k, v in expected.items() if k in ckpt.state and ckpt.state[k].shape != v.shape]
    if wrong:
        raise AVHubertCheckpointError(f"{ckpt.path}: tensors of the wrong shape: {wrong[:10]}")
    unexpected = sorted(k for k in ckpt.state if k not in expected)
    if unexpected:
        logging.warning("%s: %d key(s) not used by the AV-HuBERT encoder: %s", ckpt.path, len(unexpected), unexpected[:20])
    if ckpt.ignored:
        logging.info("%s: left out %d pre-training/decoder key(s), e.g. %s", ckpt.path, len(ckpt.ignored), ckpt.ignored[:5])
    with torch.no_grad():
        for k, v in expected.items():
            if k in ckpt.state:
                v.copy_(ckpt.state[k].to(v.dtype))


def official_checkpoint(state: Dict[str, torch.Tensor], arch: AVHubertArch, config_format: str = "cfg") -> Dict[str, Any]:
    """A dict laid out like an official AV-HuBERT pre-training checkpoint, from a state dict with
    AV-HuBERT's key names (for tests and conversions; torch.save it). `config_format`: "cfg"
    (fairseq >= 0.10, a "model" section) or "args" (older files, a flat Namespace)."""
    model_cfg = dict(arch.as_dict(), _name="av_hubert", sub_encoder_layers=0, activation_fn="gelu",
                     label_rate=25, sample_rate=25, dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                     encoder_layerdrop=0.05, dropout_input=0.1, dropout_features=0.1, final_dim=256,
                     masking_type="input", feature_grad_mult=0.1)
    task_cfg = dict(_name="av_hubert_pretraining", stack_order_audio=4, image_crop_size=88, image_mean=0.421,
                    image_std=0.165, modalities=["video", "audio"], normalize=True, sample_rate=25)
    out: Dict[str, Any] = {"model": dict(state), "optimizer_history": [], "extra_state": {}, "last_optimizer_state": None}
    if config_format == "cfg":
        out["cfg"] = {"_name": None, "common": {"seed": 1}, "task": task_cfg, "model": model_cfg}
        out["args"] = None
    elif config_format == "args":
        out["args"] = argparse.Namespace(**{**task_cfg, **model_cfg, "arch": "av_hubert", "task": "av_hubert_pretraining"})
    else:
        raise ValueError(f"config_format must be 'cfg' or 'args', got {config_format!r}")
    return out
