"""How LoRA adapters are put on the frozen LLM (through peft).

`SharedLoRA` is strategy "S": one adapter serves every task. The task-specific strategies of
Omni-AVSR ("T", "ST") follow the same interface: `apply(llm)` returns the wrapped model and
`activate(task)` selects the adapters for the sequences that follow.
"""
from typing import Optional, Sequence

import torch


class SharedLoRA:
    """One LoRA adapter on `target_modules` of every layer, used for all tasks.

    Args:
        r: LoRA rank.
        alpha: LoRA alpha (the update is scaled by alpha / r).
        dropout: dropout on the LoRA branch input.
        target_modules: names of the linear layers to adapt (Llama/Qwen: q_proj, v_proj, ...).
    """

    adapter_names = ("shared",)

    def __init__(
        self,
        r: int = 16,
        alpha: float = 32.0,
        dropout: float = 0.05,
        target_modules: Sequence[str] = ("q_proj", "v_proj"),
    ):
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = list(target_modules)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            bias="none",
        )

    def apply(self, llm: torch.nn.Module) -> torch.nn.Module:
        from peft import get_peft_model

        names = {n.split(".")[-1] for n, _ in llm.named_modules()}
        unknown = [t for t in self.target_modules if t not in names]
        if unknown:
            raise ValueError(
                f"LoRA target_modules {unknown} do not exist in {type(llm).__name__}; "
                f"linear layers it has include: {sorted(n for n in names if n.endswith('proj'))}"
            )
        return get_peft_model(llm, self.peft_config(), adapter_name="shared")

    def activate(self, task: Optional[str] = None) -> None:
        """One adapter for every task: nothing to switch."""
