"""Kill the debug-size embedded recipe and run the same command again.

One run of egs2/avgrid/avsr1/run.sh (debug size, in a temporary copy of the recipe directory) is
killed with SIGKILL, its whole process group (workers, tee, sclite...), three times, and after each
kill the same command is run again:

(a) in stage 2 (sharded video preprocessing), once some utterance's result is logged;
(b) in stage 8, in the main training run's second epoch (the warm-up and epoch 1 are finished);
(c) in stage 10, once some decoding jobs are finished and others are not.

The kill points are found by polling the files and logs the recipe writes. Each rerun must keep
what was finished (shard results and done markers, the warm-up, epoch 1, the statistics, the
finished decodings: their files are not written again), train on from the last checkpoint to the
same number of epochs, never take a partial file for a complete one, and end with a RESULTS.md that
has a row for every decoding the recipe makes.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from espnet_omni_avsr.names import DECODE_PREFIX
from espnet_omni_avsr.utils.safe_checkpoint import TRAINER_SAFE_GLOBALS, load_weights
from tests.recipe.test_avgrid_debug_recipe import ROOT, _recipe_copy

MAX_EPOCH = 3
CMD = ["./run.sh", "--train_config", "conf/debug/multitask_tiny.yaml",
       "--pretrained_models", "tiny-random-llama tiny-random-whisper",
       "--local_data_opts", "--num_utts 40 --num_speakers 8", "--snrs", "0", "--nj", "2",
       # the warm-up and the main run train MAX_EPOCH epochs each and average their 2 best (as the
       # real configs do), so that a rerun of a finished training could rewrite the averaged model
       "--train_args", f"--max_epoch {MAX_EPOCH} --keep_nbest_models 2",
       # one utterance per batch: the decoding jobs last long enough to be caught half done
       "--inference_args", "--batch_size 1"]
TAG = "multitask_tiny"
POLL_S = 0.005
LIMIT_S = 900


class Missed(AssertionError):
    """The recipe went past the kill point before it was seen."""


def _group_alive(pgid: int) -> list:
    """Pids of the process group's members that are not zombies."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended while listing
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(stat.parent.name))
    return alive


def _run(work: Path, n: int, ready=None, missed=None, what: str = ""):
    """Run CMD in its own process group (output in attempt<n>.log). With ``ready``, poll it and
    SIGKILL the whole group as soon as it is true, failing if ``missed`` comes first or the run ends
    before; without, the run must succeed. Returns (seconds, log text)."""
    log = work / f"attempt{n}.log"
    start = time.monotonic()
    with open(log, "w") as out:
        # this checkout's package, also where the venv has another one installed
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        proc = subprocess.Popen(CMD, cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while ready is not None:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                deadline = time.monotonic() + 30
                while _group_alive(proc.pid):
                    assert time.monotonic() < deadline, f"still alive after SIGKILL: {_group_alive(proc.pid)}"
                    time.sleep(0.05)
                break
            if missed():
                raise Missed(f"attempt {n} went past {what} before it was seen:\n{log.read_text()[-4000:]}")
            rc = proc.poll()
            assert rc is None, f"attempt {n} ended (exit {rc}) before {what}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() - start < LIMIT_S, f"attempt {n}: no {what} in {LIMIT_S} s"
            time.sleep(POLL_S)
        else:
            rc = proc.wait(timeout=LIMIT_S)
            assert rc == 0, f"attempt {n} failed (exit {rc}):\n{log.read_text()[-6000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.monotonic() - start, log.read_text()


def _mtimes(paths) -> dict:
    return {str(p): Path(p).stat().st_mtime_ns for p in paths}


def _logged(jsonl: Path) -> set:
    """Ids of the complete results of a shard log (what the sharded runner reuses)."""
    uids = set()
    for line in jsonl.read_bytes().split(b"\n"):
        try:
            uids.add(json.loads(line)["uid"])
        except ValueError:
            continue  # empty, or the line a kill cut off
    return uids


def _reporter(checkpoint: Path) -> dict:
    return load_weights(checkpoint, what="resume checkpoint", safe_globals=TRAINER_SAFE_GLOBALS)["reporter"]


def test_kill_and_resume(tmp_path):
    work = _recipe_copy(tmp_path)
    exp = work / "exp" / TAG
    logs = work / "exp" / "logs"  # the data stages' logs (1-6); the model's (7-12) are in exp / "logs"
    times = {}

    # (a) stage 2: killed once two results are logged, before stage 3 starts
    def video_logs():
        return sorted(work.glob("dump/*/.work/video/shard.*.jsonl"))

    times["a"], _ = _run(work, 1, ready=lambda: sum(len(_logged(p)) for p in video_logs()) >= 2,
                         missed=lambda: (logs / "stage3.log").exists(), what="two results of stage 2")
    assert not (logs / "stage3.log").exists()
    # A kill can cut a result's line short: cut the last line of one shard log in half, as one
    # would be. That item must be done again; every complete line is reused.
    cut = max(video_logs(), key=lambda p: len(_logged(p)))
    lines = cut.read_bytes().rstrip(b"\n").split(b"\n")
    cut.write_bytes(b"\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]))
    reused = {}
    for d in work.glob("dump/*/.work/video"):
        reused[d.parent.parent.name] = len(set().union(*(_logged(p) for p in d.glob("shard.*.jsonl"))))
    assert sum(reused.values()) >= 1
    markers_a = _mtimes(p for p in work.glob("dump/*/.work/video/shard.*.done") if p != cut.with_suffix(".done"))
    corpus = _mtimes(p for p in (work / "downloads").rglob("*") if p.is_file())
    assert corpus
    print(f"kill (a): results kept per set {reused} (after cutting {cut}), {len(markers_a)} done shards")

    # (b) stage 8: killed in the main run's epoch 2, after epoch 1's checkpoint
    main_log = exp / "train.log"
    times["b"], _ = _run(
        work, 2, ready=lambda: (exp / "1epoch.pth").exists() and main_log.exists()
        and f"2/{MAX_EPOCH}epoch started" in main_log.read_text(errors="replace"),
        missed=lambda: (exp / "2epoch.pth").exists() or (exp / "logs" / "stage9.log").exists(),
        what="epoch 2 of the main training run")
    assert not (exp / "2epoch.pth").exists()
    # the rerun reused every complete result of stage 2 and did the cut item again
    stage2 = (logs / "stage2.log").read_text()
    for name, n in reused.items():
        m = re.search(rf"dump/{name}: \d+ of (\d+) videos kept, \d+ bad items \((\d+) processed, (\d+) reused", stage2)
        assert m, (name, stage2)
        total, processed, got = map(int, m.groups())
        assert got == n and processed == total - n, (name, n, m.group(0))
    assert _mtimes(markers_a) == markers_a  # finished shards were not redone
    assert _mtimes(corpus) == corpus
    epoch1 = _reporter(exp / "checkpoint.pth")
    assert epoch1["epoch"] == 1
    epoch1_model = _mtimes([exp / "1epoch.pth"])
    warm = [p for p in (exp / "warmup").iterdir() if p.suffix in (".pth", ".done")]
    assert (exp / "warmup" / "avsr_train.done").exists() and any(p.name.endswith("epoch.pth") for p in warm)
    finished_b = _mtimes(warm + [p for p in (exp / "stats").rglob("*") if p.is_file()])

    # (c) stage 10: killed when some decoding jobs are finished and others are not
    jobs_tsv = exp / f"{DECODE_PREFIX}greedy" / "jobs.tsv"

    def decoded():
        return sorted(exp.glob(f"{DECODE_PREFIX}greedy/*/*/*/text"))

    def some_decoded():
        if not jobs_tsv.exists():
            return False
        n = len(decoded())
        return 0 < n < len(jobs_tsv.read_text().splitlines())

    times["c"], _ = _run(work, 3, ready=some_decoded, missed=lambda: (exp / "logs" / "stage11.log").exists(),
                         what="a finished decoding job with others pending")
    # training went on from epoch 1's checkpoint to MAX_EPOCH epochs; epoch 1 was not trained again
    final = _reporter(exp / "checkpoint.pth")
    assert final["epoch"] == MAX_EPOCH
    assert final["stats"][1] == epoch1["stats"][1]
    log = main_log.read_text()
    assert log.count(f"1/{MAX_EPOCH}epoch started") == 1, log[-3000:]
    assert log.count("resumed the training from") == 1
    assert log.count(f"{MAX_EPOCH}/{MAX_EPOCH}epoch started") == 1
    assert log.count(f"The training was finished at {MAX_EPOCH} epochs") == 1
    if (exp / "1epoch.pth").exists():  # kept when it is one of the 2 best
        assert _mtimes(epoch1_model) == epoch1_model
    # the warm-up and the statistics, finished before kill (b), were not made again
    assert _mtimes(finished_b) == finished_b
    assert "not run again" in (exp / "warmup" / "train.log").read_text()
    # no decoding has a partial text: a job is complete (all lines) or has none
    n_test = len((work / "dump" / "test" / "text").read_text().splitlines())
    done_c = decoded()
    for text in done_c:
        assert len(text.read_text().splitlines()) == n_test, text
        assert (text.parent / "llm_tokens").is_file(), text
    print(f"kill (c): {len(done_c)} of {len(jobs_tsv.read_text().splitlines())} decoding jobs finished")
    done_c = _mtimes(done_c + [p.parent / "llm_tokens" for p in done_c])
    model = _mtimes([(exp / "model.pth").resolve()])

    # to the end
    times["end"], _ = _run(work, 4)
    assert _mtimes(done_c) == done_c  # finished decodings were not redone
    assert _mtimes(model) == model  # nor the model (its averaging) made again
    assert _mtimes(finished_b) == finished_b
    stage10 = (exp / "logs" / "stage10.log").read_text()
    assert len(re.findall(r"skip \S+: complete", stage10)) == len(done_c) // 2, stage10
    assert main_log.read_text().count("not run again") == 1
    assert not list(exp.glob(f"{DECODE_PREFIX}greedy/*/*/*/*.tmp*"))

    # RESULTS.md: a WER for every decoding job, scored on every test utterance
    jobs = [line.split("\t") for line in jobs_tsv.read_text().splitlines()]
    expected = {(Path(j[2]).parent.name, Path(j[2]).name[len("snr_"):]) for j in jobs}
    results = (work / "RESULTS.md").read_text()
    rows = re.findall(rf"^\| {TAG} \| greedy \| (\S+) \| (clean|-?\d+ dB) \| (\d+) \|.* \| (\d+) \| \S+ \|$",
                      results, re.M)
    got = {(task, snr.replace(" dB", "")) for task, snr, _, _ in rows}
    assert got == expected and len(rows) == len(expected), results
    assert all(int(snt) == n_test and int(missing) == 0 for _, _, snt, missing in rows), rows
    header = re.search(r"^\| model \| decode \| task \| (.*) \|$", results, re.M).group(1).split(" | ")
    for task, snr, *_ in rows:
        row = re.search(rf"^\| {TAG} \| greedy \| {task} \| (.*) \|$", results, re.M).group(1).split(" | ")
        cell = dict(zip(header, row))[snr]
        assert re.fullmatch(r"\d+\.\d+ \(\d+\.\d\)", cell), (task, snr, cell)
    print("attempt seconds:", {k: round(v, 1) for k, v in times.items()})


# ---- the fixes the kills need, without a recipe run -----------------------------------------------


def test_a_finished_avsr_train_is_not_run_again(tmp_path, monkeypatch):
    """avsr_train's done marker: the same options and inputs on the same outputs skip the run;
    another option, another input content, another checkpoint or no --resume run it."""
    from espnet_omni_avsr.bin import avsr_train
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    calls = []

    def fake_main(cmd):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--output_dir") + 1])
        out.mkdir(exist_ok=True)
        if "--collect_stats" in cmd:
            (out / "train").mkdir(exist_ok=True)
            (out / "train" / "speech_shape").write_text("u1 16000\n")
        else:
            (out / "checkpoint.pth").write_bytes(b"epoch %d" % len(calls))

    monkeypatch.setattr(AVSRLLMTask, "main", staticmethod(fake_main))
    cfg, data = tmp_path / "train.yaml", tmp_path / "text"
    cfg.write_text("max_epoch: 1\n")
    data.write_text("u1 a\n")
    args = ["--config", str(cfg), "--output_dir", str(tmp_path / "exp"), "--resume", "true",
            "--train_data_path_and_name_and_type", f"{data},text,text"]

    def runs(argv):
        before = len(calls)
        avsr_train.main(argv)
        return len(calls) - before

    assert runs(args) == 1 and runs(args) == 0
    data.write_text("u1 a\n")  # rewritten with the same content (an earlier stage run again)
    assert runs(args) == 0
    assert runs(args + ["--max_epoch", "2"]) == 1 and runs(args + ["--max_epoch=2"]) == 0
    assert runs(args) == 1 and runs(args) == 0
    data.write_text("u1 b\n")
    assert runs(args) == 1 and runs(args) == 0
    cfg.write_text("max_epoch: 1\nbatch_size: 2\n")
    assert runs(args) == 1 and runs(args) == 0
    (tmp_path / "exp" / "checkpoint.pth").write_bytes(b"another checkpoint")
    assert runs(args) == 1 and runs(args) == 0
    assert runs(args[:4] + ["--resume", "false"] + args[6:]) == 1  # a fresh training always runs

    stats = ["--config", str(cfg), "--collect_stats", "true", "--output_dir", str(tmp_path / "stats")]
    assert runs(stats) == 1 and runs(stats) == 0
    (tmp_path / "stats" / "train" / "speech_shape").unlink()
    assert runs(stats) == 1 and runs(stats) == 0

    (tmp_path / "stats" / avsr_train.DONE_MARKER).write_text("{cut short")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "stats" / avsr_train.DONE_MARKER))):
        avsr_train.main(stats)


def test_an_interrupted_decoding_leaves_no_text(tmp_path, monkeypatch):
    """avsr_inference writes text and llm_tokens under temporary names: a job that stops half way
    leaves neither (nor its temporary files), so it is never taken for a finished one."""
    import argparse

    from espnet_omni_avsr.bin import avsr_inference

    batches = [(["u1", "u2"], "batch 1"), (["u3"], "batch 2")]
    monkeypatch.setattr(avsr_inference.AVSRLLMTask, "build_streaming_iterator", lambda *a, **k: iter(batches))

    class Rec:
        model = argparse.Namespace(task="asr")
        preprocess = collate = None

        def __init__(self, fail_on=None):
            self.fail_on = fail_on

        def recognize_batch(self, batch):
            if batch == self.fail_on:
                raise RuntimeError("stopped")
            n = 2 if batch == "batch 1" else 1
            return {"text": ["a b"] * n, "llm_tokens": [7] * n}

    args = argparse.Namespace(key_file=None, batch_size=2, num_workers=0)
    out = tmp_path / "decode"
    out.mkdir()
    (out / "text.tmp999").write_text("u1 a\n")  # left by a job that was killed
    with pytest.raises(RuntimeError, match="stopped"):
        avsr_inference.decode(Rec(fail_on="batch 2"), "asr", [], out, {}, args)
    assert sorted(p.name for p in out.iterdir()) == []
    avsr_inference.decode(Rec(), "asr", [], out, {}, args)
    assert sorted(p.name for p in out.iterdir()) == ["llm_tokens", "text"]
    assert (out / "text").read_text() == "u1 a b\nu2 a b\nu3 a b\n"


def test_a_corpus_killed_while_finishing_resumes(tmp_path):
    """Stage 1's generator finishes its staging folder by swapping .settings for .done and renaming
    it: killed between the two, the staging folder holds only .done and the next run completes it."""
    from espnet_omni_avsr.prep.avgrid import generate as G

    root = G.generate(str(tmp_path / "corpus"), num_utts=2, num_speakers=1, nj=1, progress=False)
    files = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    staging = root.with_name(root.name + ".partial")
    root.rename(staging)  # .done written, .settings gone, not renamed yet
    assert G.generate(str(root), num_utts=2, num_speakers=1, nj=1, progress=False) == root
    assert not staging.exists()
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == files
