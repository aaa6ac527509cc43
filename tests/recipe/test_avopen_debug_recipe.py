"""egs2/avopen/avsr1 (the embedded corpus on open English) through all twelve stages at debug size:
tiny random models, a few dozen utterances, in a temporary copy of the recipe directory."""
import os
import re
import subprocess

from espnet_omni_avsr.prep.avgrid.open_text import load_open_sentences

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "egs2", "avopen", "avsr1")


def _texts(path):
    return dict((line.split(" ", 1) + [""])[:2] for line in path.read_text().splitlines())


def test_avopen_debug_recipe_all_stages(tmp_path):
    for name in ("run.sh", "avsr.sh", "path.sh", "conf", "local"):
        os.symlink(os.path.realpath(os.path.join(RECIPE, name)), tmp_path / name)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ["./run.sh", "--train_config", "conf/debug/multitask_tiny.yaml",
           "--pretrained_models", "tiny-random-llama tiny-random-whisper",
           "--local_data_opts", "--text open --num_utts 30 --num_speakers 6", "--snrs", "-5", "--nj", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]

    # the corpus is open English, and no dev or test sentence is spoken in training
    assert '"text": "open"' in (tmp_path / "downloads/avgrid/.done").read_text()
    texts = {s: _texts(tmp_path / "data" / s / "text") for s in ("train", "dev", "test")}
    assert all(texts.values())
    seen = {t.strip() for t in texts["train"].values()}
    assert not seen & {t.strip() for s in ("dev", "test") for t in texts[s].values()}
    pools = {k: {" ".join(w) for w in v} for k, v in load_open_sentences().pools.items()}
    assert all(t.strip().lower() in pools["test"] for t in texts["test"].values())
    vocabulary = {w for t in texts["train"].values() for w in t.lower().split()}
    assert len(vocabulary) > 51  # more than the GRID grammar's words in a dozen sentences

    results = (tmp_path / "RESULTS.md").read_text()
    for task in ("asr", "vsr", "avsr"):
        assert re.search(rf"\|\s*{task}(_[av0-9]+)?\s*\|[^\n]*?\d+\.\d+", results), (task, results)
    assert list((tmp_path / "exp").glob("*/packed/*.tar")), "stage 12 wrote no archive"
