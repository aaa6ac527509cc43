import logging
import os
from pathlib import Path

import pytest

from espnet_omni_avsr.prep.errors import ItemError, PrepError
from espnet_omni_avsr.prep.sharding import WorkItem, run_sharded, split_items


class Toy:
    """Writes <out>/<uid>.txt; 'bad*' ids are bad items, 'boom*' ids raise an unexpected error
    unless <out>/fixed exists."""

    def __init__(self, out):
        self.out = out

    def __call__(self, item):
        if item.uid.startswith("bad"):
            raise ItemError(f"{item.path}: bad on purpose")
        if item.uid.startswith("boom") and not os.path.exists(os.path.join(self.out, "fixed")):
            raise RuntimeError("a bug")
        path = os.path.join(self.out, item.uid + ".txt")
        with open(path, "w") as f:
            f.write(item.uid)
        return {"value": len(item.uid), "outputs": [path]}


def make_items(tmp_path, uids):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    items = []
    for uid in uids:
        (src / uid).write_text(uid)
        items.append(WorkItem(uid, str(src / uid)))
    return items


def test_split_items():
    items = [WorkItem(str(i), "") for i in range(7)]
    assert [len(s) for s in split_items(items, 3)] == [3, 2, 2]
    assert [len(s) for s in split_items(items[:1], 3)] == [1, 0, 0]
    with pytest.raises(PrepError):
        split_items(items, 0)


@pytest.mark.parametrize("nj", [1, 2])
def test_errors_are_results_and_bugs_are_retried(tmp_path, caplog, nj):
    out = str(tmp_path / "out")
    os.makedirs(out)
    items = make_items(tmp_path, ["a", "bad1", "boom1", "c", "d"])
    with caplog.at_level(logging.INFO):
        run = run_sharded(items, Toy(out), str(tmp_path / "work"), nj, {"v": 1})
    assert run.complete and run.processed == 5
    assert run.results["a"] == {"uid": "a", "ok": True, "value": 1, "outputs": [os.path.join(out, "a.txt")],
                                "key": run.results["a"]["key"]}
    assert not run.results["bad1"]["ok"] and "bad on purpose" in run.results["bad1"]["reason"]
    boom = run.results["boom1"]
    assert boom["retry"] and "unexpected RuntimeError while processing" in boom["reason"]
    assert any("a bug" in m and "retried" in m and "Traceback" in m for m in caplog.messages)
    # the next run retries only the unexpected failure
    Path(out, "fixed").touch()
    again = run_sharded(items, Toy(out), str(tmp_path / "work"), nj, {"v": 1})
    assert (again.processed, again.reused) == (1, 4) and again.results["boom1"]["ok"]
    # a changed source file redoes that item only; a changed option redoes all
    (tmp_path / "src" / "c").write_text("changed content")
    assert run_sharded(items, Toy(out), str(tmp_path / "work"), nj, {"v": 1}).processed == 1
    assert run_sharded(items, Toy(out), str(tmp_path / "work"), nj, {"v": 2}).processed == 5


def test_argument_errors(tmp_path):
    items = [WorkItem("a", "x"), WorkItem("a", "y")]
    with pytest.raises(PrepError, match=r"duplicate utterance ids in the work list: \['a'\]"):
        run_sharded(items, Toy(str(tmp_path)), str(tmp_path / "w"), 1, {})
    with pytest.raises(PrepError, match=r"--shard must be in 1..2"):
        run_sharded(items[:1], Toy(str(tmp_path)), str(tmp_path / "w"), 2, {}, shard=3)


def test_reserved_keys_are_refused(tmp_path):
    run = run_sharded(make_items(tmp_path, ["a"]), lambda item: {"ok": False}, str(tmp_path / "w"), 1, {})
    assert run.results["a"]["retry"] and "reserved keys ['ok']" in run.results["a"]["reason"]


def test_empty_work(tmp_path):
    run = run_sharded([], Toy(str(tmp_path)), str(tmp_path / "w"), 2, {})
    assert run.complete and run.results == {}
