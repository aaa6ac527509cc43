"""Which parts of a model train: declared once per part, in one place, and reported.

A part (front end, encoder, LLM) that is frozen says so with `set_trainable(part, False)`: its
parameters stop requiring gradients and the decision is recorded on the module. A frozen part is
also put in eval mode (fixed BatchNorm statistics, no dropout) and kept there when its parent
trains: the part's own `train()` ends with `keep_frozen_in_eval(self)`. A part whose data
augmentation must still follow train/eval mode names the sub-modules that stay in eval
(``eval_parts``). Adapters added afterwards (LoRA) are declared trainable the same way.

`is_trainable` answers whether gradients must flow through a module (some parameter trains), and
`trainable_summary` lists, per part of a built model, the trainable and frozen parameters and the
pretrained sources (`frozen_weights.mark_pretrained`) of its weights.
"""
import logging
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

import torch

from espnet_omni_avsr.utils.frozen_weights import is_pretrained, pretrained_source

_DECLARED = "_declared_trainable"  # on a module: the decision of set_trainable
_HELD_IN_EVAL = "_held_in_eval"  # on a module: stays in eval mode when its parent trains


def _own(module: torch.nn.Module, attr: str, default=None):
    """An attribute set on this very module (wrappers such as peft's forward unknown attributes
    to the module they wrap, so getattr would find the wrapped module's)."""
    return vars(module).get(attr, default)


def set_trainable(
    module: torch.nn.Module, trainable: bool, eval_parts: Optional[Iterable[torch.nn.Module]] = None
) -> torch.nn.Module:
    """Declare whether `module` trains; returns it.

    Every parameter of `module` gets ``requires_grad = trainable`` and the decision is recorded on
    it. Frozen, `eval_parts` (default: the whole module; ``()``: none) are put in eval mode now and
    kept there by `keep_frozen_in_eval`. Declaring a module trainable releases the eval hold of
    everything inside it.
    """
    trainable = bool(trainable)
    for p in module.parameters():
        p.requires_grad_(trainable)
    setattr(module, _DECLARED, trainable)
    if trainable:
        for m in module.modules():
            if _own(m, _HELD_IN_EVAL, False):
                setattr(m, _HELD_IN_EVAL, False)
        return module
    parts = [module] if eval_parts is None else list(eval_parts)
    inside = {id(m) for m in module.modules()}
    for part in parts:
        if id(part) not in inside:
            raise ValueError(f"set_trainable: eval part {type(part).__name__} is not inside {type(module).__name__}")
        setattr(part, _HELD_IN_EVAL, True)
        torch.nn.Module.train(part, False)
    return module


def declared_trainable(module: torch.nn.Module) -> Optional[bool]:
    """The decision `set_trainable` recorded on `module` (None: not declared)."""
    return _own(module, _DECLARED)


def is_trainable(module: Optional[torch.nn.Module]) -> bool:
    """Whether anything in `module` trains (some parameter requires gradients), adapters included."""
    return module is not None and any(p.requires_grad for p in module.parameters())


def keep_frozen_in_eval(module: torch.nn.Module) -> torch.nn.Module:
    """Put every frozen part inside `module` (itself included) back in eval mode; returns `module`.
    Call it at the end of an overridden ``train()``."""
    for m in module.modules():
        if _own(m, _HELD_IN_EVAL, False):
            torch.nn.Module.train(m, False)  # not m.eval(): m may be the module whose train() runs this
    return module


@dataclass(frozen=True)
class TrainableRow:
    """One part of a model: parameter elements that train and that are frozen, and the pretrained
    sources of its weights (None: marked pretrained without a source)."""

    part: str
    trainable: int
    frozen: int
    sources: Tuple[Optional[str], ...]


def trainable_summary(model: torch.nn.Module, depth: int = 2) -> List[TrainableRow]:
    """One row per part of `model`, in parameter order: parts are the modules `depth` levels down
    (``audio.encoder``, ``decoder.llm``); parameters held higher up are a row of their own module
    (``decoder`` for the decoder's own embeddings, ``(model)`` for the root's). Tied tensors count once."""
    rows: dict = {}
    for name, p in model.named_parameters():
        path = name.split(".")[:-1]
        part = ".".join(path[:depth]) or "(model)"
        row = rows.setdefault(part, {"trainable": 0, "frozen": 0, "sources": []})
        row["trainable" if p.requires_grad else "frozen"] += p.numel()
        if is_pretrained(p) and pretrained_source(p) not in row["sources"]:
            row["sources"].append(pretrained_source(p))
    return [TrainableRow(part, r["trainable"], r["frozen"], tuple(r["sources"])) for part, r in rows.items()]


def format_trainable_summary(rows: List[TrainableRow]) -> str:
    """The rows as a text table with a total line."""
    width = max([len(r.part) for r in rows] + [len("total")])
    lines = [f"{'part':<{width}}  {'trainable':>12}  {'frozen':>12}  pretrained source"]
    for r in rows:
        sources = ", ".join("(source not recorded)" if s is None else s for s in r.sources) or "-"
        lines.append(f"{r.part:<{width}}  {r.trainable:>12,}  {r.frozen:>12,}  {sources}")
    total_t, total_f = sum(r.trainable for r in rows), sum(r.frozen for r in rows)
    lines.append(f"{'total':<{width}}  {total_t:>12,}  {total_f:>12,}")
    return "\n".join(lines)


def log_trainable_summary(model: torch.nn.Module, depth: int = 2) -> List[TrainableRow]:
    """Log `trainable_summary` of `model` (INFO) and return its rows."""
    rows = trainable_summary(model, depth)
    logging.info("trainable and frozen parameters:\n%s", format_trainable_summary(rows))
    return rows
