"""Adding a data type to ESPnet's dataset table, the one way this project does it.

``espnet2.train.dataset.ESPnetDataset._build_loader`` looks a type up in the module-level
``DATA_TYPES`` dict (``re.match(key, type)`` in insertion order, entries ``dict(func, kwargs,
help)``), and ``AbsTask.get_parser`` lists the same dict in its ``--help``. One entry in that dict
is all ESPnet needs; nothing is patched or subclassed. Because the match is a prefix match tried in
order, a new name must not start with an existing key (``sound16k`` would be read by ``sound``):
:func:`register_data_type` refuses such a name.
"""
import re
from typing import Callable, Sequence


def register_data_type(name: str, func: Callable, help: str, kwargs: Sequence[str] = ()) -> None:
    """Add ``DATA_TYPES[name]``; safe to call repeatedly with the same loader.

    Raises:
        RuntimeError: ``name`` is registered with a different loader, or an earlier key would
            match it first.
    """
    from espnet2.train.dataset import DATA_TYPES

    entry = DATA_TYPES.get(name)
    if entry is not None:
        other = entry.get("func")
        # ours if it has the same module and name (so that a reloaded module counts as the same)
        if (getattr(other, "__module__", None), getattr(other, "__qualname__", None)) == (
                func.__module__, func.__qualname__):
            return
        raise RuntimeError(f"ESPnet's DATA_TYPES already has a {name!r} entry with loader {other!r}; "
                           "refusing to replace it")
    shadowing = [key for key in DATA_TYPES if re.match(key, name)]
    if shadowing:
        raise RuntimeError(f"data type {name!r}: ESPnet's entry {shadowing[0]!r} would match it first "
                           "(DATA_TYPES is searched by prefix, in order)")
    DATA_TYPES[name] = dict(func=func, kwargs=list(kwargs), help=help)
