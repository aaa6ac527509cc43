"""Checks of a run's arguments before ESPnet builds anything (the task's `main_worker` calls
`check_run_args` first): each problem is a ValueError naming the config key or the file, where
it would otherwise surface deep inside a constructor or ESPnet's data loader, or not at all.

- ``<part>_conf`` values must be mappings (or null), each key an argument of the chosen class's
  constructor whose value fits its annotation (checked with typeguard, lists also as tuples);
- compression rates (``<modality>_rates`` entries, ``<modality>_compressor_conf.rate``) must be
  integers >= 1 (a YAML ``2.5`` would otherwise be truncated to 2);
- ``model_conf.tasks``: a task name or a list of names;
- the attention encoders of ESPnet (which check nothing): sizes >= 1 (``num_blocks`` >= 0),
  dropout rates in [0, 1], ``output_size`` divisible by ``attention_heads`` (else an assertion with
  an empty message, a negative-dimension tensor error, or no block at all for a negative count);
- the text files ESPnet's loaders read (scp lists, transcripts) must be UTF-8, each bad line named;
- ``--init_param`` files must load with weights_only (utils/safe_training.py).
"""
import argparse
import inspect
import typing
from typing import Iterable, Tuple

from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

from espnet_omni_avsr.utils.safe_training import check_init_params

#: ESPnet data types whose file is a UTF-8 text file (an scp list or the values themselves)
TEXT_FILE_TYPES = frozenset([
    "sound", "multi_columns_sound", "variable_columns_sound", "kaldi_ark", "npy", "audio16k", "video", "text",
    "text_int", "text_float", "csv_int", "csv_float", "multi_columns_text", "duration", "score",
])
MODALITY_PREFIXES = ("audio", "video")
#: conf keys the task itself takes out before calling the constructor (tasks/avsr_llm_task.py)
TASK_HANDLED_KEYS = {"encoder": {"frozen"}, "compressor": {"rate"}}
#: sizes of ESPnet's attention encoders (which check none of them): integers >= 1 (>= 0: the blocks)
ENCODER_SIZES = {"output_size": 1, "attention_heads": 1, "linear_units": 1, "num_blocks": 0,
                 "cnn_module_kernel": 1, "positionwise_conv_kernel_size": 1}
ENCODER_RATES = ("dropout_rate", "positional_dropout_rate", "attention_dropout_rate")


def check_run_args(args: argparse.Namespace) -> None:
    """All checks of the module docstring."""
    check_config(args)
    check_text_files(args)
    check_init_params(args)


def _is_rate(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_config(args: argparse.Namespace) -> None:
    for key in sorted(k for k in vars(args) if k.endswith("_conf")):
        value = getattr(args, key)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping of keyword arguments (or null), got "
                             f"{type(value).__name__} {value!r:.80}")
    for prefix in MODALITY_PREFIXES:
        rates = getattr(args, f"{prefix}_rates", None)
        if rates is not None and not isinstance(rates, (list, tuple)):
            raise ValueError(f"{prefix}_rates must be a list of integers >= 1, got {rates!r:.80}")
        entries = [(f"{prefix}_rates", r) for r in rates or []]
        conf = getattr(args, f"{prefix}_compressor_conf", None) or {}
        if "rate" in conf:
            entries.append((f"{prefix}_compressor_conf.rate", conf["rate"]))
        for key, rate in entries:
            if not _is_rate(rate):
                raise ValueError(f"{key}: a compression rate must be an integer >= 1, got {rate!r:.80}")
    tasks = (getattr(args, "model_conf", None) or {}).get("tasks")
    if tasks is not None and not isinstance(tasks, str) and not (
        isinstance(tasks, (list, tuple)) and all(isinstance(t, str) for t in tasks)
    ):
        raise ValueError(f"model_conf.tasks must be a task name or a list of names, got {tasks!r:.80}")
    _check_attention_encoders(args)
    _check_part_confs(args)


def _check_attention_encoders(args: argparse.Namespace) -> None:
    from espnet_omni_avsr.tasks import avsr_llm_task

    for prefix in MODALITY_PREFIXES:
        name = getattr(args, f"{prefix}_encoder", None)
        choices = getattr(avsr_llm_task, f"{prefix}_encoder_choices")
        if name is None or name not in choices.classes:
            continue  # ESPnet's ClassChoices names the choices
        cls = choices.get_class(name)
        params = inspect.signature(cls.__init__).parameters
        if not {"output_size", "attention_heads"} <= set(params) or not cls.__module__.startswith("espnet2."):
            continue
        conf = getattr(args, f"{prefix}_encoder_conf", None) or {}
        key = f"{prefix}_encoder_conf"
        values = {k: conf.get(k, params[k].default) for k in [*ENCODER_SIZES, *ENCODER_RATES] if k in params}
        for field, low in ENCODER_SIZES.items():
            value = values.get(field, low)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key}.{field} must be an integer >= {low}, got {value!r:.80}")
        for field in ENCODER_RATES:
            value = values.get(field, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{key}.{field} must be a probability in [0, 1], got {value!r:.80}")
        if values["output_size"] % values["attention_heads"]:
            raise ValueError(f"{key}: output_size {values['output_size']} is not divisible by attention_heads "
                             f"{values['attention_heads']}")


def _admits_bool(hint) -> bool:
    if hint is bool or hint is typing.Any:
        return True
    return typing.get_origin(hint) is typing.Union and any(_admits_bool(h) for h in typing.get_args(hint))


def _fits(value, hint) -> bool:
    if isinstance(value, bool) and not _admits_bool(hint):  # typeguard takes True for an int
        return False
    for candidate in [value] + ([tuple(value)] if isinstance(value, list) else []):  # YAML has no tuples
        try:
            check_type(candidate, hint, collection_check_strategy=CollectionCheckStrategy.ALL_ITEMS)
            return True
        except TypeCheckError:
            pass
    return False


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable forward references: only the evaluated annotations
        return {k: p.annotation for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.annotation is not inspect.Parameter.empty and not isinstance(p.annotation, str)}


def _check_part_confs(args: argparse.Namespace) -> None:
    """Each ``<part>_conf`` key against the constructor of the class ``<part>`` chooses."""
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    for choices in AVSRLLMTask.class_choices_list:
        name = getattr(args, choices.name, None)
        conf = getattr(args, f"{choices.name}_conf", None) or {}
        if name is None or name not in choices.classes or not conf:
            continue  # ESPnet's ClassChoices names the choices of an unknown name
        cls = choices.get_class(name)
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        handled = TASK_HANDLED_KEYS.get(choices.name.split("_")[-1], set())
        hints = _hints(cls)
        for key, value in conf.items():
            where = f"{choices.name}_conf.{key}"
            if key not in params:
                if takes_any or key in handled:
                    continue
                accepted = sorted(k for k, p in params.items()
                                  if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
                raise ValueError(f"{where}: {cls.__name__} ({choices.name}: {name}) takes no argument {key!r}; "
                                 f"its arguments: {accepted}")
            if key in hints and not _fits(value, hints[key]):
                hint = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
                raise ValueError(f"{where}: {value!r:.80} is not a valid {hint} (the {key} argument of {cls.__name__})")


def _data_files(args: argparse.Namespace) -> Iterable[Tuple[str, str]]:
    for key in ("train_data_path_and_name_and_type", "valid_data_path_and_name_and_type"):
        for entry in getattr(args, key, None) or []:
            path, _, data_type = entry
            if data_type in TEXT_FILE_TYPES:
                yield key, path


def check_text_files(args: argparse.Namespace) -> None:
    """ESPnet reads its lists with encoding="utf-8" and reports a bad byte without the file."""
    for key, path in _data_files(args):
        try:
            with open(path, "rb") as f:
                for number, line in enumerate(f, 1):
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ValueError(f"{path}:{number} (--{key}): not UTF-8 text ({e})") from None
        except FileNotFoundError:
            raise FileNotFoundError(f"--{key}: {path} not found") from None
