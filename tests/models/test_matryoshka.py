"""Several compression rates per modality: matryoshka training and elastic inference."""
import pytest
import torch

from espnet_omni_avsr.utils.rates import conditions
from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch


def _config(llm, whisper, **model_conf):
    config = tiny_config(llm, whisper)
    config["audio_compressor_conf"] = {}
    config["video_compressor_conf"] = {}
    config.update(audio_rates=[2, 4], video_rates=[1, 2], audio_compressor="avg_pool")
    config["model_conf"] = dict(tasks=["asr", "vsr", "avsr"], task_weights=[1.0, 1.5, 1.0], **model_conf)
    return config


@pytest.fixture
def mtsk(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    model, _ = build(_config(tiny_llm_dir, tiny_whisper_dir, rate_sampling="all_pairs"))
    return model


def test_one_compressor_and_projector_per_rate(mtsk):
    assert mtsk.conditions("audio") == ["2", "4"] and mtsk.conditions("video") == ["1", "2"]
    assert mtsk.audio.rates == [2, 4]
    assert set(mtsk.audio.projectors) == {"2", "4"} and set(mtsk.video.compressors) == {"1", "2"}


def _single_job_loss(model, batch, task, conditions):
    """The loss of one task at one condition per modality, through the model's own step."""
    schedule = model.schedule
    saved = schedule.tasks, schedule.task_weights, schedule.conditions
    schedule.tasks, schedule.task_weights = [task], {task: 1.0}
    schedule.conditions = {m: [str(conditions.get(m, saved[2][m][0]))] for m in saved[2]}
    try:
        loss, _, _ = model(**batch)
    finally:
        schedule.tasks, schedule.task_weights, schedule.conditions = saved
    return loss


def test_all_pairs_loss_is_the_mean_over_rates(mtsk):
    mtsk.eval()
    batch = make_batch(mtsk.decoder.tokenizer)
    loss, stats, _ = mtsk(**batch)
    separate = {}
    for task, rates in [("asr", {"audio": 2}), ("asr", {"audio": 4}), ("vsr", {"video": 1}), ("vsr", {"video": 2})] + [
            ("avsr", {"audio": a, "video": v}) for a in (2, 4) for v in (1, 2)]:
        separate.setdefault(task, []).append(_single_job_loss(mtsk, batch, task, rates))
    per_task = {t: sum(v) / len(v) for t, v in separate.items()}
    assert torch.allclose(stats["loss_avsr_a4v1"], separate["avsr"][2], atol=1e-5)
    expected = (per_task["asr"] + 1.5 * per_task["vsr"] + per_task["avsr"]) / 3
    assert torch.allclose(loss, expected, atol=1e-5)


def test_one_pair_draws_one_rate_per_modality_in_training(tiny_llm_dir, tiny_whisper_dir):
    """Each training step draws one rate per modality, the same for every task that uses the
    modality (ASR and AVSR hear the same audio rate, VSR and AVSR see the same video rate); the
    draw changes from step to step and reaches every pair; only the drawn rates' projectors train."""
    model, _ = build(_config(tiny_llm_dir, tiny_whisper_dir, rate_sampling="one_pair"))
    batch = make_batch(model.decoder.tokenizer)
    model.train()
    ran = []
    draw = model.schedule.jobs
    model.schedule.jobs = lambda training: ran.append(draw(training)) or ran[-1]
    pairs = []
    for seed in range(16):
        torch.manual_seed(seed)
        model.zero_grad(set_to_none=True)
        loss, stats, _ = model(**batch)
        loss.sum().backward()
        assert not any(k.startswith("loss_avsr_") for k in stats)  # one condition per task
        jobs = {job.task: job.condition_map for job in ran[-1]}
        assert sorted(jobs) == ["asr", "avsr", "vsr"] and len(ran[-1]) == 3
        assert jobs["asr"]["audio"] == jobs["avsr"]["audio"] and jobs["vsr"]["video"] == jobs["avsr"]["video"]
        pair = (jobs["avsr"]["audio"], jobs["avsr"]["video"])
        with_grad = {(m, rate) for m in ("audio", "video") for rate, proj in getattr(model, m).projectors.items()
                     if any(p.grad is not None for p in proj.parameters())}
        assert with_grad == {("audio", pair[0]), ("video", pair[1])}, (pair, with_grad)
        pairs.append(pair)
    assert len(set(pairs[:4])) > 1, f"the first steps all drew {pairs[0]}"
    assert set(pairs) == {("2", "1"), ("2", "2"), ("4", "1"), ("4", "2")}, pairs
    model.eval()
    _, stats, _ = model(**batch)  # validation covers every pair
    seen = {k for k in stats if k.startswith("loss_avsr_")}
    assert seen == {"loss_avsr_a2v1", "loss_avsr_a2v2", "loss_avsr_a4v1", "loss_avsr_a4v2"}


def test_shared_projector(tiny_llm_dir, tiny_whisper_dir):
    config = _config(tiny_llm_dir, tiny_whisper_dir)
    config["share_projector"] = True
    config["video_compressor"] = "avg_pool"
    model, _ = build(config)
    assert set(model.audio.projectors) == {"shared"}
    config["video_compressor"] = "stack"  # rate-dependent sizes cannot share a projector
    with pytest.raises(ValueError, match="one shared projector"):
        build(config)


def test_rate_given_twice_is_refused(tiny_llm_dir, tiny_whisper_dir):
    config = _config(tiny_llm_dir, tiny_whisper_dir)
    config["audio_compressor_conf"] = dict(rate=4)
    with pytest.raises(ValueError, match="not both"):
        build(config)


def test_elastic_decoding_at_every_trained_rate(mtsk, tiny_llm_dir, tiny_whisper_dir):
    mtsk.eval()
    batch = make_batch(mtsk.decoder.tokenizer)
    inputs = {k: v for k, v in batch.items() if not k.startswith("text")}
    conds = conditions(_config(tiny_llm_dir, tiny_whisper_dir))
    assert [c["label"] for c in conds] == ["asr_a2", "asr_a4", "vsr_v1", "vsr_v2",
                                           "avsr_a2v1", "avsr_a2v2", "avsr_a4v1", "avsr_a4v2"]
    for c in conds:
        hyps, n_tok = mtsk.recognize(**inputs, task=c["task"], rates=c["rates"], max_new_tokens=3)
        assert len(hyps) == 2
        expected = sum(-(-n // r) for m, r in c["rates"].items()
                       for n in [[50, 30][0] if m == "audio" else 25])  # first utterance: 1 s
        assert int(n_tok[0]) == expected


def test_untrained_rate_is_refused(mtsk):
    batch = make_batch(mtsk.decoder.tokenizer)
    inputs = {k: v for k, v in batch.items() if not k.startswith("text")}
    with pytest.raises(ValueError, match=r"rate 3 is not one this branch was trained at: \[2, 4\]"):
        mtsk.recognize(**inputs, task="asr", rates={"audio": 3})
