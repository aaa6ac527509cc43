"""Which sequences a training step puts through the LLM: tasks x compression conditions.

One task at one condition per modality is Llama-AVSR. Several tasks make Omni-AVSR's multi-task
step (the encoders run once per batch). Branches with several conditions (compression rates) make
matryoshka training: each training step uses one randomly drawn condition per modality
(`one_pair`, Omni-AVSR) or every combination (`all_pairs`, Llama-MTSK); validation always uses
every combination. A task reads its modalities' streams unless the model says otherwise (`streams`:
an early-fused AVSR reads the one `audiovisual` stream).
"""
import itertools
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from espnet_omni_avsr.models.step_record import Job
from espnet_omni_avsr.names import TASK_MODALITIES, modalities_of

RATE_SAMPLING = ("one_pair", "all_pairs")


class TaskSchedule:
    """Args:
        tasks: any of "asr", "vsr", "avsr"; the first is the default for decoding.
        task_weights: one weight per task (default 1 each; Omni-AVSR: asr 1, vsr 1.5, avsr 1).
        rate_sampling: "one_pair" or "all_pairs" (see above).
        conditions: stream (a modality, or the fused stream) -> the branch's trained conditions
            (the first is the default).
        streams: task -> the streams it reads (default: its modalities).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        task_weights: Optional[Sequence[float]],
        rate_sampling: str,
        conditions: Mapping[str, Sequence[str]],
        streams: Optional[Mapping[str, Sequence[str]]] = None,
    ):
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [t for t in tasks if t not in TASK_MODALITIES]
        if not tasks or unknown or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be distinct names from {sorted(TASK_MODALITIES)}, got {tasks}")
        weights = [1.0] * len(tasks) if task_weights is None else [float(w) for w in task_weights]
        if len(weights) != len(tasks):
            raise ValueError(f"task_weights {weights} must give one weight per task {tasks}")
        if rate_sampling not in RATE_SAMPLING:
            raise ValueError(f"rate_sampling must be one of {RATE_SAMPLING}, got {rate_sampling!r}")
        self.tasks = tasks
        self.task_weights = dict(zip(tasks, weights))
        self.rate_sampling = rate_sampling
        self.streams = {t: tuple((streams or {}).get(t, TASK_MODALITIES[t])) for t in tasks}
        self.conditions = {m: list(conditions[m]) for m in self.stream_names}

    @property
    def modalities(self) -> List[str]:
        """The modalities the tasks use, sorted."""
        return modalities_of(self.tasks)

    @property
    def stream_names(self) -> List[str]:
        """The streams the tasks read, sorted."""
        return sorted({s for t in self.tasks for s in self.streams[t]})

    def jobs(self, training: bool) -> List[Job]:
        """This step's (task, conditions) sequences, tasks in configuration order."""
        drawn: Optional[Dict[str, str]] = None
        if training and self.rate_sampling == "one_pair":
            drawn = {m: c[int(torch.randint(len(c), ()))] for m, c in self.conditions.items()}
        out = []
        for task in self.tasks:
            mods = self.streams[task]
            combos = [tuple(drawn[m] for m in mods)] if drawn else itertools.product(*(self.conditions[m] for m in mods))
            out += [Job(task, tuple(zip(mods, combo))) for combo in combos]
        return out
