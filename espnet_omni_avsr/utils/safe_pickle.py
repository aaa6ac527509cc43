"""Plain pickles of numpy arrays (precomputed landmark files) without running any code they name.

`load_array_pickle` admits numpy arrays and scalars, numbers, strings, bytes, None and lists /
tuples / dicts / sets of them; any other global (``os.system``, ``builtins.eval``, a class) is
refused with `UnsafePickleError` before anything is called. No torch import (the prep tools
run without it).
"""
import _compat_pickle
import codecs
import os
import pickle
from typing import Any, Union

import numpy as np

#: numpy.(_)core.multiarray.scalar, whatever numpy's version names it
NUMPY_SCALAR = np.float64(0).__reduce__()[0]
_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (pickle protocol 5)

_ALLOWED = {
    **{(m, "_reconstruct"): _RECONSTRUCT for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): NUMPY_SCALAR for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _FROMBUFFER for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles write bytes as encode(str, "latin1")
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, int, float, str, bytes, bool, complex)},
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file's pickle names a global that could run code; nothing of it has run."""


class _ArrayUnpickler(pickle.Unpickler):
    source = "<pickle>"

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 pickles name Python 2 modules
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"{self.source}: refusing to load, its pickle names the global '{module}.{name}'; only "
                "numpy arrays and plain values and containers (lists, dicts, numbers, None) are read "
                "from it, as anything else could run code."
            )
        return _ALLOWED[(module, name)]


def load_array_pickle(path: Union[str, os.PathLike]) -> Any:
    """Unpickle a file of numpy arrays and plain values (module docstring); `UnsafePickleError`
    (an UnpicklingError naming the file) for any other global. Python 2 pickles of arrays are read
    too (their byte strings as latin-1)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        unpickler = _ArrayUnpickler(f, encoding="latin1")
        unpickler.source = path
        return unpickler.load()
