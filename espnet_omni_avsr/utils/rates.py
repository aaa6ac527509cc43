"""Compression rates of a trained model, read from its config, and the decoding conditions they give.

Pure Python (no ESPnet import) so that shell stages can ask cheaply:
    python -m espnet_omni_avsr.utils.rates --config exp/x/config.yaml --tasks "asr vsr avsr"
prints one `task<TAB>label<TAB>audio_rate<TAB>video_rate` line per task x rate condition ('-' for a
modality the task does not read). Labels and task names come from espnet_omni_avsr.names.
A task read through the early-fused stream (`fusion:` set, the task reads exactly the fused
modalities) has one condition, labelled by the bare task name, with no rate columns.
"""
import argparse
import itertools
from typing import Dict, List, Mapping, Optional, Sequence

from espnet_omni_avsr.names import FUSED_INPUTS, MODALITIES, TASK_MODALITIES, condition_columns, condition_label, task

__all__ = ["TASK_MODALITIES", "condition_label", "conditions", "trained_rates"]


def trained_rates(config: Mapping) -> Dict[str, List[int]]:
    """modality -> rates: `<modality>_rates` if set, else the compressor's single `rate` (a branch
    that only feeds the fusion has none)."""
    out = {}
    for m in MODALITIES:
        if config.get(f"{m}_frontend") is None:
            continue
        if config.get("fusion") is not None and m in FUSED_INPUTS and config.get(f"{m}_compressor") is None:
            continue
        rates = config.get(f"{m}_rates") or [(config.get(f"{m}_compressor_conf") or {}).get("rate")]
        if rates == [None]:
            raise ValueError(f"the config sets neither {m}_rates nor {m}_compressor_conf.rate")
        out[m] = [int(r) for r in rates]
    return out


def conditions(config: Mapping, tasks: Optional[Sequence[str]] = None) -> List[Dict]:
    """Every task x rate combination a trained model can decode."""
    rates = trained_rates(config)
    tasks = tasks or (config.get("model_conf") or {}).get("tasks") or ["avsr"]
    out = []
    for name in tasks:
        mods = task(name).modalities
        if config.get("fusion") is not None and set(mods) == set(FUSED_INPUTS):
            out.append(dict(task=name, label=name, rates={}))
            continue
        absent = [m for m in mods if m not in rates]
        if absent:
            raise ValueError(f"task {name!r} reads {absent}, which the config has no front end for")
        for combo in itertools.product(*(rates[m] for m in mods)):
            r = dict(zip(mods, combo))
            out.append(dict(task=name, label=condition_label(name, r), rates=r))
    return out


def main(argv=None):
    from espnet_omni_avsr.utils.config_stack import load_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--tasks", default="", help="space-separated; default: the config's tasks")
    a = p.parse_args(argv)
    config = load_config(a.config)
    for c in conditions(config, a.tasks.split() or None):
        print("\t".join([c["task"], c["label"]] + condition_columns(c["rates"])))


if __name__ == "__main__":
    main()
