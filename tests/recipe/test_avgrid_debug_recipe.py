"""All twelve stages of egs2/avgrid/avsr1/run.sh at debug size (tiny random models, a few dozen
utterances, one epoch), in a temporary copy of the recipe directory."""
import os
import re
import subprocess
import sys

import soundfile

from espnet_omni_avsr.data.video_io import read_video
from espnet_omni_avsr.recognizer import AVSRRecognizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "egs2", "avgrid", "avsr1")


def _recipe_copy(tmp_path):
    """Link the recipe's scripts and configs into tmp_path, so that every output lands there."""
    for name in ("run.sh", "avsr.sh", "path.sh", "conf", "local"):
        os.symlink(os.path.realpath(os.path.join(RECIPE, name)), tmp_path / name)
    return tmp_path


def test_clean_test_sets_only(tmp_path):
    """`--snrs ""`: stage 5 makes the babble (the training noise) and no noisy test set, and stage
    10's job list holds the clean sets only (so stages 10 and 11 expect no noisy copies)."""
    import yaml

    from tests.prep.test_noise import _write_set

    work = _recipe_copy(tmp_path)
    _write_set(work / "dump" / "train", n_spk=3, n_utt_per_spk=2, seed=1)
    _write_set(work / "dump" / "test", n_spk=2, n_utt_per_spk=2, seed=2)
    config = work / "train.yaml"
    config.write_text(yaml.safe_dump({"model_conf": {"tasks": ["avsr", "asr"]}, "audio_frontend": "whisper_logmel",
                                      "audio_compressor_conf": {"rate": 4}, "video_frontend": "pixel",
                                      "video_compressor_conf": {"rate": 2}}))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run(["./avsr.sh", "--stage", "5", "--stop_stage", "5", "--train_config", str(config),
                           "--snrs", ""], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (work / "dump" / "noise" / "babble.wav").is_file()
    assert (work / "dump" / "noise" / "babble_speakers.txt").is_file()
    assert not (work / "dump" / "noise" / "babble_test.wav").exists()  # made only for noisy sets
    assert sorted(p.name for p in (work / "dump").iterdir()) == ["noise", "test", "train"]
    jobs = subprocess.run([sys.executable, "-m", "espnet_omni_avsr.names", "decode-jobs", "--config", str(config),
                           "--test_sets", "test", "--snrs=", "--dump_dir", "dump", "--exp_dir", "exp/m",
                           "--inference_tag", "greedy"], env=env, capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in jobs.stdout.splitlines()]
    assert [(r[0], r[1], r[2].rsplit("/", 1)[-1]) for r in rows] == [
        ("avsr", "dump/test", "snr_clean"), ("asr", "dump/test", "snr_clean")]
    # the same stage with SNRs makes their copies
    proc = subprocess.run(["./avsr.sh", "--stage", "5", "--stop_stage", "5", "--train_config", str(config),
                           "--snrs", "0"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (work / "dump" / "test_snr0" / ".done").is_file()
    # mixed with the test babble, whose speakers (none of the training babble's) lie beside snr.tsv
    noise = work / "dump" / "noise"
    assert {line.split("\t")[1] for line in (work / "dump" / "test_snr0" / "snr.tsv").read_text().splitlines()[1:]} \
        == {"dump/noise/babble_test.wav"}
    test_speakers = (work / "dump" / "test_snr0" / "noise_speakers.txt").read_text().split()
    assert test_speakers == (noise / "babble_test_speakers.txt").read_text().split()
    assert test_speakers and not set(test_speakers) & set((noise / "babble_speakers.txt").read_text().split())


def test_debug_recipe_all_stages(tmp_path):
    work = _recipe_copy(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = ["./run.sh", "--train_config", "conf/debug/multitask_tiny.yaml",
           "--pretrained_models", "tiny-random-llama tiny-random-whisper",
           "--local_data_opts", "--num_utts 40 --num_speakers 8 --corrupt true", "--snrs", "0 -5", "--nj", "2",
           "--video_prep_conf", "{roi_format: npy}"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]

    # the corpus' deliberately bad items are reported with a reason, and the rest went on
    corrupt = [line.split("\t")[0] for line in (work / "downloads/avgrid/corrupt.tsv").read_text().splitlines()]
    assert len(corrupt) >= 4
    reports = "".join(p.read_text() for p in list(work.glob("data/*/bad_items.tsv"))
                      + list(work.glob("dump/*/filter_report.txt")))
    for path in corrupt:
        _, spk, utt = path.split("/")
        assert f"{spk}-{utt}" in reports or path in reports, (path, reports)

    # stage 8: the warm-up ran without the LLM (lip CTC, token CTC on both projectors), and the main
    # run started from its audio and video branches, without the token CTC heads
    exp = work / "exp" / "multitask_tiny"
    warm_log = (exp / "warmup" / "train.log").read_text()
    assert "ctc_video" in warm_log and "loss_asr" not in warm_log
    assert "token_ctc_audio" in warm_log and "token_ctc_video" in warm_log
    assert (exp / "warmup" / "valid.loss.best.pth").exists()
    config = (exp / "config.yaml").read_text()
    for branch in ("audio", "video"):
        assert re.search(rf"warmup/valid\.loss\.best\.pth:{branch}:{branch}", config), branch
    assert "token_ctc" not in (exp / "train.log").read_text().split("epoch started")[-1]
    assert "noise: dump/noise/babble.wav" in config
    # stage 2 stored the mouth ROIs as decoded frames (--video_prep_conf), and training read those
    videos = [line.split(maxsplit=1)[1] for line in (work / "dump/train/video.scp").read_text().splitlines()]
    assert videos and all("dump/train/video/" in v and v.endswith(".npy") for v in videos), videos[:3]

    results = (work / "RESULTS.md").read_text()
    for task in ("asr", "vsr", "avsr"):
        assert re.search(rf"\|\s*{task}(_[av0-9]+)?\s*\|[^\n]*?\d+\.\d+", results), (task, results)
    packed = list((work / "exp").glob("*/packed/*.tar"))
    assert packed, "stage 12 wrote no archive"

    # every stage can be run again and finds its work done: the media it made (corpus, audio, noise,
    # noisy sets), its shard markers and the pretrained folders are not made again, and the lists
    # it rewrites come out the same (the shards' result logs under .work/ are rewritten in item
    # order, not in the order the items finished: their lines may move)
    def snapshot():
        return {str(p.relative_to(work)): (p.stat().st_mtime_ns, p.read_bytes())
                for d in ("downloads", "data", "dump", "pretrained") for p in (work / d).rglob("*") if p.is_file()}

    def made_once(path):
        return path.startswith(("downloads/", "pretrained/")) or path.endswith((".wav", ".mp4", ".npy", ".done"))

    before = snapshot()
    assert any(k.startswith("dump/test_snr") and k.endswith(".wav") for k in before)
    assert any(k.endswith(".done") for k in before) and any(k.startswith("pretrained/") for k in before)
    again = subprocess.run(cmd + ["--stage", "1", "--stop_stage", "6"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-4000:]
    after = snapshot()
    assert sorted(after) == sorted(before)
    assert [k for k in before if "/.work/" not in k and after[k][1] != before[k][1]] == []  # the same contents
    assert all(sorted(after[k][1].splitlines()) == sorted(before[k][1].splitlines()) for k in before)
    assert [k for k in before if made_once(k) and after[k][0] != before[k][0]] == []  # not redone

    # the packed archive loads through the inference class, holds the weights stage 9 selected, and
    # decodes utterances as stage 10 did (conf/decode/greedy.yaml: greedy, 32 new tokens): the same
    # hypotheses and LLM input token counts (the tiny random LLM's hypotheses hardly depend on the
    # input; the token counts do, on each utterance's length)
    import torch
    import yaml

    from espnet_omni_avsr.names import decode_dir
    from espnet_omni_avsr.utils.rates import conditions

    avsr = next(c for c in conditions(yaml.safe_load(config)) if c["task"] == "avsr")
    out = work / decode_dir(str(exp), "greedy", "test", avsr["label"])
    stage10 = {name: dict((line.split(" ", 1) + [""])[:2] for line in (out / name).read_text().splitlines())
               for name in ("text", "llm_tokens")}
    selected = torch.load(exp / "model.pth", weights_only=True)
    os.chdir(tmp_path / "..")  # nothing may depend on the recipe directory any more
    rec = AVSRRecognizer.from_pretrained(packed[0], cache_dir=tmp_path / "unpacked", max_new_tokens=32)
    state = rec.model.state_dict()
    assert selected and all(torch.equal(state[k], v) for k, v in selected.items())
    wavs = dict(line.split() for line in (work / "dump" / "test" / "wav.scp").read_text().splitlines())
    videos = dict(line.split() for line in (work / "dump" / "test" / "video.scp").read_text().splitlines())
    counts = set()
    for utt in sorted(wavs)[:4]:
        speech, _ = soundfile.read(work / wavs[utt] if not os.path.isabs(wavs[utt]) else wavs[utt], dtype="float32")
        video = read_video(str(work / videos[utt]) if not os.path.isabs(videos[utt]) else videos[utt])
        _, batch = rec.collate([(utt, rec.preprocess(utt, {"speech": speech, "video": video}))])
        got = rec.recognize_batch(batch)
        assert got["text"] == [stage10["text"][utt].strip()], utt
        assert got["llm_tokens"] == [int(stage10["llm_tokens"][utt])], utt
        counts.add(got["llm_tokens"][0])
    assert len(counts) > 1  # utterances of different lengths were compared

    # MMS-LLaMA through the same recipe (stages 7 and 8): the speech-rate predictor is trained first
    # and read by both runs; the warm-up trains the fused stream's Q-Former through token CTC on its
    # queries, without the LLM, and the main run starts from its fused branch
    mms = ["./run.sh", "--stage", "7", "--stop_stage", "8", "--train_config", "conf/debug/mms_tiny.yaml",
           "--pretrained_models", "tiny-random-llama tiny-random-whisper", "--speech_rate", "train",
           "--warmup_config", "conf/mms_llama/mms_small_warmup.yaml", "--warmup_args", "--max_epoch 1",
           "--warmup_init", "fused video.frontend video.encoder"]
    proc = subprocess.run(mms, cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]
    exp = work / "exp" / "mms_tiny"
    assert (exp / "speech_rate" / "rate.pth").exists() and (exp / "speech_rate" / "rate.json").exists()
    warm_config = yaml.safe_load((exp / "warmup" / "config.yaml").read_text())
    main_config = yaml.safe_load((exp / "config.yaml").read_text())
    assert warm_config["speech_rate_predictor"] == main_config["speech_rate_predictor"] \
        == "exp/mms_tiny/speech_rate/rate.pth"
    warm_log = (exp / "warmup" / "train.log").read_text()
    llm_accuracy = re.compile(r"[ ,]acc=")  # the one task's LLM statistic (no task suffix)
    assert "token_ctc_audiovisual" in warm_log and not llm_accuracy.search(warm_log)
    assert any(re.fullmatch(r".*warmup/valid\.loss\.best\.pth:fused:fused", p) for p in main_config["init_param"])
    assert llm_accuracy.search((exp / "train.log").read_text())
    # each model's stages log in its own directory: the two models' stage 8 logs are both there
    assert "mms_tiny" in (exp / "logs" / "stage8.log").read_text()
    assert "multitask_tiny" in (work / "exp" / "multitask_tiny" / "logs" / "stage8.log").read_text()
    assert (work / "exp" / "logs" / "stage1.log").is_file() and not (work / "exp" / "logs" / "stage8.log").exists()
