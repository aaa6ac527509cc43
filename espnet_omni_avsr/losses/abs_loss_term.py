"""The interface of a loss term: one objective, read off the step record, with its weight and name.

A config lists its terms (`losses:` in the YAML, each `{type, weight, conf}`); the model adds up
weight * loss over the list and reports each term's statistics. A term reads what it needs from the
`StepRecord` (features per modality, tokens per modality and condition, the LLM passes' outputs, the
targets) and never reaches into the model. A new objective is a new file here and one registry line
in `tasks/avsr_llm_task.py`.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch


@dataclass
class LossOutput:
    """A term's unweighted loss (a 0-dim tensor) and the statistics it reports, by name."""

    loss: torch.Tensor
    stats: Dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ModelParts:
    """What a term may need to know about the model it trains when it is built: the tasks, the
    branches (feature and token sizes; the modality branches, and the early-fused `audiovisual`
    one when the model fuses) and the LLM decoder (hidden size, tokenizer)."""

    tasks: Sequence[str]
    branches: Dict[str, torch.nn.Module]
    decoder: torch.nn.Module

    @property
    def modalities(self) -> Tuple[str, ...]:
        """The modalities the tasks use, sorted."""
        from espnet_omni_avsr.names import modalities_of

        return tuple(modalities_of(self.tasks))

    def require(self, term: str, *modalities: str) -> None:
        """A clear error when a term needs a modality that no task of the model uses (or the fused
        stream, in a model without one)."""
        from espnet_omni_avsr.names import FUSED

        for m in modalities:
            if m == FUSED and FUSED in self.branches:
                continue
            if m not in self.modalities:
                have = list(self.modalities) + ([FUSED] if FUSED in self.branches else [])
                kind = "stream" if m == FUSED else "modality"
                raise ValueError(f"loss term {term!r} needs the {m} {kind}, but the tasks {list(self.tasks)} use {have}")


class AbsLossTerm(torch.nn.Module, ABC):
    """One objective of the training loss.

    Args:
        name: the term's statistics name (and its key in the model's `losses`).
        weight: its weight in the total loss (>= 0).

    Class attributes: `uses_llm` (the term reads this step's LLM passes, so they must run) and
    `llm_outputs` (extra outputs it reads from them: "hidden_states", "attentions").
    """

    uses_llm: bool = False
    llm_outputs: Tuple[str, ...] = ()

    def __init__(self, name: str, weight: float = 1.0):
        super().__init__()
        if float(weight) < 0:
            raise ValueError(f"loss term {name!r}: weight must be >= 0, got {weight}")
        self.name = name
        self.weight = float(weight)

    @classmethod
    def build(cls, parts: ModelParts, name: Optional[str] = None, weight: float = 1.0, **conf) -> "AbsLossTerm":
        """Construct the term for a model (sizes taken from `parts`); the default needs none."""
        return cls(name=name or cls.default_name(**conf), weight=weight, **conf)

    @classmethod
    def default_name(cls, **conf) -> str:
        raise NotImplementedError(f"{cls.__name__} needs a name")

    @abstractmethod
    def forward(self, step) -> LossOutput:
        """The term's loss on one step (`models.step_record.StepRecord`)."""
