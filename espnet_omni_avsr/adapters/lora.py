"""LoRA on the frozen LLM through peft: Omni-AVSR's three strategies.

- S  (`SharedLoRA`, `llm_adapter: shared_lora`):          one adapter serves every task.
- T  (`TaskLoRA`, `llm_adapter: task_lora`):              one adapter per task; a sequence goes
                                                          through its task's adapter only.
- ST (`SharedTaskLoRA`, `llm_adapter: shared_task_lora`): the shared adapter plus the task's
                                                          adapter, their updates summed.

peft's active adapters select what a pass uses (several active LoRA adapters add their updates);
peft cannot mix adapters inside one batch, so the task-specific strategies pass one task at a time.
"""
from typing import List, Sequence

import torch

from espnet_omni_avsr.adapters.abs_llm_adapter import AbsLLMAdapter


class SharedLoRA(AbsLLMAdapter):
    """Strategy S: one LoRA adapter on `target_modules` of every layer, used for all tasks.

    Args:
        r: LoRA rank.
        alpha: LoRA alpha (the update is scaled by alpha / r).
        dropout: dropout on the LoRA branch input.
        target_modules: names of the linear layers to adapt (Llama/Qwen: q_proj, v_proj, ...).
        tasks: the model's tasks (the task-specific strategies make one adapter per task).
    """

    per_task = False

    def __init__(
        self,
        r: int = 16,
        alpha: float = 32.0,
        dropout: float = 0.05,
        target_modules: Sequence[str] = ("q_proj", "v_proj"),
        tasks: Sequence[str] = ("asr", "vsr", "avsr"),
    ):
        super().__init__(tasks)
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = list(target_modules)
        self.peft_model = None

    @property
    def adapter_names(self) -> List[str]:
        return ["shared"]

    def adapters_for(self, task: str) -> List[str]:
        return ["shared"]

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.target_modules, bias="none"
        )

    def wrap(self, llm: torch.nn.Module) -> torch.nn.Module:
        from peft import get_peft_model

        names = {n.split(".")[-1] for n, _ in llm.named_modules()}
        unknown = [t for t in self.target_modules if t not in names]
        if unknown:
            raise ValueError(
                f"LoRA target_modules {unknown} do not exist in {type(llm).__name__}; "
                f"linear layers it has include: {sorted(n for n in names if n.endswith('proj'))}"
            )
        first, *rest = self.adapter_names
        model = get_peft_model(llm, self.peft_config(), adapter_name=first)
        for name in rest:
            model.add_adapter(name, self.peft_config())
        self.peft_model = model
        self._lora_params = [p for n, p in model.named_parameters() if "lora_" in n]
        self.activate(self.tasks[0])
        return model

    def pass_groups(self, tasks: Sequence[str]) -> List[List[int]]:
        if not self.per_task:
            return super().pass_groups(tasks)
        return [[i for i, t in enumerate(tasks) if t == task] for task in dict.fromkeys(tasks)]

    def prepare(self, prompt) -> None:
        tasks = set(prompt.tasks)
        if self.per_task and len(tasks) > 1:
            raise ValueError(f"{type(self).__name__}: one LLM pass holds one task's sequences, got {sorted(tasks)}")
        self.activate(prompt.tasks[0])

    def activate(self, task: str) -> None:
        """Make the adapters of `task` the active ones, the ones its sequences go through."""
        names = self.adapters_for(task)
        # LoraModel.set_adapter takes a list (PeftModel.set_adapter only one name)
        self.peft_model.base_model.set_adapter(names if len(names) > 1 else names[0])
        # peft also freezes the inactive adapters; keep every adapter trainable, or the gradient of
        # a task whose pass ran earlier in this step would be dropped.
        for p in self._lora_params:
            p.requires_grad_(True)


class TaskLoRA(SharedLoRA):
    """Strategy T: one adapter per task."""

    per_task = True

    @property
    def adapter_names(self) -> List[str]:
        return list(self.tasks)

    def adapters_for(self, task: str) -> List[str]:
        if task not in self.tasks:
            raise ValueError(f"no LoRA adapter for task {task!r}: this model has {self.tasks}")
        return [task]


class SharedTaskLoRA(TaskLoRA):
    """Strategy ST: the shared adapter plus one adapter per task, summed."""

    @property
    def adapter_names(self) -> List[str]:
        return ["shared", *self.tasks]

    def adapters_for(self, task: str) -> List[str]:
        return ["shared", *super().adapters_for(task)]
