"""Sharded, resumable per-utterance jobs with a merge (shared by the video and audio stages).

The items, sorted by id, are cut into ``nj`` contiguous shards (like Kaldi's split_scp.pl). Each
shard keeps a result log and, once every one of its items has a result, a done marker, in
``work_dir``::

    shard.<k>-of-<nj>.jsonl   one JSON result per line, appended as items finish
    shard.<k>-of-<nj>.done    written when the shard is complete (holds the shard's fingerprint)

Every result carries the key of its item: a hash of the job's options and the item's id, source
path, size and modification time. A re-run reuses every logged result whose key still matches and
does only the rest: finished shards are skipped, an interrupted shard goes on after its last logged
item (a half-written last line is ignored), a changed option or source file redoes exactly the
items it touches, and a run with another ``nj`` reuses the results of the old layout. Items whose
output files have gone missing, and items that failed with an unexpected exception (a bug or a
resource problem rather than bad data), are done again.

One item's failure never stops the job: :class:`~espnet_omni_avsr.prep.errors.ItemError` becomes a
bad result with its message as the reason; any other exception also becomes a bad result, marked
for retry and logged with its traceback. KeyboardInterrupt stops the job; what was logged is kept.

Parallelism: with ``shard=None`` the pending items of all shards go to a pool of ``nj`` processes
and the calling process writes every log; with ``shard=k`` only shard k is processed, in the calling
process, so that shards can run as separate jobs (e.g. a cluster queue, one job per shard); a
later call with ``shard=None`` finds them done and only merges.
"""
import collections
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from tqdm import tqdm

from espnet_omni_avsr.prep.errors import ItemError, PrepError

logger = logging.getLogger(__name__)

# keys of every result; a processor's own fields come beside them
RESERVED_KEYS = ("uid", "ok", "reason", "retry", "traceback", "key")
_SHARD_FILE = re.compile(r"^shard\.(\d+)-of-(\d+)\.(jsonl|done)$")


@dataclass(frozen=True)
class WorkItem:
    """One utterance to process: its id and its source file."""

    uid: str
    path: str


@dataclass
class ShardRun:
    """What :func:`run_sharded` did.

    Attributes:
        results: {uid: result} sorted by id, filled only when ``complete``. A result is a dict
            with ``uid``, ``ok`` and, when ok, the processor's fields, else ``reason``.
        processed: items processed by this call.
        reused: items whose result came from an earlier run.
        complete: every shard is done and ``results`` is filled; always False with ``shard=k``
            (one job of several: a later call without ``shard`` merges).
    """

    results: Dict[str, dict] = field(default_factory=dict)
    processed: int = 0
    reused: int = 0
    complete: bool = True


@dataclass
class StageResult:
    """What a sharded stage did after its merge (``run.complete``) or for one shard.

    Attributes:
        run: the ShardRun.
        kept: ids of the good items (empty when the run is not complete).
        bad: the bad-item records written by the merge.
    """

    run: ShardRun
    kept: List[str] = field(default_factory=list)
    bad: List = field(default_factory=list)

    def summary(self, out_dir: str, noun: str, shard: Optional[int], nj: int) -> str:
        """One line for the CLI: what was kept after a merge, or what one shard did."""
        run = self.run
        if run.complete:
            return (f"{out_dir}: {len(self.kept)} of {len(run.results)} {noun} kept, {len(self.bad)} bad items "
                    f"({run.processed} processed, {run.reused} reused from an earlier run)")
        return (f"{out_dir}: shard {shard} of {nj} done ({run.processed} processed, "
                f"{run.reused} reused); run without --shard to merge")


def split_items(items: Sequence[WorkItem], nj: int) -> List[List[WorkItem]]:
    """Contiguous near-equal shards (the first ``len(items) % nj`` get one item more)."""
    if nj < 1:
        raise PrepError(f"--nj must be >= 1, got {nj}")
    size, extra = divmod(len(items), nj)
    shards, start = [], 0
    for k in range(nj):
        end = start + size + (1 if k < extra else 0)
        shards.append(list(items[start:end]))
        start = end
    return shards


def item_key(config_digest: str, item: WorkItem) -> str:
    """Hash of the options digest and the item's (uid, path, size, mtime)."""
    try:
        st = os.stat(item.path)
        stat = [st.st_size, st.st_mtime_ns]
    except OSError:
        stat = [None, None]
    blob = json.dumps([config_digest, item.uid, item.path, *stat])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def config_digest(config: Mapping) -> str:
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def run_one(processor: Callable[[WorkItem], dict], item: WorkItem) -> dict:
    """Run ``processor`` on one item; every exception but KeyboardInterrupt becomes a bad result."""
    try:
        fields = processor(item)
        clash = sorted(k for k in fields if k in RESERVED_KEYS)
        if clash:
            raise ValueError(f"the processor's result uses reserved keys {clash}")
    except ItemError as e:
        return {"uid": item.uid, "ok": False, "reason": str(e)}
    except Exception as e:  # a bug or a resource problem: report it, retry it on the next run
        return {
            "uid": item.uid,
            "ok": False,
            "reason": f"unexpected {type(e).__name__} while processing {item.path}: {e}",
            "retry": True,
            "traceback": traceback.format_exc(),
        }
    return {"uid": item.uid, "ok": True, **fields}


class _Shard:
    """One shard: its items, its results so far, its log and done marker."""

    def __init__(self, work_dir: str, index: int, nj: int, items: List[WorkItem], keys: Mapping[str, str]):
        self.index, self.items, self.keys = index, items, keys
        stem = os.path.join(work_dir, f"shard.{index}-of-{nj}")
        self.log_path, self.done_path = stem + ".jsonl", stem + ".done"
        self.fingerprint = hashlib.sha256("".join(keys[it.uid] for it in items).encode()).hexdigest()
        self.results: Dict[str, dict] = {}
        self.pending: Dict[str, WorkItem] = {}
        self._file = None

    def adopt(self, previous: Mapping[str, dict]) -> None:
        """Take over the matching earlier results and rewrite the log with exactly them."""
        for it in self.items:
            result = previous.get(it.uid)
            if result is not None and not result.get("retry") and _outputs_exist(result):
                self.results[it.uid] = result
            else:
                self.pending[it.uid] = it
        tmp = self.log_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for result in self.results.values():
                f.write(json.dumps(result, sort_keys=True) + "\n")
        os.replace(tmp, self.log_path)
        if self.pending:
            if os.path.exists(self.done_path):
                os.remove(self.done_path)
        elif not self.done:
            self._write_done()

    @property
    def done(self) -> bool:
        if self.pending or not os.path.exists(self.done_path):
            return False
        with open(self.done_path, encoding="utf-8") as f:
            return f.read().strip() == self.fingerprint

    def open(self) -> None:
        self._file = open(self.log_path, "a", encoding="utf-8")

    def add(self, result: dict) -> None:
        result = dict(result, key=self.keys[result["uid"]])
        self._file.write(json.dumps(result, sort_keys=True) + "\n")
        self._file.flush()
        self.results[result["uid"]] = result
        del self.pending[result["uid"]]
        if not self.pending:
            self.close()
            self._write_done()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_done(self) -> None:
        with open(self.done_path, "w", encoding="utf-8") as f:
            f.write(self.fingerprint + "\n")


def _outputs_exist(result: Mapping) -> bool:
    return all(os.path.exists(p) for p in result.get("outputs", []))


def _read_logs(work_dir: str, keys: Mapping[str, str], skip: Sequence[str]) -> Dict[str, dict]:
    """Every logged result (of any shard layout) whose key matches the current item key."""
    found: Dict[str, dict] = {}
    for name in sorted(os.listdir(work_dir)):
        match = _SHARD_FILE.match(name)
        if not match or match.group(3) != "jsonl" or name in skip:
            continue
        with open(os.path.join(work_dir, name), encoding="utf-8") as f:
            for line in f:
                try:
                    result = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the half-written last line of an interrupted run
                if isinstance(result, dict) and keys.get(result.get("uid")) == result.get("key"):
                    found[result["uid"]] = result
    return found


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


class _Call:
    """Picklable ``item -> run_one(processor, item)`` for the pool."""

    def __init__(self, processor: Callable[[WorkItem], dict]):
        self.processor = processor

    def __call__(self, item: WorkItem) -> dict:
        return run_one(self.processor, item)


def run_sharded(
    items: Sequence[WorkItem],
    processor: Callable[[WorkItem], dict],
    work_dir: str,
    nj: int,
    config: Mapping,
    shard: Optional[int] = None,
    desc: str = "",
) -> ShardRun:
    """Process ``items`` with ``processor`` in ``nj`` resumable shards.

    Args:
        items: the work; ids must be unique.
        processor: picklable ``WorkItem -> dict`` of JSON-serialisable result fields; it raises
            ItemError for a bad item. A field ``outputs`` (list of paths) names the files it
            wrote: when one of them is gone on a later run, the item is done again.
        work_dir: where the shard logs and done markers live (created).
        nj: number of shards, and of worker processes when ``shard`` is None.
        config: every option that changes the results (part of each item's key).
        shard: process only this shard (1-based, like Kaldi's JOB), in this process.
        desc: label of the progress bar.
    """
    dup = sorted(uid for uid, n in collections.Counter(it.uid for it in items).items() if n > 1)
    if dup:
        raise PrepError(f"duplicate utterance ids in the work list: {dup[:5]}")
    if shard is not None and not 1 <= shard <= nj:
        raise PrepError(f"--shard must be in 1..{nj} (--nj), got {shard}")
    os.makedirs(work_dir, exist_ok=True)
    items = sorted(items, key=lambda it: it.uid)
    digest = config_digest(config)
    keys = {it.uid: item_key(digest, it) for it in items}
    shards = [_Shard(work_dir, k + 1, nj, part, keys) for k, part in enumerate(split_items(items, nj))]
    # In --shard mode the other shards of this layout may be running now: leave their files alone.
    mine = [s for s in shards if shard is None or s.index == shard]
    others = [os.path.basename(s.log_path) for s in shards if s not in mine]
    previous = _read_logs(work_dir, keys, skip=others)
    for s in mine:
        s.adopt(previous)
    if shard is None:
        _remove_other_layouts(work_dir, nj)

    run = ShardRun(reused=sum(len(s.results) for s in mine))
    todo = [(s, it) for s in mine for it in s.pending.values()]
    if todo:
        owner = {it.uid: s for s, it in todo}
        for s in mine:
            if s.pending:
                s.open()
        workers = 1 if shard is not None else min(nj, len(todo))
        try:
            # the pool forks before tqdm may start its monitor thread
            with _mapper(processor, workers) as imap, tqdm(total=len(todo), desc=desc, unit="utt",
                                                            disable=None) as bar:
                for result in imap([it for _, it in todo]):
                    owner[result["uid"]].add(result)
                    run.processed += 1
                    _log_result(result)
                    bar.update()
        finally:
            for s in mine:
                s.close()
    # with --shard the other shards' results are not loaded: merging is for a run without it
    run.complete = shard is None and all(s.done for s in shards)
    if run.complete:
        run.results = {it.uid: s.results[it.uid] for s in shards for it in s.items}
    return run


@contextlib.contextmanager
def _mapper(processor: Callable[[WorkItem], dict], workers: int):
    """Yields ``items -> iterator of results`` (in completion order with several workers)."""
    if workers <= 1:
        yield lambda items: (run_one(processor, item) for item in items)
        return
    # spawn, not fork: a child forked after the parent has used OpenCV (or torch) threads can hang.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        yield lambda items: pool.imap_unordered(_Call(processor), items, chunksize=1)


def _log_result(result: dict) -> None:
    if result["ok"]:
        return
    if result.get("retry"):
        logger.warning("%s: %s (it will be retried on the next run)\n%s",
                       result["uid"], result["reason"], result.get("traceback", ""))
    else:
        logger.info("bad item %s: %s", result["uid"], result["reason"])


def _remove_other_layouts(work_dir: str, nj: int) -> None:
    """Drop the shard files of an earlier run with another nj (their results were adopted)."""
    removed = 0
    for name in os.listdir(work_dir):
        match = _SHARD_FILE.match(name)
        if match and int(match.group(2)) != nj:
            os.remove(os.path.join(work_dir, name))
            removed += 1
    if removed:
        logger.info("%s: replaced %d shard files of a run with another --nj", work_dir, removed)
