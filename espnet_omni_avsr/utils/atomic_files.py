"""Write-then-rename: an output that a later stage reads is either complete or absent.

A process killed half-way through writing (SIGKILL, a node lost, a full disk) must not leave a
truncated file under the final name, since the next stage, or a rerun that skips finished work,
would take it for complete. Every such output is written to a temporary file beside its final path
(same folder, hence same file system) and renamed into place with :func:`os.replace`, which POSIX
makes atomic. On an error the temporary file is removed and the final path keeps what it held.

* :func:`atomic_output` - the context manager the others build on (yields the temporary path);
* :func:`atomic_write_text` - a text file (UTF-8);
* :func:`atomic_torch_save` - while active, ``torch.save(obj, path)`` writes this way. ESPnet's
  ``Trainer.run`` saves ``checkpoint.pth`` and ``<N>epoch.pth`` with plain ``torch.save`` calls
  inside one long method; `SafeTrainer.run` (utils/safe_training.py) wraps that method in this
  context rather than copying it.
"""
import contextlib
import os
from pathlib import Path
from typing import Iterator, Union

import torch

PathLike = Union[str, os.PathLike]


def _temporary_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block ends normally.

    The block writes the temporary path (it may create it any way it likes). If the block raises,
    the temporary file is removed, ``path`` is untouched and the exception propagates.
    """
    final = Path(path)
    tmp = _temporary_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file renamed into place."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_torch_save() -> Iterator[None]:
    """While active, ``torch.save(obj, f)`` with a path ``f`` writes through :func:`atomic_output`.

    ``torch.save`` is looked up on the ``torch`` module at each call by ESPnet's trainer, so the
    replacement reaches it; a file object ``f`` (already open) is passed through unchanged. The
    original function is restored on exit, also after an error.
    """
    original = torch.save

    def save(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return original(obj, f, *args, **kwargs)
        with atomic_output(f) as tmp:
            return original(obj, tmp, *args, **kwargs)

    save.__wrapped__ = original
    torch.save = save
    try:
        yield
    finally:
        torch.save = original
