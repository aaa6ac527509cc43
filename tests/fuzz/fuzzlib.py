"""Seeded fuzz cases: each case either succeeds (the caller checks the output) or raises one of the
allowed error types whose message names the item (file, utterance, config key); anything else
fails the test with the case's name. `COUNTS` collects the cases per reader for the summary that
tests/fuzz/conftest.py prints."""
import collections
import traceback
from typing import Callable, Iterable, Optional, Sequence, Tuple, Type

import pytest

COUNTS: "collections.Counter[Tuple[str, str]]" = collections.Counter()


def case(reader: str, name: str, fn: Callable, names: Iterable[str],
         allowed: Tuple[Type[BaseException], ...] = (ValueError,), expect: Optional[str] = None):
    """Run one case of `reader`. Returns fn's result, or None when it raised an allowed error.

    names: strings of which at least one must appear in an error's message (the file, utterance, key).
    expect: "ok" or "error" when the outcome is known; None when either is fine.
    """
    names = [str(n) for n in names]
    try:
        out = fn()
    except allowed as e:
        msg = str(e)
        if not any(n in msg for n in names):
            pytest.fail(f"[{reader}] {name}: {type(e).__name__} does not name any of {names}: {msg}")
        if expect == "ok":
            pytest.fail(f"[{reader}] {name}: expected success, got {type(e).__name__}: {msg}")
        COUNTS[reader, "named error"] += 1
        return None
    except Exception as e:  # a deep error: not one of the named errors
        pytest.fail(f"[{reader}] {name}: {type(e).__name__} escaped: {e}\n{traceback.format_exc()[-3000:]}")
    if expect == "error":
        pytest.fail(f"[{reader}] {name}: expected a named error, got {type(out).__name__} {getattr(out, 'shape', '')}")
    COUNTS[reader, "ok"] += 1
    return out


def summary_lines() -> Sequence[str]:
    readers = sorted({r for r, _ in COUNTS})
    lines = []
    for r in readers:
        ok, err = COUNTS[r, "ok"], COUNTS[r, "named error"]
        lines.append(f"{r:<28} {ok + err:5d} cases  ({ok} handled, {err} named errors)")
    total = sum(COUNTS.values())
    lines.append(f"{'total':<28} {total:5d} cases")
    return lines
