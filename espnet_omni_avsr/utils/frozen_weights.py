"""Keep frozen pretrained weights out of checkpoints.

Modules that load their weights from a local pretrained folder say so with a `model_dir`
attribute (the LLM decoder, the Whisper encoder). Their frozen parameters are dropped from
`state_dict()` and not expected by `load_state_dict()`: they come back from the folder when the
model is built. Trainable parameters (LoRA, projectors) and all buffers are always kept.
"""
from typing import List

import torch


def _frozen_pretrained_keys(model: torch.nn.Module) -> List[str]:
    keys = []
    for prefix, module in model.named_modules():
        if not getattr(module, "model_dir", None):
            continue
        for name, p in module.named_parameters(remove_duplicate=False):
            if not p.requires_grad:
                keys.append(f"{prefix}.{name}" if prefix else name)
    return keys


def skip_frozen_pretrained_weights(model: torch.nn.Module) -> None:
    """Install the state-dict hooks on `model` (call once, after freezing)."""
    skipped = set(_frozen_pretrained_keys(model))

    def drop(module, state_dict, prefix, local_metadata):
        for key in list(state_dict):
            if key[len(prefix):] in skipped:
                del state_dict[key]
        return state_dict

    def allow_missing(module, incompatible_keys):
        incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if k not in skipped]

    model._register_state_dict_hook(drop)
    model.register_load_state_dict_post_hook(allow_missing)
    model.frozen_pretrained_keys = skipped
