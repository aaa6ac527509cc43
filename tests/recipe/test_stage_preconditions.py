"""A stage started without what an earlier stage makes says which stage to run, instead of failing
deep inside ESPnet (stage 8 for a new model tag without its stage-7 shape files)."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_stage_8_without_stats_names_stage_7(tmp_path):
    for name in ("run.sh", "avsr.sh", "path.sh", "conf", "local"):
        os.symlink(os.path.realpath(os.path.join(ROOT, "egs2", "avgrid", "avsr1", name)), tmp_path / name)
    proc = subprocess.run(["./run.sh", "--stage", "8", "--stop_stage", "8", "--model_tag", "new_tag"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "exp/new_tag/stats/train/speech_shape is missing: run stage 7" in out, out
    assert "Traceback" not in out, out
