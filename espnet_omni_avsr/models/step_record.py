"""What one training step computed, for the loss terms to read.

The model fills it in order: the branches' features (front end + encoder, once per modality), then,
when a term uses the LLM, the step's jobs (task x condition sequences) and the LLM passes over them.
Tokens at a condition are made on first request and cached, so a rate that both the LLM pass and an
auxiliary term use is compressed and projected once.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from espnet_omni_avsr.names import condition_label

Tokens = Tuple[torch.Tensor, torch.Tensor]  # (B, T, D), (B,)


@dataclass(frozen=True)
class Job:
    """One sequence type of a step: a task and the condition of each of its modalities."""

    task: str
    conditions: Tuple[Tuple[str, str], ...]  # ((modality, condition), ...) in prompt order

    @property
    def condition_map(self) -> Dict[str, str]:
        return dict(self.conditions)

    @property
    def label(self) -> str:
        """'avsr_a4v2': the task and its conditions (decode directories and statistics use it)."""
        return condition_label(self.task, self.condition_map)


@dataclass
class LLMPass:
    """One LLM pass: its jobs, stacked along the batch (job k holds rows k*B .. (k+1)*B - 1),
    their `Prompt` and the `LLMOutput`."""

    jobs: List[Job]
    prompt: object
    output: object


@dataclass
class StepRecord:
    """Features, tokens, LLM passes and targets of one step.

    text (B, L) LLM ids padded with -1 and text_lengths (B,); features: modality -> (features
    (B, T, D), lengths) of the branch's encoder; branches: modality -> ModalityBranch; decoder: the
    LLM decoder; task_weights: task -> weight; jobs and llm_passes: filled by the model when a term
    uses the LLM.
    """

    text: torch.Tensor
    text_lengths: torch.Tensor
    features: Dict[str, Tokens]
    branches: Mapping[str, torch.nn.Module]
    decoder: torch.nn.Module
    task_weights: Mapping[str, float]
    jobs: List[Job] = field(default_factory=list)
    llm_passes: List[LLMPass] = field(default_factory=list)
    _tokens: Dict[Tuple[str, str], Tokens] = field(default_factory=dict)
    _transcripts: Optional[List[str]] = None

    @property
    def batch_size(self) -> int:
        return self.text.size(0)

    def tokens(self, modality: str, condition) -> Tokens:
        """(tokens (B, T', D_llm), lengths (B,)) of a stream (a modality or the fused stream) at a
        condition (made once): the branch tokenizes its own encoding's output."""
        key = (modality, str(condition))
        if key not in self._tokens:
            self._tokens[key] = self.branches[modality].tokenize(*self.features[modality], condition)
        return self._tokens[key]

    def transcripts(self) -> List[str]:
        """The batch's transcripts as strings (decoded from the LLM token ids)."""
        if self._transcripts is None:
            tok = self.decoder.tokenizer
            self._transcripts = [
                tok.decode(row[: int(n)].tolist(), skip_special_tokens=True) for row, n in zip(self.text, self.text_lengths)
            ]
        return self._transcripts
