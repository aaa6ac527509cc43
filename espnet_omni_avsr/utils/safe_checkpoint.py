"""Load a torch checkpoint of a foreign code base without running any of the code its pickle names.

`torch.load(weights_only=True)` is tried first. Checkpoints written by fairseq often also pickle
configuration objects (an omegaconf `DictConfig` under "cfg", an `argparse.Namespace` under
"args", fairseq's string enums), which weights_only refuses. For those, the file is read again
with a restricted unpickler:

* tensors are rebuilt by torch's own tensor-rebuild functions, and `OrderedDict` and a few
  builtin types (dict, list, int, ...) are admitted as they are;
* classes of the configuration libraries (`omegaconf.*`, `argparse.Namespace`, `fairseq.*`,
  `typing.Any`, `collections.defaultdict`) are replaced by inert stand-ins: the pickle's
  arguments and state are recorded as data and nothing of the original class is imported or
  called; `to_plain` then turns them into plain dicts, lists and values;
* any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, an unknown class) is
  refused with `UnsafeCheckpointError`, before anything is called.

The project's own checkpoints need no stand-ins: `load_weights` is `torch.load(weights_only=True)`
with errors that name the file (trained weights, packed archives' model.pth, Whisper's
pytorch_model.bin; with `TRAINER_SAFE_GLOBALS` ESPnet's resume checkpoints), and
`check_weights_only` the same check for a file another loader reads next (ESPnet's --init_param
loader). `utils.safe_pickle.load_array_pickle` reads plain pickles of numpy arrays (landmark files).
Every user-given file the project or ESPnet's trainer loads goes through one of them
(utils/safe_training.py routes the trainer's).
"""
import _compat_pickle
import collections
import datetime
import logging
import os
import pickle
import types
import zipfile
from typing import Any, Dict, Sequence, Tuple, Union

import numpy as np
import torch

from espnet_omni_avsr.utils.safe_pickle import NUMPY_SCALAR, UnsafePickleError

#: admitted as the real objects: all they do is build tensors or plain containers
_REAL = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, int, float, str, bytes, bool, complex)},
}
#: replaced by inert stand-ins (data containers of configuration libraries)
_STAND_IN_MODULES = ("omegaconf", "fairseq", "avhubert")
_STAND_IN_GLOBALS = {("argparse", "Namespace"), ("typing", "Any"), ("collections", "defaultdict")}


class UnsafeCheckpointError(UnsafePickleError):
    """The file's pickle names a global that is neither a tensor/container builder nor a config class."""


class StandIn:
    """An object of a class that was not imported: what the pickle gave it, as data.

    `qualname` is "module.Class"; `args` what it was called or created with; `state` what the
    pickle's BUILD step set (its `__dict__` or `__getstate__()` value).
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):  # pickle's NEWOBJ calls only __new__, REDUCE the class
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"StandIn({self.qualname}, args={self.args!r}, state={self.state!r})"


def _stand_in_class(module: str, name: str) -> type:
    cls = types.new_class(name, (StandIn,))
    cls.qualname = f"{module}.{name}"
    return cls


def _is_stand_in(module: str, name: str) -> bool:
    return (module, name) in _STAND_IN_GLOBALS or module.split(".")[0] in _STAND_IN_MODULES


class _RestrictedUnpickler(pickle.Unpickler):
    source = "<checkpoint>"

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 pickles name Python 2 modules
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _REAL:
            return _REAL[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if _is_stand_in(module, name):
            return _stand_in_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load, its pickle names the global '{module}.{name}', which is "
            "neither a tensor nor a plain container nor a known configuration class; loading it "
            "could run code. Only load checkpoints from a source you trust, and convert them "
            "with the tool that wrote them."
        )


def _restricted_pickle_module(source: str) -> types.ModuleType:
    """A stand-in for the `pickle` module, as `torch.load(pickle_module=...)` expects."""

    class Unpickler(_RestrictedUnpickler):
        pass

    Unpickler.source = source
    module = types.ModuleType("restricted_pickle")
    module.Unpickler = Unpickler
    module.load = lambda f, **kwargs: Unpickler(f, **kwargs).load()  # legacy (pre-zip) torch files
    module.__name__ = "restricted_pickle"
    return module


def to_plain(obj: Any) -> Any:
    """Stand-ins -> plain values: omegaconf containers -> dict/list, nodes -> their value,
    Namespace -> dict, enum-like calls -> their argument, anything else -> a descriptive dict."""
    if isinstance(obj, StandIn):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:  # omegaconf DictConfig / ListConfig
            return to_plain(state["_content"])
        if "_val" in state:  # omegaconf value node
            return to_plain(state["_val"])
        if obj.qualname == "argparse.Namespace":
            return {k: to_plain(v) for k, v in state.items()}
        if obj.qualname == "collections.defaultdict":
            return {}
        if len(obj.args) == 1 and not state:  # e.g. fairseq's StrEnum("c10d")
            return to_plain(obj.args[0])
        return {"__class__": obj.qualname, "args": to_plain(list(obj.args)), "state": to_plain(obj.state)}
    if isinstance(obj, type) and issubclass(obj, StandIn):
        return obj.qualname
    if isinstance(obj, dict):
        return type(obj)((k, to_plain(v)) for k, v in obj.items()) if isinstance(obj, collections.OrderedDict) \
            else {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def load_checkpoint(path: str) -> Tuple[Dict[str, Any], str]:
    """Read a torch checkpoint file safely; returns (contents with plain containers, how it was read).

    The second value is "weights_only" or "restricted". Raises FileNotFoundError, ValueError for
    a file that is not a torch checkpoint, and UnsafeCheckpointError for one that names code.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError as e:
        logging.info("%s: torch.load(weights_only=True) refused it (%s); reading it with a restricted unpickler",
                     path, str(e).splitlines()[0][:200])
    except Exception as e:  # not a torch file at all (RuntimeError, EOFError, ...)
        raise ValueError(f"{path} is not a torch checkpoint file: {type(e).__name__}: {e}") from e
    try:
        contents = torch.load(path, map_location="cpu", weights_only=False,
                              pickle_module=_restricted_pickle_module(path))
    except UnsafeCheckpointError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not a readable torch checkpoint file: {type(e).__name__}: {e}") from e
    return to_plain(contents), "restricted"


# ------------------------------------------------------------------------------------------------
# Weights-only loading of the project's own checkpoints (trained weights, resume checkpoints,
# --init_param files, packed archives' model.pth, Whisper's pytorch_model.bin)

#: globals of a resume checkpoint of ESPnet's trainer besides tensors and containers: its
#: reporter's statistics hold numpy scalars and the epochs' durations. All three only build values.
TRAINER_SAFE_GLOBALS = (
    NUMPY_SCALAR,
    (NUMPY_SCALAR, "numpy.core.multiarray.scalar"),  # as numpy < 2 named it
    np.dtype,
    *sorted({type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}, key=str),  # Float64DType, ...: their state
    datetime.timedelta,
)


def _weights_only_reason(e: Exception) -> str:
    """torch's refusal, without its advice on how to load the file anyway."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
        text = text.split(" Please use", 1)[0]
    text = " ".join(text.split())
    return text[:300] if text else type(e).__name__


def load_weights(path: Union[str, os.PathLike], what: str = "checkpoint", map_location: Any = "cpu",
                 safe_globals: Sequence = (), mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)`, with errors that name the file.

    `what` says what the file is ("resume checkpoint", "--init_param file", ...) for the messages;
    `safe_globals` admits a few more value-building globals (e.g. TRAINER_SAFE_GLOBALS).
    Raises FileNotFoundError; UnsafeCheckpointError when the pickle names anything but tensors,
    containers and `safe_globals` (nothing of it has run then); ValueError for a file that is
    not a torch checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load this {what}: torch.load(weights_only=True) rejected it "
            f"({_weights_only_reason(e)}). Only tensors and plain containers are read, since anything "
            "else a pickle names could run code when loaded. If you trust the file's source, load it "
            "yourself and re-save its plain state dict."
        ) from None
    except Exception as e:  # not a torch file: RuntimeError, EOFError, KeyError (random bytes), ...
        if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
            raise
        raise ValueError(f"{path}: this {what} is not a readable torch checkpoint: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from None


def check_weights_only(path: Union[str, os.PathLike], what: str = "checkpoint", safe_globals: Sequence = ()) -> None:
    """Raise as `load_weights` does unless `path` loads with weights_only; cheap for zip-format
    files (the tensors are memory-mapped, not read). For a file that another loader reads next."""
    load_weights(path, what, safe_globals=safe_globals, mmap=zipfile.is_zipfile(os.fspath(path)))
