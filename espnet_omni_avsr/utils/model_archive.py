"""Pack a trained model into one archive, and unpack it anywhere.

Archive layout (``.tar``, or gzip-compressed for ``.tar.gz`` / ``.tgz``)::

    meta.yaml            format version, date, versions, source paths, sha256 of model.pth and of the
                         source config, the pretrained sources (archive name -> source path, kind,
                         config keys, included); when the exp dir has them, the validation loss
                         of each condition label and the WERs of its scored decodings (below)
    config.yaml          the training config; every value under a key of ``SOURCE_KEYS``, at any
                         depth of nested dicts and lists, rewritten to ``pretrained/<name>``
    model.pth            the trained weights
    pretrained/<name>    the referenced local folders and files (when include_pretrained)

``SOURCE_KEYS`` is the one list of the config keys whose values are local folders or files the
model is built from: the pretrained folders (``model_dir``, ``tokenizer_dir``), the AV-HuBERT
``checkpoint`` file, token CTC's vocabulary file (``vocab`` in its loss term's conf) and the
speech-rate predictor of an early-fused model (``speech_rate_predictor``). Frozen pretrained
weights are left out of model.pth (utils/frozen_weights.py) and rebuilt from these, so an archive
needs them all to be self-contained. The model is not built to pack it (that would load the LLM);
the config names every source the built model reports (``frozen_weights.pretrained_sources``).

Relative paths in the config are resolved against ``base_dir`` (the directory training ran in: the
recipe directory). Two different sources with the same name get ``<name>-2`` (files:
``<stem>-2<suffix>``), ...; one source referenced twice (decoder and tokenizer) is stored once.
Symbolic links (Hugging Face caches) are stored as the files they point to.

``unpack_model`` refuses members with absolute paths, ``..`` components, links, devices or anything
that would land outside ``dest_dir``; checks model.pth against the recorded sha256; rewrites the
``pretrained/<name>`` paths of config.yaml to absolute paths (under ``dest_dir``, or under
``pretrained_dir`` for archives packed without them); and writes ``.unpacked`` last, so a second
call with the same archive does nothing. Archives of format 1 (folders only) unpack the same way.

What the model scored, for choosing its conditions at inference (``inference/rate_choice.py``),
read from the exp dir (default: the config's folder) and left out of meta.yaml when absent::

    validation:            from <exp>/checkpoint.pth (ESPnet's reporter state, per-epoch statistics)
      epoch: 12            the epoch whose weights are packed (model file <N>epoch.pth, symlinks
      epoch_of: packed weights   followed), else the last epoch with validation statistics
                           ("last epoch": e.g. an average of several epochs)
      source: /abs/exp/checkpoint.pth
      loss: {asr_a4: 1.23, asr_a16: 1.41, avsr_a4v2: 1.02, ...}
    results:               from <exp>/decode_*/<test_set>/<label>/snr_*/score_wer/summary.json
      source: /abs/exp
      wer: {<inference_tag>: {<test_set>: {<label>: {clean: 2.1, '10': 3.4, '-5': 21.0}}}}

``loss`` holds the validation statistics ``loss_<label>`` whose ``<label>`` is a condition label
(``names.parse_condition_label``): one per (task, condition) job, as validation runs every
condition (a bare task name, with several tasks, is that task's mean over its conditions); a model
with one condition per task reports none. WERs are in %, SNR keys as ``names.format_snr`` writes
them.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import os
import math
import platform
import re
import shutil
import tarfile
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import yaml

from espnet_omni_avsr.names import CLEAN, DECODE_GLOB, format_snr, parse_condition_label, parse_decode_dir

PathLike = Union[str, os.PathLike]
FOLDER, FILE = "folder", "file"
SOURCE_KEYS: Dict[str, str] = {  # config key -> what its value names
    "model_dir": FOLDER,        # Hugging Face folders: the LLM, Whisper (front end and encoder)
    "tokenizer_dir": FOLDER,    # the preprocessor's LLM tokenizer
    "checkpoint": FILE,         # an AV-HuBERT checkpoint (video_encoder_conf, or fusion_conf of fusion: avhubert)
    "vocab": FILE,              # token CTC's vocabulary, a Kaldi text file (losses: [{type: token_ctc, conf}])
    "speech_rate_predictor": FILE,  # MMS-LLaMA's speech-rate predictor (bin/train_speech_rate.py)
}
PRETRAINED_KEYS = tuple(SOURCE_KEYS)
ARCHIVE_PRETRAINED = "pretrained"
FORMAT = "espnet_omni_avsr model archive"
FORMAT_VERSION = 2  # sources may be files as well as folders
UNPACK_MARKER = ".unpacked"
_VERSIONED = ("torch", "espnet", "transformers", "peft", "espnet_omni_avsr")
_OURS = ("meta.yaml", "config.yaml", "model.pth", ARCHIVE_PRETRAINED, UNPACK_MARKER)

KeyPath = Tuple[Union[str, int], ...]
CHECKPOINT = "checkpoint.pth"       # ESPnet's trainer state, rewritten every epoch
VALID_KEY = "valid"                 # the reporter's key of the validation statistics
LOSS_PREFIX = "loss_"
SUMMARY = "score_wer/summary.json"  # under a decoding dir (bin/score)
_EPOCH_FILE_RE = re.compile(r"([0-9]+)epoch\.pth")


class ArchiveError(RuntimeError):
    """An archive that is malformed, unsafe or does not match its record."""


# --------------------------------------------------------------------------- config walking


def iter_pretrained_paths(config: Any, keys=PRETRAINED_KEYS, _path: KeyPath = ()) -> Iterator[Tuple[KeyPath, str]]:
    """(key path, value) of every string value under a key in ``keys``, at any depth."""
    if isinstance(config, dict):
        for k, v in config.items():
            if k in keys and isinstance(v, str) and v:
                yield _path + (k,), v
            else:
                yield from iter_pretrained_paths(v, keys, _path + (k,))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            yield from iter_pretrained_paths(v, keys, _path + (i,))


def _set(config: Any, path: KeyPath, value: str) -> None:
    for k in path[:-1]:
        config = config[k]
    config[path[-1]] = value


def _dotted(path: KeyPath) -> str:
    return ".".join(str(k) for k in path)


def _is_kind(path: Path, kind: str) -> bool:
    return path.is_dir() if kind == FOLDER else path.is_file()


def _archive_name(src: Path, kind: str, taken) -> str:
    """The source's own name, or ``<name>-2`` (files: ``<stem>-2<suffix>``), ... when taken."""
    stem, suffix = (src.name, "") if kind == FOLDER else (src.stem, src.suffix)
    name, n = src.name, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}{suffix}"
    return name


# --------------------------------------------------------------------------- helpers


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _write_mode(out_path: Path) -> str:
    name = out_path.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "w:gz"
    if name.endswith(".tar"):
        return "w"
    raise ValueError(f"archive name {out_path} must end with .tar, .tar.gz or .tgz")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(datetime.datetime.now().timestamp())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _anonymise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# --------------------------------------------------------------------------- what the model scored


def _reporter_globals() -> list:
    """The non-tensor types of ESPnet's reporter state that torch's weights_only loader refuses by
    default: numpy scalars (its training averages), their dtypes and the epochs' durations."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = {type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)}
    return [datetime.timedelta, scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *sorted(dtypes, key=str)]


def read_reporter_stats(checkpoint: PathLike) -> Optional[Dict[int, dict]]:
    """epoch -> {"train": {...}, "valid": {...}} from ESPnet's ``checkpoint.pth``, read with the
    project's safe loader (utils/safe_checkpoint.py) admitting the reporter's plain value types
    (:func:`_reporter_globals`) too; None (and a warning) for a file it cannot read that way."""
    import torch

    from espnet_omni_avsr.utils.safe_checkpoint import UnsafeCheckpointError, load_checkpoint

    try:
        with torch.serialization.safe_globals(_reporter_globals()):
            contents, _ = load_checkpoint(str(checkpoint))
    except (UnsafeCheckpointError, ValueError, OSError) as e:
        logging.warning(f"{checkpoint}: no validation statistics read ({e})")
        return None
    reporter = contents.get("reporter") if isinstance(contents, dict) else None
    stats = reporter.get("stats") if isinstance(reporter, dict) else None
    if not isinstance(stats, dict):
        logging.warning(f"{checkpoint}: no reporter state (not a checkpoint.pth of ESPnet's trainer?)")
        return None
    return {int(e): d for e, d in stats.items() if isinstance(d, dict)}


def _is_label(text: str) -> bool:
    try:
        parse_condition_label(text)
    except ValueError:
        return False
    return True


def validation_record(exp_dir: PathLike, model_file: Optional[PathLike] = None) -> Optional[dict]:
    """The ``validation`` entry of meta.yaml (module docstring) from ``<exp_dir>/checkpoint.pth``;
    None when there is none, or no epoch with validation statistics."""
    path = Path(exp_dir) / CHECKPOINT
    if not path.is_file():
        return None
    stats = read_reporter_stats(path)
    epochs = sorted(e for e, d in (stats or {}).items() if isinstance(d.get(VALID_KEY), dict))
    if not epochs:
        return None
    epoch, which = epochs[-1], "last epoch"
    if model_file is not None:
        match = _EPOCH_FILE_RE.fullmatch(Path(model_file).resolve().name)
        if match and int(match.group(1)) in epochs:
            epoch, which = int(match.group(1)), "packed weights"
    loss = {}
    for key, value in stats[epoch][VALID_KEY].items():
        label = key[len(LOSS_PREFIX):] if isinstance(key, str) and key.startswith(LOSS_PREFIX) else None
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if label and _is_label(label) and math.isfinite(value):
            loss[label] = value
    return {"epoch": int(epoch), "epoch_of": which, "source": str(path.resolve()), "loss": dict(sorted(loss.items()))}


def decode_results(exp_dir: PathLike) -> Optional[dict]:
    """The ``results`` entry of meta.yaml (module docstring) from the scored decoding dirs of
    ``exp_dir``; None when there are none. Unreadable summaries are skipped with a warning."""
    exp = Path(exp_dir)
    wer: Dict[str, dict] = {}
    for path in sorted(exp.glob(f"{DECODE_GLOB}/{SUMMARY}")):
        try:
            d = parse_decode_dir(path.parent.parent.as_posix())
            value = float(json.loads(path.read_text(encoding="utf-8"))["wer"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            logging.warning(f"{path}: left out of the archive's results ({type(e).__name__}: {e})")
            continue
        snr = CLEAN if d.snr is None else format_snr(d.snr)
        wer.setdefault(d.inference_tag, {}).setdefault(d.test_set, {}).setdefault(d.label, {})[snr] = value
    return {"source": str(exp.resolve()), "wer": wer} if wer else None


def model_record(directory: PathLike, model_file: Optional[PathLike] = None) -> dict:
    """What a model directory says about its model: the meta.yaml of an unpacked archive, else (a
    training exp dir) its ``validation`` and ``results`` read as pack_model would."""
    directory = Path(directory)
    meta_path = directory / "meta.yaml"
    if meta_path.is_file():
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
        return meta if isinstance(meta, dict) else {}
    out = {}
    for key, value in (("validation", validation_record(directory, model_file)), ("results", decode_results(directory))):
        if value is not None:
            out[key] = value
    return out


# --------------------------------------------------------------------------- pack


def pack_model(
    config_yaml: PathLike,
    model_file: PathLike,
    out_path: PathLike,
    include_pretrained: bool = True,
    base_dir: Optional[PathLike] = None,
    force: bool = False,
    exp_dir: Optional[PathLike] = None,
) -> dict:
    """Write the archive (layout in the module docstring); returns the meta record.

    An existing archive packed from the same config and weights (same sha256s, same pretrained
    sources, same include_pretrained) is kept unless ``force``; the sources' contents are not
    compared.

    Args:
        config_yaml: the training config.yaml.
        model_file: the trained weights (any name; stored as model.pth).
        out_path: ``*.tar`` or ``*.tar.gz`` / ``*.tgz``; written atomically.
        include_pretrained: copy the referenced folders and files in (else only their names are
            kept, and ``unpack_model`` needs ``pretrained_dir``).
        base_dir: what relative paths in the config are relative to (default: the current directory).
        exp_dir: where the validation statistics and scored decodings are read (module docstring;
            default: the config's folder).
    """
    config_yaml, model_file, out_path = Path(config_yaml), Path(model_file), Path(out_path)
    base = Path(base_dir if base_dir is not None else os.getcwd()).resolve()
    for p in (config_yaml, model_file):
        if not p.is_file():
            raise FileNotFoundError(f"no such file: {p}")
    mode = _write_mode(out_path)
    config = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{config_yaml}: expected a YAML mapping at the top level")

    sources: Dict[Path, str] = {}      # resolved source folder or file -> archive name
    record: Dict[str, dict] = {}       # archive name -> {source, kind, keys, included}
    for keypath, value in list(iter_pretrained_paths(config)):
        kind = SOURCE_KEYS[keypath[-1]]
        src = Path(value) if os.path.isabs(value) else base / value
        src = src.resolve()
        if include_pretrained and not _is_kind(src, kind):
            raise FileNotFoundError(
                f"{config_yaml}: {_dotted(keypath)} = {value!r} -> {src} is not a "
                f"{'directory' if kind == FOLDER else 'file'} (relative paths are resolved against base_dir {base})"
            )
        if src not in sources:
            name = _archive_name(src, kind, record)
            sources[src] = name
            record[name] = {"source": str(src), "kind": kind, "keys": [], "included": bool(include_pretrained)}
            if not include_pretrained and not _is_kind(src, kind):
                logging.warning(f"{_dotted(keypath)}: {src} does not exist here (not included anyway)")
        name = sources[src]
        record[name]["keys"].append(_dotted(keypath))
        _set(config, keypath, f"{ARCHIVE_PRETRAINED}/{name}")

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "source": {"config": str(config_yaml.resolve()), "model_file": str(model_file.resolve()),
                   "base_dir": str(base)},
        "model_sha256": sha256_file(model_file),
        "config_sha256": sha256_file(config_yaml),
        "pretrained_included": bool(include_pretrained),
        "pretrained": record,
    }
    exp = Path(exp_dir) if exp_dir is not None else config_yaml.parent
    for key, value in (("validation", validation_record(exp, model_file)), ("results", decode_results(exp))):
        if value is not None:
            meta[key] = value
    if out_path.is_file() and not force:
        try:
            with tarfile.open(out_path, "r:*") as tar:
                old = _read_meta(tar, out_path)
        except (ArchiveError, tarfile.TarError) as e:
            logging.warning(f"{out_path} exists but is not a readable model archive ({e}): rewriting it")
            old = {}
        same = ("model_sha256", "config_sha256", "pretrained_included", "pretrained", "validation", "results")
        if all(old.get(k) == meta.get(k) for k in same):
            logging.info(f"{out_path} already holds this model: skipped")
            return old
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    with tarfile.open(tmp, mode, dereference=True) as tar:
        _add_bytes(tar, "meta.yaml", yaml.safe_dump(meta, sort_keys=False).encode("utf-8"))
        _add_bytes(tar, "config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode("utf-8"))
        tar.add(str(model_file), arcname="model.pth", filter=_anonymise)
        if include_pretrained:
            for src, name in sources.items():
                tar.add(str(src), arcname=f"{ARCHIVE_PRETRAINED}/{name}", recursive=True, filter=_anonymise)
    os.replace(tmp, out_path)
    logging.info(f"packed {model_file} + {config_yaml} ({len(sources)} pretrained folders and files"
                 f"{'' if include_pretrained else ', not included'}) -> {out_path}")
    return meta


# --------------------------------------------------------------------------- unpack


def _check_member(member: tarfile.TarInfo, dest: Path, archive: Path) -> None:
    name = member.name
    pure = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{archive}: refusing member with an absolute path: {name!r}")
    if ".." in pure.parts or "\\" in name:
        raise ArchiveError(f"{archive}: refusing member with '..' or a backslash in its path: {name!r}")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{archive}: refusing member {name!r}: links, devices and fifos are not allowed")
    target = (dest / name).resolve()
    if target != dest and dest not in target.parents:
        raise ArchiveError(f"{archive}: refusing member {name!r}: it would be written outside {dest}")


def _read_meta(tar: tarfile.TarFile, archive: Path) -> dict:
    try:
        f = tar.extractfile("meta.yaml")
    except KeyError:
        f = None
    if f is None:
        raise ArchiveError(f"{archive}: no meta.yaml (not a model archive written by pack_model?)")
    meta = yaml.safe_load(f.read().decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArchiveError(f"{archive}: meta.yaml is not a {FORMAT!r} record")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ArchiveError(f"{archive}: format_version {meta['format_version']} is newer than this code "
                           f"({FORMAT_VERSION}); update espnet_omni_avsr")
    return meta


def unpack_model(
    archive: PathLike,
    dest_dir: PathLike,
    pretrained_dir: Optional[PathLike] = None,
    overwrite: bool = False,
) -> Tuple[Path, Path]:
    """Extract ``archive`` into ``dest_dir`` -> (config.yaml path, model.pth path), absolute.

    Args:
        pretrained_dir: for archives packed without the pretrained folders and files: a directory
            holding them under the same names (``<pretrained_dir>/<name>``). Without it such paths
            point to ``dest_dir/pretrained/<name>`` and a warning lists the ones that are missing.
        overwrite: replace an unpacked model with a different sha256 (only the archive's own entries
            in ``dest_dir`` are removed). Without it that is an error.
    """
    archive = Path(archive)
    dest = Path(dest_dir).resolve()
    if not archive.is_file():
        raise FileNotFoundError(f"no such archive: {archive}")
    config_path, model_path, marker = dest / "config.yaml", dest / "model.pth", dest / UNPACK_MARKER
    with tarfile.open(archive, "r:*") as tar:
        meta = _read_meta(tar, archive)
        sha = meta.get("model_sha256")
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("model_sha256") == sha and config_path.is_file() and model_path.is_file():
                logging.info(f"{archive} is already unpacked in {dest}: skipped")
                return config_path, model_path
            if not overwrite:
                raise FileExistsError(
                    f"{dest} holds another unpacked model (sha256 {done.get('model_sha256')}, this archive {sha}); "
                    "choose another directory or pass overwrite"
                )
        elif any((dest / n).exists() for n in _OURS) and not overwrite:
            raise FileExistsError(f"{dest} already has files of a model archive but no {UNPACK_MARKER} "
                                  "(interrupted unpack?): remove them or pass overwrite")
        members = tar.getmembers()
        dest.mkdir(parents=True, exist_ok=True)
        for m in members:
            _check_member(m, dest, archive)
        for n in _OURS:
            p = dest / n
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        extract_kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **extract_kwargs)

    if not config_path.is_file() or not model_path.is_file():
        raise ArchiveError(f"{archive}: config.yaml or model.pth missing from the archive")
    got = sha256_file(model_path)
    if got != sha:
        raise ArchiveError(f"{archive}: model.pth sha256 {got} differs from meta.yaml's {sha} (corrupt archive)")

    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    included = bool(meta.get("pretrained_included", True))
    root = dest / ARCHIVE_PRETRAINED if included or pretrained_dir is None else Path(pretrained_dir).resolve()
    missing = []
    prefix = ARCHIVE_PRETRAINED + "/"
    for keypath, value in list(iter_pretrained_paths(config)):
        if not value.startswith(prefix):
            logging.warning(f"{archive}: {_dotted(keypath)} = {value!r} is not inside the archive; left as is")
            continue
        target = root / value[len(prefix):]
        if not _is_kind(target, SOURCE_KEYS[keypath[-1]]):
            missing.append(f"{_dotted(keypath)} -> {target}")
        _set(config, keypath, str(target))
    if missing and (included or pretrained_dir is not None):
        raise ArchiveError(f"{archive}: pretrained folders or files not found after unpacking: {missing}")
    if missing:
        logging.warning(
            f"{archive} was packed without its pretrained folders and files; put them at (or unpack "
            f"with pretrained_dir=...): {missing}"
        )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    marker.write_text(json.dumps({"archive": str(archive.resolve()), "model_sha256": sha}) + "\n")
    logging.info(f"unpacked {archive} -> {dest}")
    return config_path, model_path
