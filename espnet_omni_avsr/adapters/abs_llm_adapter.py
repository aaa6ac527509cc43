"""The interface of whatever sits inside the frozen LLM and is trained: LoRA today, MoME next.

An adapter is told four things, and the model needs to know nothing else about it:
1. `wrap(llm)`: put its modules into the LLM (peft's LoRA layers, or expert modules beside each
   layer's attention / feed-forward block) and return the module to run. Its parameters then live
   inside the LLM's module tree, so checkpoints hold them and the frozen base stays marked pretrained.
2. `pass_groups(tasks)`: which of a step's sequences (one task each) may share one LLM pass. peft
   cannot mix LoRA adapters inside a batch, so task-specific LoRA passes one task at a time; an
   adapter without per-task parameters takes them all in one pass.
3. `prepare(prompt)`: called before every pass, training and decoding alike, with the `Prompt`:
   its tasks, token-type map (BOS, modality, instruction, transcript, pad) and each modality token's
   source (modality, condition, index). LoRA selects the task's adapters here. A packed pass
   (`model_conf.pack_sequences`) gives a `decoders.sequence_packing.PackedPrompt` instead: `tasks`
   one per packed sequence, `token_types` and `mask` in the packed rows' layout, which is the
   layout of the hidden states the adapter's modules see.
4. `aux_losses()`: called after every pass; the adapter's own losses (unweighted), by name, which the
   decoder puts in `LLMOutput.aux_losses`; `loss_terms()` gives the loss terms that weight them into
   the training loss (the task adds them to the config's `losses:`).

How MoME fits: `wrap` adds, per LLM layer, routed + shared bottleneck experts and one router beside
the chosen sub-layer (forward hooks or a wrapping module), the same modules for every compression
rate; `pass_groups` returns one group (no per-task parameters); `prepare` keeps the prompt's
token-type map so that the experts and the router see only the positions a flag selects (e.g.
modality + text tokens); the inserted modules accumulate the router's load-balancing statistics
during the pass and `aux_losses` returns the balance loss; `loss_terms` returns one
`AdapterLossTerm("balance", weight)`. Nothing in the model changes.
"""
from abc import ABC, abstractmethod
from typing import Dict, List, Sequence

import torch


class AbsLLMAdapter(ABC):
    """Base class; registered implementations are chosen with `llm_adapter:` in the config.

    Args:
        tasks: the model's tasks (task-specific adapters make parameters per task).
    """

    def __init__(self, tasks: Sequence[str] = ("asr", "vsr", "avsr")):
        self.tasks = list(tasks)

    @abstractmethod
    def wrap(self, llm: torch.nn.Module) -> torch.nn.Module:
        """Insert the adapter's modules into the (frozen) LLM; return the module to run."""

    def pass_groups(self, tasks: Sequence[str]) -> List[List[int]]:
        """Indices of the step's sequences (given their tasks) grouped into LLM passes."""
        return [list(range(len(tasks)))]

    def prepare(self, prompt) -> None:
        """Called with the `Prompt` (or, packed, the `PackedPrompt`) before each pass."""

    def aux_losses(self) -> Dict[str, torch.Tensor]:
        """The adapter's own unweighted losses from the last pass."""
        return {}

    def loss_terms(self) -> list:
        """Loss terms (`AbsLossTerm`) that weight `aux_losses` into the training loss."""
        return []
