"""Compression rates of a trained model, read from its config, and the names of decoding conditions.

Pure Python (no ESPnet import) so that shell stages can ask cheaply:
    python -m espnet_omni_avsr.utils.rates --config exp/x/config.yaml --tasks "asr vsr avsr"
prints one `task<TAB>label<TAB>audio_rate<TAB>video_rate` line per task x rate condition.
"""
import argparse
import itertools
from typing import Dict, List, Mapping, Optional, Sequence

TASK_MODALITIES = {"asr": ("audio",), "vsr": ("video",), "avsr": ("audio", "video")}


def trained_rates(config: Mapping) -> Dict[str, List[int]]:
    """modality -> rates: `<modality>_rates` if set, else the compressor's single `rate`."""
    out = {}
    for m in ("audio", "video"):
        if config.get(f"{m}_frontend") is None:
            continue
        rates = config.get(f"{m}_rates") or [(config.get(f"{m}_compressor_conf") or {}).get("rate")]
        if rates == [None]:
            raise ValueError(f"the config sets neither {m}_rates nor {m}_compressor_conf.rate")
        out[m] = [int(r) for r in rates]
    return out


def condition_label(task: str, rates: Mapping[str, int]) -> str:
    """'asr_a4', 'vsr_v2', 'avsr_a4v2': the task and the rates its modalities were compressed at."""
    return f"{task}_" + "".join(f"{m[0]}{rates[m]}" for m in TASK_MODALITIES[task])


def conditions(config: Mapping, tasks: Optional[Sequence[str]] = None) -> List[Dict]:
    """Every task x rate combination a trained model can decode."""
    rates = trained_rates(config)
    tasks = tasks or (config.get("model_conf") or {}).get("tasks") or ["avsr"]
    out = []
    for task in tasks:
        mods = TASK_MODALITIES[task]
        for combo in itertools.product(*(rates[m] for m in mods)):
            r = dict(zip(mods, combo))
            out.append(dict(task=task, label=condition_label(task, r), rates=r))
    return out


def main(argv=None):
    import yaml

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--tasks", default="", help="space-separated; default: the config's tasks")
    a = p.parse_args(argv)
    with open(a.config) as f:
        config = yaml.safe_load(f)
    for c in conditions(config, a.tasks.split() or None):
        print("\t".join([c["task"], c["label"], str(c["rates"].get("audio", "-")), str(c["rates"].get("video", "-"))]))


if __name__ == "__main__":
    main()
