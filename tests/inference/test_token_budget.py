"""Elastic rates from a budget (inference/rate_choice.py, bin/transcribe --token_budget / --rates auto),
the SNR estimator (inference/snr.py), and the validation losses and WERs pack_model records for them."""
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from espnet_omni_avsr.bin import pack_model as pack_cli
from espnet_omni_avsr.bin import transcribe
from espnet_omni_avsr.inference.rate_choice import (Candidate, NoConditionFits, choose_by_budget, choose_by_snr,
                                                    snr_wers, validation_losses)
from espnet_omni_avsr.inference.snr import estimate_snr
from espnet_omni_avsr.prep.noise import mix_at_snr
from tests.inference.media_helpers import write_media

SR = 16000


def _avsr(audio: int, video: int) -> Candidate:
    return Candidate("avsr", (("audio", str(audio)), ("video", str(video))), 50 / audio + 25 / video)


# the four conditions of a model trained at audio 4, 16 and video 2, 5 (tokens/s 25, 17.5, 15.6, 8.1)
AVSR = [_avsr(4, 2), _avsr(4, 5), _avsr(16, 2), _avsr(16, 5)]
META = {"validation": {"epoch": 3, "epoch_of": "packed weights",
                       "loss": {"avsr_a4v2": 1.0, "avsr_a4v5": 1.2, "avsr_a16v2": 1.1, "avsr_a16v5": 1.5}}}


def test_the_budget_picks_the_best_validated_condition_that_fits():
    losses = validation_losses(META)
    choice = choose_by_budget(AVSR, 20, losses)  # a4v5, a16v2 and a16v5 fit: a16v2 has the lowest loss
    assert choice.candidate.label == "avsr_a16v2" and choice.rule == "validation" and not choice.warnings
    assert "lowest validation loss within 20 tokens/s" in choice.reason and "3 conditions fit" in choice.reason
    assert choose_by_budget(AVSR, 100, losses).candidate.label == "avsr_a4v2"
    only = choose_by_budget(AVSR, 8.125, losses)  # exactly the cheapest's rate fits
    assert only.candidate.label == "avsr_a16v5" and only.rule == "only"
    assert only.record()["tokens_per_second"] == 8.125 and only.record()["token_budget"] == 8.125


def test_a_budget_below_every_condition_is_a_named_error():
    with pytest.raises(NoConditionFits, match=r"--token_budget 8: no avsr condition the model was trained at fits; "
                                              r"the cheapest is avsr_a16v5 at 8\.12 LLM input tokens/s"):
        choose_by_budget(AVSR, 8, validation_losses(META))


def test_without_validation_losses_the_most_tokens_within_the_budget():
    choice = choose_by_budget(AVSR, 20, {})
    assert choice.candidate.label == "avsr_a4v5" and choice.rule == "most_tokens"
    assert "no validation losses" in choice.warnings[0] and "avsr_a4v5 (17.50 LLM input tokens/s)" in choice.warnings[0]
    partial = {"avsr_a16v2": 0.5, "avsr_a16v5": 0.6}  # a4v5 fits but was not validated: no loss comparison
    choice = choose_by_budget(AVSR, 20, partial)
    assert choice.candidate.label == "avsr_a4v5" and "no validation loss for avsr_a4v5" in choice.warnings[0]


def test_auto_picks_the_lowest_wer_at_the_nearest_snr():
    results = {"results": {"wer": {
        "greedy": {"test": {"avsr_a4v2": {"clean": 2.0, "10": 5.0, "0": 30.0},
                            "avsr_a4v5": {"clean": 2.5, "10": 4.0, "0": 20.0},
                            "avsr_a16v2": {"clean": 3.0, "10": 6.0, "0": 15.0},
                            "avsr_a16v5": {"clean": 4.0, "10": 7.0, "0": 25.0},
                            "vsr_v2": {"clean": 40.0}, "vsr_v5": {"clean": 45.0}}},
        "beam4": {"test": {"avsr_a4v2": {"10": 2.0}}}}}}  # a4v2 at 10 dB: the mean of 5 and 2
    wers = snr_wers(results)
    assert wers["avsr_a4v2"]["10"] == 3.5
    pick = lambda snr, budget=None: choose_by_snr(AVSR, snr, wers, budget)  # noqa: E731
    assert pick(8.0).candidate.label == "avsr_a4v2" and pick(8.0).rule == "snr"
    assert "estimated SNR 8.0 dB -> lowest WER at 10 dB" in pick(8.0).reason
    assert pick(2.0).candidate.label == "avsr_a16v2"  # nearest: 0 dB
    assert pick(27.0).candidate.label == "avsr_a4v2"  # nearest: clean (30 dB)
    assert pick(8.0, budget=20).candidate.label == "avsr_a4v5"  # a4v2 (25 tokens/s) does not fit
    vsr = [Candidate("vsr", (("video", "2"),), 12.5), Candidate("vsr", (("video", "5"),), 5.0)]
    assert choose_by_snr(vsr, None, wers).candidate.label == "vsr_v2"  # video reads no noise: the clean WERs
    fallback = choose_by_snr(AVSR, 8.0, {}, 20, validation_losses(META))
    assert fallback.candidate.label == "avsr_a16v2" and fallback.rule == "validation"
    assert "--rates auto: the model's record has no per-SNR WERs" in fallback.warnings[0]
    assert "fell back to the budget rule" in fallback.warnings[0]
    assert "no SNR estimate" in choose_by_snr(AVSR, None, wers).warnings[0]


# --------------------------------------------------------------------------- the SNR estimator


def _talker(seconds: float, seed: int, lead: float = 0.3) -> np.ndarray:
    """Voiced speech-like sound: syllables (harmonics of a 100-220 Hz pitch under a Hann envelope,
    levels 0 to -6 dB) with 30-120 ms gaps and a 300-600 ms pause every third; `lead` s of silence
    at both ends."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    out = np.zeros(n)
    t, syllables = int(lead * SR), 0
    while t < n - int(lead * SR):
        d = int(rng.uniform(0.12, 0.3) * SR)
        f0 = rng.uniform(100, 220)
        tt = np.arange(d) / SR
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 5 * tt))) / SR
        wave = sum(np.sin(k * phase) / k for k in range(1, 16)) * np.hanning(d) * 10 ** (rng.uniform(-6, 0) / 20)
        end = min(n, t + d)
        out[t:end] += wave[: end - t]
        syllables += 1
        t += d + int((rng.uniform(0.3, 0.6) if syllables % 3 == 0 else rng.uniform(0.03, 0.12)) * SR)
    return (0.3 * out).astype(np.float32)


def _babble(n: int, seed: int, talkers: int = 30) -> np.ndarray:
    """`talkers` talkers, each from a random point of its speech on, summed (the recipe's babble has 30)."""
    starts = np.random.default_rng(seed).integers(0, SR, talkers)
    x = sum(_talker(n / SR + 1.0, seed * 100 + i, lead=0.0)[s: s + n] for i, s in enumerate(starts))
    return (x / np.sqrt(np.mean(x ** 2)) * 0.1).astype(np.float32)


@pytest.mark.parametrize("kind", ["white", "babble"])
def test_the_snr_estimate_is_within_3_db(kind):
    for seed in range(2):
        speech = _talker(5.0, seed)
        noise = (np.random.default_rng(seed).standard_normal(len(speech)) * 0.1).astype(np.float32) \
            if kind == "white" else _babble(len(speech), seed + 10)
        for snr in (0, 10, 20):
            mixed, _, _ = mix_at_snr(speech, noise, snr)
            assert abs(estimate_snr(mixed, SR) - snr) < 3.0, (kind, seed, snr, estimate_snr(mixed, SR))


def test_snr_estimate_limits():
    speech = _talker(3.0, 0)
    assert estimate_snr(speech, SR) == 60.0  # digitally silent pauses: the cap
    assert estimate_snr(speech[: SR // 4], SR) is None  # 0.25 s: too short
    assert estimate_snr(np.zeros(SR), SR) is None
    assert estimate_snr(np.random.default_rng(0).standard_normal(SR), SR) < -5  # noise alone


# --------------------------------------------------------------------------- on a tiny trained model

# validation losses of the multitask model's jobs (and, as ESPnet records them, the task means and totals)
LOSSES = {"asr_a4": 2.0, "asr_a16": 1.5, "avsr_a4v2": 1.0, "avsr_a4v5": 1.2, "avsr_a16v2": 1.1, "avsr_a16v5": 1.4,
          "vsr_v2": 3.0, "vsr_v5": 3.2}


def _reporter_state(last_epoch: int = 4) -> dict:
    """ESPnet's Reporter after `last_epoch` epochs of training and validation, as the trainer fills it
    (registered tensors, weighted by the batch size); epoch e's validation losses are LOSSES + (e - 3)^2."""
    from espnet2.train.reporter import Reporter

    reporter = Reporter()
    for epoch in range(1, last_epoch + 1):
        reporter.set_epoch(epoch)
        with reporter.observe("train") as sub:
            sub.register({"loss": torch.tensor(3.0 / epoch), "acc": torch.tensor(0.2)}, weight=4)
            sub.next()
        with reporter.observe("valid") as sub:
            for _ in range(2):
                stats = {f"loss_{k}": torch.tensor(v + (epoch - 3) ** 2) for k, v in LOSSES.items()}
                stats.update(loss=torch.tensor(1.7), acc=torch.tensor(0.5), loss_asr=torch.tensor(1.75),
                             acc_asr=torch.tensor(0.4))
                sub.register(stats, weight=3)
                sub.next()
    return reporter.state_dict()


def _exp_dir(src, dest, checkpoint: bool = True, results: bool = False):
    """A copy of a tiny exp dir: weights as 3epoch.pth (model.pth links to it), checkpoint.pth with
    4 epochs of reporter state, scored decodings (asr_a16 best at 0 dB, asr_a4 clean and at 10 dB)."""
    dest.mkdir(parents=True)
    shutil.copy(src / "config.yaml", dest / "config.yaml")
    shutil.copy(src / "model.pth", dest / "3epoch.pth")
    (dest / "model.pth").symlink_to("3epoch.pth")
    if checkpoint:
        torch.save({"model": {}, "reporter": _reporter_state(), "optimizers": [], "schedulers": [None],
                    "scaler": None}, dest / "checkpoint.pth")
    if results:
        wers = {"asr_a4": {"clean": 10.0, "10": 20.0, "0": 60.0}, "asr_a16": {"clean": 12.0, "10": 25.0, "0": 40.0}}
        for label, snrs in wers.items():
            for snr, wer in snrs.items():
                d = dest / "decode_greedy" / "test" / label / f"snr_{snr}" / "score_wer"
                d.mkdir(parents=True)
                (d / "summary.json").write_text(json.dumps({"wer": wer, "llm_tokens": None}))
    return dest


@pytest.fixture(scope="module")
def audio_inputs(tmp_path_factory):
    """Audio-only clips: clean, and with white noise at 0 dB."""
    d = tmp_path_factory.mktemp("budget_inputs")
    speech = _talker(3.0, 5)
    noisy, _, _ = mix_at_snr(speech, (np.random.default_rng(5).standard_normal(len(speech)) * 0.1).astype(np.float32), 0)
    paths = {"clean": str(d / "clean.mp4"), "noisy": str(d / "noisy.mp4")}
    write_media(paths["clean"], None, speech)
    write_media(paths["noisy"], None, noisy)
    return paths


def _record(out, name):
    return json.loads((out / f"{name}.json").read_text())


def test_cli_token_budget(multitask_exp, audio_inputs, tmp_path, caplog, capsys):
    exp = _exp_dir(multitask_exp, tmp_path / "exp")
    out = tmp_path / "out"
    args = ["--model", str(exp), audio_inputs["clean"], "--task", "asr", "--output_dir", str(out), "--max_new_tokens", "2"]
    assert transcribe.main(args + ["--token_budget", "20"]) == 0  # asr_a4 (12.5/s) and asr_a16 (3.1/s) fit
    record = _record(out, "clean")
    assert record["condition"] == "asr_a16" and record["rates"] == {"audio": 16}  # the lower validation loss
    choice = record["rate_choice"]
    assert choice["rule"] == "validation" and choice["token_budget"] == 20 and choice["tokens_per_second"] == 3.125
    assert "loss 1.5000" in choice["reason"]  # epoch 3's (the packed weights'), not the last epoch's
    assert 2.5 < record["llm_input_tokens_per_second"] <= 3.5 and record["snr_estimate_db"] > 40
    assert transcribe.main(args + ["--token_budget", "3"]) == 2
    assert "--token_budget 3: no asr condition the model was trained at fits; the cheapest is asr_a16 at 3.12 " \
           "LLM input tokens/s" in caplog.text
    with pytest.raises(SystemExit):  # argparse: exit status 2
        transcribe.main(args + ["--token_budget", "20", "--rates", "a4"])
    assert "--rates a4 and --token_budget 20 exclude each other" in capsys.readouterr().err
    (exp / "checkpoint.pth").unlink()  # no validation statistics: the most tokens within the budget
    caplog.clear()
    assert transcribe.main(args + ["--token_budget", "20"]) == 0
    record = _record(out, "clean")
    assert record["condition"] == "asr_a4" and record["rate_choice"]["rule"] == "most_tokens"
    assert "no validation losses" in caplog.text and "asr_a4 (12.50 LLM input tokens/s)" in caplog.text


def test_cli_rates_auto_by_snr(multitask_exp, audio_inputs, tmp_path, caplog):
    exp = _exp_dir(multitask_exp, tmp_path / "exp", results=True)
    out = tmp_path / "out"
    assert transcribe.main(["--model", str(exp), audio_inputs["clean"], audio_inputs["noisy"], "--task", "asr",
                            "--rates", "auto", "--output_dir", str(out), "--max_new_tokens", "2"]) == 0
    clean, noisy = _record(out, "clean"), _record(out, "noisy")
    assert clean["condition"] == "asr_a4" and clean["rate_choice"]["rule"] == "snr"  # nearest: clean
    assert abs(noisy["snr_estimate_db"]) < 3 and noisy["condition"] == "asr_a16"  # nearest: 0 dB
    assert "lowest WER at 0 dB: asr_a16 (40.00 %" in noisy["rate_choice"]["reason"]
    # within a budget that only asr_a16 fits; then without results: the validation rule, with a warning
    assert transcribe.main(["--model", str(exp), audio_inputs["clean"], "--task", "asr", "--rates", "auto",
                            "--token_budget", "5", "--output_dir", str(out), "--max_new_tokens", "2"]) == 0
    assert _record(out, "clean")["condition"] == "asr_a16"
    shutil.rmtree(exp / "decode_greedy")
    assert transcribe.main(["--model", str(exp), audio_inputs["noisy"], "--task", "asr", "--rates", "auto",
                            "--output_dir", str(out), "--max_new_tokens", "2"]) == 0
    noisy = _record(out, "noisy")
    assert noisy["condition"] == "asr_a16" and noisy["rate_choice"]["rule"] == "validation"
    assert "--rates auto: the model's record has no per-SNR WERs" in caplog.text


def test_pack_model_records_validation_losses_and_wers(multitask_exp, audio_inputs, tmp_path):
    exp = _exp_dir(multitask_exp, tmp_path / "exp", results=True)
    archive = tmp_path / "packed" / "multitask.tar"
    assert pack_cli.main(["--config", str(exp / "config.yaml"), "--model_file", str(exp / "model.pth"),
                          "--out", str(archive)]) == 0
    import tarfile

    with tarfile.open(archive) as tar:
        meta = yaml.safe_load(tar.extractfile("meta.yaml").read())
    validation = meta["validation"]
    assert validation["epoch"] == 3 and validation["epoch_of"] == "packed weights"  # model.pth -> 3epoch.pth
    # the task mean is a label too, acc and the total are not (float32 values, as the trainer's tensors)
    assert validation["loss"] == pytest.approx({**LOSSES, "asr": 1.75})
    assert meta["results"]["wer"]["greedy"]["test"]["asr_a16"] == {"clean": 12.0, "10": 25.0, "0": 40.0}
    # the archive decodes within a budget by what it recorded
    out = tmp_path / "out"
    assert transcribe.main(["--model", str(archive), audio_inputs["clean"], "--task", "asr", "--token_budget", "20",
                            "--output_dir", str(out), "--max_new_tokens", "2", "--cache_dir", str(tmp_path / "c")]) == 0
    assert _record(out, "clean")["condition"] == "asr_a16"
    # the last epoch when the weights are no single epoch's (an average)
    (exp / "model.pth").unlink()
    shutil.copy(exp / "3epoch.pth", exp / "valid.acc.ave_3best.pth")
    (exp / "model.pth").symlink_to("valid.acc.ave_3best.pth")
    from espnet_omni_avsr.utils.model_archive import validation_record

    last = validation_record(exp, exp / "model.pth")
    assert last["epoch"] == 4 and last["epoch_of"] == "last epoch" and last["loss"]["asr_a16"] == pytest.approx(2.5)


def test_a_fused_compressor_reports_its_own_count(tmp_path, tiny_llm_dir, tiny_whisper_dir):
    """MMS-LLaMA's Q-Former: queries_per_second, not a count on the probe; the bare label `avsr`."""
    from espnet_omni_avsr.inference.rate_choice import RateChooser
    from espnet_omni_avsr.recognizer import AVSRRecognizer
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
    from tests.models.test_fused_model import fused_config

    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in fused_config(tiny_llm_dir, tiny_whisper_dir, preprocessor="avsr").items():
        setattr(args, k, v)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(vars(args), sort_keys=False))
    rec = AVSRRecognizer(tmp_path / "config.yaml")
    chooser = RateChooser(rec, token_budget=5)
    choice = chooser.choose("avsr")
    assert choice.candidate.label == "avsr" and choice.candidate.rates == {"audiovisual": "q3"}
    assert choice.candidate.tokens_per_second == 3.0 and choice.rule == "only"
    assert rec.conditions_of("avsr") == {"audiovisual": "q3"}
    with pytest.raises(NoConditionFits, match="the cheapest is avsr at 3.00 LLM input tokens/s"):
        RateChooser(rec, token_budget=2, stream_rates={"audiovisual": {"q3": 3.0}}).choose("avsr")
