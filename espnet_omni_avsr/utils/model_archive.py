"""Pack a trained model into one archive, and unpack it anywhere.

Archive layout (``.tar``, or gzip-compressed for ``.tar.gz`` / ``.tgz``)::

    meta.yaml            format version, date, versions, source paths, sha256 of model.pth and of the
                         source config, the pretrained sources (archive name -> source path, kind,
                         config keys, included)
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
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import tarfile
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import yaml

PathLike = Union[str, os.PathLike]
FOLDER, FILE = "folder", "file"
SOURCE_KEYS: Dict[str, str] = {  # config key -> what its value names
    "model_dir": FOLDER,        # Hugging Face folders: the LLM, Whisper (front end and encoder)
    "tokenizer_dir": FOLDER,    # the preprocessor's LLM tokenizer
    "checkpoint": FILE,         # an AV-HuBERT checkpoint (video_encoder_conf)
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


# --------------------------------------------------------------------------- pack


def pack_model(
    config_yaml: PathLike,
    model_file: PathLike,
    out_path: PathLike,
    include_pretrained: bool = True,
    base_dir: Optional[PathLike] = None,
    force: bool = False,
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
    if out_path.is_file() and not force:
        try:
            with tarfile.open(out_path, "r:*") as tar:
                old = _read_meta(tar, out_path)
        except (ArchiveError, tarfile.TarError) as e:
            logging.warning(f"{out_path} exists but is not a readable model archive ({e}): rewriting it")
            old = {}
        same = ("model_sha256", "config_sha256", "pretrained_included", "pretrained")
        if all(old.get(k) == meta[k] for k in same):
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
