"""The checkpoints ESPnet's trainer reads and writes: weights-only loading, atomic saving.

ESPnet's `Trainer.resume` and its `--init_param` loader call `torch.load(weights_only=False)`,
which runs whatever code a file's pickle names. The task routes both:

* `SafeTrainer.resume` (the task's `trainer`) reads ``<output_dir>/checkpoint.pth`` with
  weights_only (plus the numpy scalars and durations of the reporter's statistics), and checks the
  ``<N>epoch.pth`` models already in that folder the same way, since the trainer reads them again
  to average the best epochs. ESPnet's DeepSpeed trainer, which the task never selects, is left out.
* `check_init_params` checks every ``--init_param`` file with weights_only before ESPnet's
  loader reads it (called first thing in the task's `main_worker`).

A refused file is an `UnsafeCheckpointError` naming it; nothing of its pickle has run.

`SafeTrainer.run` also makes the trainer's saves atomic (utils/atomic_files.atomic_torch_save): a
run killed while writing ``checkpoint.pth`` or ``<N>epoch.pth`` leaves the previous file whole, so
a rerun resumes from the last complete epoch instead of failing on a truncated pickle.
"""
import argparse
import logging
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from espnet2.train.trainer import Trainer

from espnet_omni_avsr.utils.atomic_files import atomic_torch_save
from espnet_omni_avsr.utils.safe_checkpoint import TRAINER_SAFE_GLOBALS, check_weights_only, load_weights

_EPOCH_MODEL = re.compile(r"\d+epoch\.pth")


def check_init_params(args: argparse.Namespace) -> None:
    """Each `--init_param` (``path[:src_key[:dst_key[:excludes]]]``) must load with weights_only;
    only in training, the one mode in which ESPnet reads them."""
    if getattr(args, "collect_stats", False):
        return
    for spec in getattr(args, "init_param", None) or []:
        check_weights_only(spec.split(":")[0], what="--init_param file")


def check_epoch_models(output_dir: Union[str, Path]) -> None:
    """The ``<N>epoch.pth`` models of an earlier run, which the trainer averages at the end."""
    for path in sorted(Path(output_dir).iterdir()):
        if _EPOCH_MODEL.fullmatch(path.name) and path.is_file():
            check_weights_only(path, what="epoch model of the resumed run")


class SafeTrainer(Trainer):
    """ESPnet's trainer, resuming from a checkpoint read with weights_only and saving atomically
    (module docstring)."""

    @classmethod
    def run(cls, *args, **kwargs) -> None:
        with atomic_torch_save():
            return super().run(*args, **kwargs)

    @staticmethod
    def resume(
        checkpoint: Union[str, Path],
        model: torch.nn.Module,
        reporter,
        optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[Optional[object]],
        scaler: Optional[object],
        ngpu: int = 0,
        strict: bool = True,
    ):
        device = f"cuda:{torch.cuda.current_device()}" if ngpu > 0 else "cpu"
        states = load_weights(checkpoint, what="resume checkpoint", map_location=device,
                              safe_globals=TRAINER_SAFE_GLOBALS)
        keys = {"model", "reporter", "optimizers", "schedulers"}
        if not isinstance(states, dict) or not keys <= set(states):
            found = sorted(states) if isinstance(states, dict) else type(states).__name__
            raise ValueError(f"{checkpoint}: not a resume checkpoint of ESPnet's trainer "
                             f"(expected the keys {sorted(keys)}, found {found})")
        for name, objs in (("optimizers", optimizers), ("schedulers", schedulers)):
            if len(states[name]) != len(objs):
                raise ValueError(f"{checkpoint}: holds {len(states[name])} {name}, this run has {len(objs)}")
        check_epoch_models(Path(checkpoint).parent)

        model.load_state_dict(states["model"], strict=strict)
        reporter.load_state_dict(states["reporter"])
        for optimizer, state in zip(optimizers, states["optimizers"]):
            optimizer.load_state_dict(state)
        for scheduler, state in zip(schedulers, states["schedulers"]):
            if scheduler is not None:
                scheduler.load_state_dict(state)
        if scaler is not None:
            if states.get("scaler") is None:
                logging.warning("%s: no scaler state; the gradient scaler starts afresh", checkpoint)
            else:
                scaler.load_state_dict(states["scaler"])
        logging.info("resumed the training from %s (read with weights_only)", checkpoint)
