"""Train an LLM-based ASR / VSR / AVSR model: every ESPnet trainer option works (--resume, --ngpu, ...).

Several --config files may be given; later ones override earlier ones (utils/config_stack.py).

A run that finishes writes ``<output_dir>/avsr_train.done`` (``DONE_MARKER``): a fingerprint of its
options (each --config's resolved content, every other argument, and the content of every file an
argument names, e.g. the data lists and shape files) and the size and modification time of what
later stages read: ``checkpoint.pth`` after training, every file under ``--output_dir`` after
``--collect_stats``. Called again with the same fingerprint, on outputs that are still those, it
does nothing: a finished ``--resume true`` training (ESPnet would only average the best epochs again
and rewrite the averaged model, so that every decoding of it looks out of date) or a finished
statistics collection is not run again. Another option (e.g. ``--max_epoch``), another input or
another checkpoint runs it as usual; a training without ``--resume true`` always runs.
"""
import hashlib
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from espnet_omni_avsr.utils.atomic_files import atomic_write_text
from espnet_omni_avsr.utils.config_stack import load_config, stack_configs
from espnet_omni_avsr.utils.model_archive import sha256_file

DONE_MARKER = "avsr_train.done"


def get_parser():
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    return AVSRLLMTask.get_parser()


def _split_options(argv: Sequence[str]) -> List[List[str]]:
    """argv as [option, value...] groups; `--opt=value` becomes [`--opt`, `value`]."""
    groups: List[List[str]] = []
    for a in argv:
        if a.startswith("--"):
            groups.append(a.split("=", 1))
        elif groups:
            groups[-1].append(a)
        else:
            groups.append([a])
    return groups


def _option(groups: List[List[str]], configs: Sequence[dict], name: str) -> Optional[str]:
    """The last value given to --name on the command line, else in the configs, else None."""
    for g in reversed(groups):
        if g[0] == f"--{name}" and len(g) > 1:
            return g[-1]
    for c in reversed(configs):
        if name in c:
            return str(c[name])
    return None


def _true(value: Optional[str]) -> bool:
    return value is not None and value.lower() in ("y", "yes", "t", "true", "on", "1")


def fingerprint(argv: Sequence[str]) -> str:
    """What the run depends on (module docstring): options, resolved configs, named files' content."""
    parts = []
    for g in _split_options(argv):
        if g[0] == "--config":
            parts.append(["--config", *[load_config(p) for p in g[1:]]])
            continue
        values = []
        for v in g[1:]:
            path = v.split(",", 1)[0]  # a data triple `path,name,type` names its file first
            values.append([v, sha256_file(path)] if os.path.isfile(path) else v)
        parts.append([g[0], *values])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _outputs(output_dir: str, collect_stats: bool) -> Dict[str, List[int]]:
    """{path relative to output_dir: [size, mtime_ns]} of what later stages read."""
    if collect_stats:
        paths = [os.path.join(d, f) for d, _, files in os.walk(output_dir) for f in files
                 if not f.startswith(DONE_MARKER)]  # the marker and its temporary file
    else:
        paths = [os.path.join(output_dir, "checkpoint.pth")]
    out = {}
    for p in sorted(paths):
        st = os.stat(p)
        out[os.path.relpath(p, output_dir)] = [st.st_size, st.st_mtime_ns]
    return out


def _still_done(marker: str, output_dir: str, digest: str, collect_stats: bool) -> bool:
    if not os.path.isfile(marker):
        return False
    with open(marker, encoding="utf-8") as f:
        try:
            done = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{marker}: not a done marker of avsr_train ({e}); delete it to run again") from None
    if done.get("fingerprint") != digest:
        return False
    try:
        return _outputs(output_dir, collect_stats) == done.get("outputs")
    except FileNotFoundError:
        return False


def _write_done(marker: str, output_dir: str, digest: str, collect_stats: bool) -> None:
    done = {"fingerprint": digest, "outputs": _outputs(output_dir, collect_stats)}
    atomic_write_text(marker, json.dumps(done, indent=1))


def main(cmd=None):
    argv = list(sys.argv[1:] if cmd is None else cmd)
    groups = _split_options(argv)
    configs = [load_config(p) for g in groups if g[0] == "--config" for p in g[1:]]
    output_dir = _option(groups, configs, "output_dir")
    collect_stats = _true(_option(groups, configs, "collect_stats"))
    resumable = output_dir is not None and (collect_stats or _true(_option(groups, configs, "resume")))
    if resumable:
        marker = os.path.join(output_dir, DONE_MARKER)
        digest = fingerprint(argv)
        if _still_done(marker, output_dir, digest, collect_stats):
            print(f"{output_dir}: finished earlier with the same options and inputs ({marker}); not run again",
                  file=sys.stderr)
            return
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    AVSRLLMTask.main(cmd=stack_configs(argv))
    if resumable:
        _write_done(marker, output_dir, digest, collect_stats)


if __name__ == "__main__":
    main()
