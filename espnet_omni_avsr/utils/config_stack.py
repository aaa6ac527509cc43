"""Several `--config` files for one run: later files override earlier ones.

ESPnet's parser reads one `--config`. A run often is a base config plus a small overlay (the embedded
recipe's warm-up: other losses, epochs and learning rate on the same model), so `avsr_train` merges
them first: mappings are merged key by key (recursively), anything else (lists included) is replaced.
The merged file is what ESPnet then reads, and it writes the resolved config to the output dir as usual.
"""
import atexit
import os
import tempfile
from typing import List, Mapping, Sequence

import yaml


def merge(base: Mapping, overlay: Mapping) -> dict:
    """`overlay` on top of `base`: nested mappings merged, other values replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


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
    there are several; unchanged otherwise."""
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
    if len(paths) < 2:
        return argv
    merged: dict = {}
    for p in paths:
        merged = merge(merged, _load(p))
    fd, path = tempfile.mkstemp(prefix="avsr_config_", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"# merged from: {' '.join(paths)}\n")
        yaml.safe_dump(merged, f, sort_keys=False, allow_unicode=True)
    atexit.register(lambda: os.path.exists(path) and os.remove(path))
    return ["--config", path, *rest]
