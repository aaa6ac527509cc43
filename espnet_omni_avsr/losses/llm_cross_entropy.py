"""The LLM's teacher-forced cross entropy on the transcript and EOS (every paper's objective).

Per job (a task at one condition per modality) the mean token cross entropy and accuracy; per task
the mean over its jobs; the loss is sum_t(weight_t * loss_t) / n_tasks (Omni-AVSR's multi-task
objective; one task: its loss). Statistics: `acc` over every scored token; with several tasks
`loss_<task>` and `acc_<task>`; when a task has several jobs in the step (all rate pairs, or
validation) `loss_<label>` per job (`loss_avsr_a4v2`).
"""
from typing import Dict, List, Tuple

import torch

from espnet_omni_avsr.losses.abs_loss_term import AbsLossTerm, LossOutput


class LLMCrossEntropy(AbsLossTerm):
    """`type: llm_cross_entropy` (no conf)."""

    uses_llm = True

    @classmethod
    def default_name(cls, **conf) -> str:
        return "llm"

    def job_losses(self, step) -> List[Tuple[object, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(job, mean cross entropy, accuracy, scored-token count) for each job of the step."""
        out = []
        for p in step.llm_passes:
            gold = p.prompt.next_token_targets()[p.output.scored]
            ce = torch.nn.functional.cross_entropy(p.output.logits, gold, reduction="none")
            hit = (p.output.logits.argmax(-1) == gold).float()
            rows = torch.arange(p.output.scored.size(0), device=gold.device)[:, None].expand_as(p.output.scored)
            row = rows[p.output.scored]
            b = step.batch_size
            for k, job in enumerate(p.jobs):
                sel = (row >= k * b) & (row < (k + 1) * b)
                out.append((job, ce[sel].mean(), hit[sel].mean().detach(), sel.sum().detach()))
        order = {job: i for i, job in enumerate(step.jobs)}
        return sorted(out, key=lambda r: order[r[0]])

    def forward(self, step) -> LossOutput:
        results = self.job_losses(step)
        tasks = list(step.task_weights)
        stats: Dict[str, torch.Tensor] = {}
        task_loss = {}
        for t in tasks:
            mine = [r for r in results if r[0].task == t]
            task_loss[t] = sum(r[1] for r in mine) / len(mine)
            if len(tasks) > 1:
                n = sum(r[3] for r in mine)
                stats[f"loss_{t}"] = task_loss[t].detach()
                stats[f"acc_{t}"] = sum(r[2] * r[3] for r in mine) / n
        if len(results) > len(tasks):
            for job, ce, _, _ in results:
                stats[f"loss_{job.label}"] = ce.detach()
        n_tok = sum(r[3] for r in results)
        stats["acc"] = sum(r[2] * r[3] for r in results) / n_tok
        loss = sum(step.task_weights[t] * task_loss[t] for t in tasks) / len(tasks)
        return LossOutput(loss, stats)
