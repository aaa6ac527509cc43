"""Keep frozen pretrained weights out of checkpoints.

A module that loads weights from a local pretrained folder (the LLM decoder, the Whisper encoder)
marks those parameters with `mark_pretrained`. The ones that stay frozen are dropped from
`state_dict()` and not expected by `load_state_dict()`: they come back from the folder when the
model is built. Everything else, LoRA adapters (active or not), projectors, trained encoders,
buffers, is always kept. The mark is an attribute of the parameter tensor itself, so it survives
peft wrapping a layer.
"""
from typing import Set

import torch

_MARK = "_loaded_from_pretrained"


def mark_pretrained(module: torch.nn.Module) -> None:
    """Mark every parameter of `module` as loaded from a pretrained folder."""
    for p in module.parameters():
        setattr(p, _MARK, True)


def frozen_pretrained_keys(model: torch.nn.Module) -> Set[str]:
    """State-dict keys of the marked parameters that are frozen."""
    return {
        name
        for name, p in model.named_parameters(remove_duplicate=False)
        if getattr(p, _MARK, False) and not p.requires_grad
    }


def skip_frozen_pretrained_weights(model: torch.nn.Module) -> None:
    """Install the state-dict hooks on `model` (call once, after freezing and adding adapters)."""
    skipped = frozen_pretrained_keys(model)

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
