"""Pretrained weights: where they came from, and keeping the frozen ones out of checkpoints.

A module that loads weights from a local pretrained folder or file (the LLM decoder, the Whisper
encoder, the AV-HuBERT encoder) marks them with `mark_pretrained(module, source=...)`. Each of its
parameters then carries its source, and so does the module itself (its place in the built model
gives the state-dict prefix); `pretrained_sources` lists them for a built model. The marks are
attributes of the parameter tensors and of the marked module, so they survive peft wrapping a
layer (the wrapped layer keeps the same tensors) or the whole model (the model becomes
``base_model.model``).

The marked parameters that stay frozen are dropped from `state_dict()` and not expected by
`load_state_dict()` (`skip_frozen_pretrained_weights`): they come back from their source when the
model is built. Everything else, LoRA adapters (active or not), projectors, trained encoders,
buffers, is always kept.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple, Union

import torch

_SOURCE = "_pretrained_source"  # on parameters and on the marked module: the source path, or None
PathLike = Union[str, os.PathLike]


def mark_pretrained(module: torch.nn.Module, source: Optional[PathLike] = None) -> None:
    """Mark every parameter of `module` as loaded from `source`, a local folder or checkpoint file
    (stored as an absolute path; None: not said)."""
    path = os.path.abspath(os.fspath(source)) if source is not None and os.fspath(source) else None
    setattr(module, _SOURCE, path)
    for p in module.parameters():
        setattr(p, _SOURCE, path)


def is_pretrained(param: torch.Tensor) -> bool:
    """Whether `param` was marked by `mark_pretrained`."""
    return hasattr(param, _SOURCE)


def pretrained_source(param: torch.Tensor) -> Optional[str]:
    """The source `param` was marked with (None: unmarked, or marked without a source)."""
    return getattr(param, _SOURCE, None)


@dataclass(frozen=True)
class PretrainedSource:
    """Weights of a built model that were read from one pretrained folder or file.

    source: its absolute path (None: the module that loaded them did not say).
    prefixes: state-dict prefixes of the modules loaded from it (``"audio.encoder.encoder."``);
        adapters added later under them (LoRA) are not from the source.
    num_params: parameter elements read from it (a tied tensor counted once).
    frozen: none of them trains, so they are left out of checkpoints and reload from the source.
    """

    source: Optional[str]
    prefixes: Tuple[str, ...]
    num_params: int
    frozen: bool


def pretrained_sources(model: torch.nn.Module) -> List[PretrainedSource]:
    """The pretrained sources of `model`, in the order their weights appear in it."""
    params: Dict[Optional[str], Dict[str, torch.nn.Parameter]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if is_pretrained(p):
            params.setdefault(pretrained_source(p), {})[name] = p
    prefixes: Dict[Optional[str], List[str]] = {}
    for name, m in model.named_modules():
        if _SOURCE in vars(m):  # set on m itself: peft's wrappers forward getattr to the wrapped model
            prefixes.setdefault(vars(m)[_SOURCE], []).append(f"{name}." if name else "")
    out = []
    for source, named in params.items():
        covering = prefixes.get(source, [])
        loose = [n for n in named if not any(n.startswith(pre) for pre in covering)]  # marked alone
        unique = {id(p): p for p in named.values()}.values()
        out.append(PretrainedSource(
            source=source,
            prefixes=tuple(pre for pre in covering if any(n.startswith(pre) for n in named)) + tuple(loose),
            num_params=sum(p.numel() for p in unique),
            frozen=not any(p.requires_grad for p in unique),
        ))
    return out


def frozen_pretrained_keys(model: torch.nn.Module) -> Set[str]:
    """State-dict keys of the marked parameters that are frozen."""
    return {
        name
        for name, p in model.named_parameters(remove_duplicate=False)
        if is_pretrained(p) and not p.requires_grad
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
