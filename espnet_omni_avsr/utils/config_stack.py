"""Several `--config` files for one run: later files override earlier ones.

ESPnet's parser reads one `--config`. A run often is a base config plus a small overlay (the embedded
recipe's warm-up: other losses, epochs and learning rate on the same model), so `avsr_train` merges
them first: mappings are merged key by key (recursively), anything else (lists included) is replaced.
The merged file is what ESPnet then reads, and it writes the resolved config to the output dir as usual.

A config may also name the file it varies: `base_config: ../omni_avsr/multitask_small.yaml` (a path
relative to the config's own folder) loads that file first and merges the rest of this one on top
(recursively: a base may have a base). `conf/sinks/` holds such configs: one loss term added to a
config, without a copy of its hundred lines. `load_config` is the one reader every tool uses.
"""
import atexit
import os
import tempfile
from typing import List, Mapping, Sequence

import yaml


def merge(base: Mapping, overlay: Mapping, _top: bool = True) -> dict:
    """`overlay` on top of `base`: nested mappings merged, other values replaced. One exception at
    the top level: when the overlay chooses another class for a part (`llm_adapter: mome` over
    `shared_lora`), that part's `<key>_conf` belongs to the old class and is replaced by the
    overlay's (or emptied), not merged."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value, _top=False)
        else:
            out[key] = value
        conf = f"{key}_conf"
        if _top and isinstance(value, str) and conf in base and base.get(key) != value:
            out[conf] = dict(overlay.get(conf) or {})
    return out


BASE_KEY = "base_config"


def load_config(path: str, _seen: Sequence[str] = ()) -> dict:
    """A config file with its `base_config` chain resolved (the key itself removed)."""
    d = _load(path)
    base = d.pop(BASE_KEY, None)
    if base is None:
        return d
    if not isinstance(base, str):
        raise SystemExit(f"--config {path}: {BASE_KEY} must be a path, got {base!r}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), base))
    seen = [*_seen, os.path.abspath(path)]
    if base_path in seen:
        raise SystemExit(f"--config {path}: {BASE_KEY} chain loops back to {base_path}")
    if not os.path.isfile(base_path):
        raise SystemExit(f"--config {path}: {BASE_KEY} {base!r} does not exist ({base_path})")
    return merge(load_config(base_path, seen), d)


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f)
    except OSError as e:
        raise SystemExit(f"--config {path}: cannot read it: {e}")
    except yaml.YAMLError as e:
        raise SystemExit(f"--config {path}: not valid YAML: {e}")
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise SystemExit(f"--config {path}: expected a mapping of options at the top, got {type(d).__name__}")
    return d


def stack_configs(argv: Sequence[str]) -> List[str]:
    """argv with every `--config X` (or `--config=X`) replaced by one merged temporary file, when
    there are several or one has a `base_config`; unchanged otherwise."""
    paths, rest, i = [], [], 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            paths.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--config="):
            paths.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    if len(paths) < 2 and not (paths and BASE_KEY in _load(paths[0])):
        return argv
    merged: dict = {}
    for p in paths:
        merged = merge(merged, load_config(p))
    fd, path = tempfile.mkstemp(prefix="avsr_config_", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"# merged from: {' '.join(paths)}\n")
        yaml.safe_dump(merged, f, sort_keys=False, allow_unicode=True)
    atexit.register(lambda: os.path.exists(path) and os.remove(path))
    return ["--config", path, *rest]
