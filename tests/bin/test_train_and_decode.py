"""The real CLIs end to end on tiny files: collect stats, train a few steps, resume, decode."""
import os
import subprocess
import sys

import numpy as np
import soundfile
import yaml

from espnet_omni_avsr.data.video_io import write_video
from tests.models.conftest import tiny_config

TEXTS = ["bin blue at f two now", "lay green by a nine again", "place red in z seven please",
         "set white with q one soon", "bin green by a two now", "lay blue at f nine soon"]


def _write_corpus(root, n_utt):
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    scp = {"wav.scp": [], "video.scp": [], "text": []}
    for i in range(n_utt):
        utt = f"spk{i % 2}-utt{i:02d}"
        secs = 0.6 + 0.2 * (i % 3)
        wav = os.path.join(root, f"{utt}.wav")
        soundfile.write(wav, (rng.standard_normal(int(secs * 16000)) * 0.1).astype(np.float32), 16000)
        mp4 = os.path.join(root, f"{utt}.mp4")
        write_video(mp4, rng.integers(0, 256, (int(secs * 25), 96, 96), dtype=np.uint8), fps=25)
        scp["wav.scp"].append(f"{utt} {wav}")
        scp["video.scp"].append(f"{utt} {mp4}")
        scp["text"].append(f"{utt} {TEXTS[i % len(TEXTS)].upper()}")
    for name, lines in scp.items():
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(sorted(lines)) + "\n")


def _run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _data_args(prefix, d):
    return [f"--{prefix}_data_path_and_name_and_type", f"{d}/wav.scp,speech,sound",
            f"--{prefix}_data_path_and_name_and_type", f"{d}/video.scp,video,video",
            f"--{prefix}_data_path_and_name_and_type", f"{d}/text,text,text"]


def test_collect_stats_train_resume_decode(tmp_path, tiny_llm_dir, tiny_whisper_dir):
    train, valid = str(tmp_path / "train"), str(tmp_path / "valid")
    _write_corpus(train, 6)
    _write_corpus(valid, 2)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config.update(optim="adamw", optim_conf=dict(lr=1e-3), max_epoch=1, batch_size=2, batch_type="sorted",
                  num_att_plot=0, num_workers=0, best_model_criterion=[["valid", "acc", "max"]],
                  keep_nbest_models=1, seed=0)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config))
    common = ["espnet_omni_avsr.bin.avsr_train", "--config", str(cfg), "--ngpu", "0", "--use_tensorboard", "false"]

    # collect stats: writes the shape files the batch sampler needs
    stats = tmp_path / "stats"
    _run(common + _data_args("train", train) + _data_args("valid", valid) + [
        "--collect_stats", "true", "--output_dir", str(stats), "--batch_type", "unsorted",
        "--train_shape_file", f"{train}/wav.scp", "--valid_shape_file", f"{valid}/wav.scp"], cwd=tmp_path)
    assert (stats / "train" / "video_shape").is_file()
    shape = (stats / "train" / "video_shape").read_text().split("\n")[0].split()[1]
    assert shape.endswith(",96,96")

    exp = tmp_path / "exp"
    shapes = ["--train_shape_file", str(stats / "train/speech_shape"),
              "--valid_shape_file", str(stats / "valid/speech_shape")]
    _run(common + _data_args("train", train) + _data_args("valid", valid) + shapes + ["--output_dir", str(exp)],
         cwd=tmp_path)
    assert (exp / "1epoch.pth").is_file() and (exp / "config.yaml").is_file()
    epoch1 = (exp / "1epoch.pth").read_bytes()
    # a second epoch resumes from the checkpoint: it trains epoch 2 only, leaves epoch 1's model as
    # it was, and ends where one uninterrupted 2-epoch run ends (model, optimizer and the per-epoch
    # seeds restored)
    resumed = _run(common + _data_args("train", train) + _data_args("valid", valid) + shapes + [
        "--output_dir", str(exp), "--max_epoch", "2", "--resume", "true"], cwd=tmp_path)
    assert "2/2epoch started" in resumed.stderr and "1/2epoch started" not in resumed.stderr
    assert (exp / "1epoch.pth").read_bytes() == epoch1
    full = tmp_path / "exp_full"
    _run(common + _data_args("train", train) + _data_args("valid", valid) + shapes + [
        "--output_dir", str(full), "--max_epoch", "2"], cwd=tmp_path)
    import torch

    state = torch.load(exp / "2epoch.pth", weights_only=True)
    after_one = torch.load(exp / "1epoch.pth", weights_only=True)
    uninterrupted = torch.load(full / "2epoch.pth", weights_only=True)
    assert sorted(state) == sorted(uninterrupted)
    for k, v in state.items():
        assert torch.allclose(v.float(), uninterrupted[k].float(), rtol=0, atol=1e-6), k
    assert any(not torch.equal(v, after_one[k]) for k, v in state.items())  # epoch 2 trained
    # checkpoints hold what was trained, not the frozen LLM / Whisper weights
    assert not any(k.startswith("decoder.llm") and "lora_" not in k for k in state)

    # decode with the CLI and with the library class
    out = tmp_path / "decode"
    _run(["espnet_omni_avsr.bin.avsr_inference", "--train_config", str(exp / "config.yaml"),
          "--model_file", str(exp / "2epoch.pth"), "--output_dir", str(out), "--batch_size", "2",
          "--max_new_tokens", "4", "--data_path_and_name_and_type", f"{valid}/wav.scp,speech,sound",
          "--data_path_and_name_and_type", f"{valid}/video.scp,video,video"], cwd=tmp_path)
    lines = (out / "text").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["spk0-utt00", "spk1-utt01"]
    tokens = dict(line.split() for line in (out / "llm_tokens").read_text().splitlines())
    assert int(tokens["spk0-utt00"]) == 8 + 8  # 0.6 s: ceil(30/4) audio + ceil(15/2) stacked video

    from espnet_omni_avsr.recognizer import AVSRRecognizer

    os.chdir(tmp_path)
    rec = AVSRRecognizer(exp / "config.yaml", exp / "2epoch.pth", max_new_tokens=4)
    speech, _ = soundfile.read(f"{valid}/spk0-utt00.wav", dtype="float32")
    from espnet_omni_avsr.data.video_io import read_video

    hyp = rec(speech=speech, video=read_video(f"{valid}/spk0-utt00.mp4"))
    assert hyp == lines[0].split(" ", 1)[1].strip() if " " in lines[0] else hyp == ""
