"""Runs the real `avsr_train` CLI in this process and, when training ends, writes what a test needs
to compare runs: the trainable parameters before and after training (as this process holds them)
and the (task, conditions) jobs of every training step.

    python -m tests.bin.train_probe OUT.pth [--replay DRAWS.pth] <avsr_train arguments...>

Only observation is added (wrappers around `Trainer.run` and `TaskSchedule.jobs`), except with
`--replay`: then the training steps use the jobs recorded in DRAWS.pth (another run's OUT.pth),
step by step, instead of drawing their own, so that two runs whose random streams differ for a
legitimate reason can be compared on the same rate draws.
"""
import sys

import torch


def main(out: str, argv) -> None:
    from espnet2.train.trainer import Trainer

    from espnet_omni_avsr.bin import avsr_train
    from espnet_omni_avsr.models.step_record import Job
    from espnet_omni_avsr.models.task_schedule import TaskSchedule

    argv = list(argv)
    replay = None
    if argv[:1] == ["--replay"]:
        replay = list(torch.load(argv[1], weights_only=True)["draws"])
        argv = argv[2:]

    draws = []
    jobs = TaskSchedule.jobs

    def recording_jobs(self, training):
        out_jobs = jobs(self, training)
        if training:
            if replay is not None:
                if not replay:
                    raise RuntimeError("--replay: this run takes more training steps than the recorded one")
                recorded = replay.pop(0)
                if [j.task for j in out_jobs] != [task for task, _ in recorded]:
                    raise RuntimeError(f"--replay: recorded tasks {recorded} differ from this run's {out_jobs}")
                out_jobs = [Job(task, tuple((m, c) for m, c in conds)) for task, conds in recorded]
            draws.append([[j.task, [list(c) for c in j.conditions]] for j in out_jobs])
        return out_jobs

    TaskSchedule.jobs = recording_jobs
    run = Trainer.run.__func__

    def recording_run(cls, model, *args, **kwargs):
        def trainable():
            return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

        initial = trainable()
        result = run(cls, model, *args, **kwargs)
        torch.save({"initial": initial, "params": trainable(), "draws": draws}, out)
        return result

    Trainer.run = classmethod(recording_run)
    avsr_train.main(argv)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
