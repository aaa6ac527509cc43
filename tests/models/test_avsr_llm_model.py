import pytest
import torch

from espnet_omni_avsr.decoders.prompt import IGNORE_ID

from tests.models.conftest import build, tiny_config


def make_batch(tokenizer, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    secs = [1.0, 0.6, 0.8][:n]
    speech = [torch.randn(int(s * 16000), generator=g) * 0.1 for s in secs]
    video = [torch.randint(0, 256, (int(s * 25), 96, 96), generator=g, dtype=torch.uint8) for s in secs]
    texts = ["bin blue at f two now", "lay green by a nine again", "set white with q one soon"][:n]
    ids = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    pad = torch.nn.utils.rnn.pad_sequence
    return dict(
        speech=pad(speech, batch_first=True),
        speech_lengths=torch.tensor([len(x) for x in speech]),
        video=pad(video, batch_first=True),
        video_lengths=torch.tensor([len(x) for x in video]),
        text=pad(ids, batch_first=True, padding_value=-1),
        text_lengths=torch.tensor([len(x) for x in ids]),
    )


def select(batch, idx):
    out = {}
    for key in ("speech", "video", "text"):
        n = int(batch[key + "_lengths"][idx])
        out[key] = batch[key][idx : idx + 1, :n]
        out[key + "_lengths"] = batch[key + "_lengths"][idx : idx + 1]
    return out


def transcript_logits(model, batch):
    """Per-utterance logits at the scored positions, through the model's own path."""
    tokens = model.modality_tokens([model.task], batch)
    prompt = model.prompt.build(model.decoder.embed, model.task, tokens, batch["text"], batch["text_lengths"])
    out = model.decoder(prompt)
    rows = out.scored.nonzero()[:, 0]
    return [out.logits[rows == b] for b in range(prompt.batch_size)]


def test_forward_backward_and_stats(tiny_avsr):
    model, _ = tiny_avsr
    batch = make_batch(model.decoder.tokenizer)
    loss, stats, weight = model(**batch)
    # 1-dim, as ESPnet's models return them (force_gatherable): DataParallel gathers them, and the
    # distributed trainer's recursive_average asserts it
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    assert all(v.shape == (1,) for v in stats.values()), {k: v.shape for k, v in stats.items()}
    assert set(stats) >= {"loss", "acc"} and 0 <= stats["acc"] <= 1
    assert weight.shape == (1,) and int(weight) == 2
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad and ("projector" in name or "lora_" in name):
            assert p.grad is not None, name


def test_loss_equals_independent_full_forward(tiny_avsr):
    """Selective LM head + masking == a plain HF forward with labels on transcript+EOS only."""
    model, _ = tiny_avsr
    model.eval()
    batch = make_batch(model.decoder.tokenizer)
    loss, _, _ = model(**batch)
    tokens = model.modality_tokens(["avsr"], batch)
    prompt = model.prompt.build(model.decoder.embed, "avsr", tokens, batch["text"], batch["text_lengths"])
    labels = prompt.labels
    ref = model.decoder.llm(inputs_embeds=prompt.embeds, attention_mask=prompt.mask, labels=labels).loss
    assert torch.allclose(loss, ref, atol=1e-5)
    n_scored = int((labels != IGNORE_ID).sum())
    assert n_scored == int(batch["text_lengths"].sum()) + 2  # transcript + one EOS each


def test_optimizer_step_changes_only_trainable(tiny_avsr):
    model, _ = tiny_avsr
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    loss, _, _ = model(**make_batch(model.decoder.tokenizer))
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        frozen_pretrained = n.startswith("decoder.llm") and "lora_" not in n or n.startswith("audio.encoder")
        if frozen_pretrained:
            assert not p.requires_grad and not changed, n
        if "lora_B" in n or "projector" in n or n == "decoder.special_embeddings":
            assert changed, n


def test_padding_invariance(tiny_avsr):
    model, _ = tiny_avsr
    model.eval()
    batch = make_batch(model.decoder.tokenizer, n=3)
    with torch.no_grad():
        together = transcript_logits(model, batch)
        for b in range(3):
            alone = transcript_logits(model, select(batch, b))[0]
            assert torch.allclose(alone, together[b], atol=1e-4), b


def test_checkpoint_skips_frozen_pretrained_and_reloads(tiny_llm_dir, tiny_whisper_dir, tiny_avsr):
    model, _ = tiny_avsr
    state = model.state_dict()
    assert not any(k.startswith("audio.encoder") and "weight" in k for k in state)
    assert not any(k.startswith("decoder.llm") and "lora_" not in k for k in state)
    assert any("lora_A" in k for k in state) and "decoder.special_embeddings" in state
    torch.manual_seed(123)
    fresh, _ = build(tiny_config(tiny_llm_dir, tiny_whisper_dir))
    fresh.load_state_dict(state, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_missing_modality_is_a_clear_error(tiny_avsr):
    model, _ = tiny_avsr
    batch = make_batch(model.decoder.tokenizer)
    batch.pop("video")
    with pytest.raises(ValueError, match="need 'video'"):
        model(**batch)


def test_task_without_branch_is_refused(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir, task="avsr")
    config["video_frontend"] = None
    with pytest.raises(ValueError, match="need a video branch"):
        build(config)


@pytest.mark.parametrize("task", ["asr", "vsr"])
def test_single_modality_tasks(tiny_llm_dir, tiny_whisper_dir, task):
    """ASR reads the audio only and VSR the video only: the other input may be absent or anything,
    only the task's own branch (and the LoRA) trains, and the prompt holds only its tokens."""
    torch.manual_seed(0)
    model, _ = build(tiny_config(tiny_llm_dir, tiny_whisper_dir, task=task))
    used, other = ("audio", "video") if task == "asr" else ("video", "audio")
    other_input = "video" if task == "asr" else "speech"
    full = make_batch(model.decoder.tokenizer)
    batch = dict(full)
    batch.pop(other_input)
    batch.pop(other_input + "_lengths")
    model.eval()
    with torch.no_grad():
        alone, stats, _ = model(**batch)
        scrambled = dict(full, **{other_input: torch.zeros_like(full[other_input])})
        assert torch.equal(model(**scrambled)[0], alone)  # the other modality is not read
    assert torch.isfinite(alone).all() and alone.item() > 0 and {"loss", "acc"} <= set(stats)
    model.train()
    loss, _, _ = model(**batch)
    loss.sum().backward()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert used in trained and "decoder" in trained and other not in trained, trained
    model.eval()
    hyps, n_tokens = model.recognize(**{k: v for k, v in batch.items() if not k.startswith("text")}, max_new_tokens=2)
    assert len(hyps) == 2
    assert n_tokens.tolist() == [13, 8]  # 1.0 s and 0.6 s: ceil(50 s / 4) audio or ceil(25 s / 2) video tokens


def test_batched_greedy_matches_one_at_a_time(tiny_avsr):
    model, _ = tiny_avsr
    model.eval()
    batch = make_batch(model.decoder.tokenizer, n=3)
    inputs = {k: v for k, v in batch.items() if not k.startswith("text")}
    together, n_tok = model.recognize(**inputs, max_new_tokens=6)
    for b in range(3):
        one = select(batch, b)
        alone, _ = model.recognize(**{k: v for k, v in one.items() if not k.startswith("text")}, max_new_tokens=6)
        assert alone[0] == together[b]
    assert n_tok.tolist() == [13 + 13, 8 + 8, 10 + 10]  # ceil(50*s/4) audio + ceil(25*s/2) video


@pytest.fixture
def multitask(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["model_conf"] = dict(tasks=["asr", "vsr", "avsr"], task_weights=[1.0, 1.5, 1.0])
    model, _ = build(config)
    model.eval()
    return model


def test_multitask_loss_is_weighted_sum_of_single_task_losses(multitask):
    batch = make_batch(multitask.decoder.tokenizer, n=3)
    loss, stats, _ = multitask(**batch)
    separate = {}
    for task in ("asr", "vsr", "avsr"):
        multitask.schedule.tasks, multitask.schedule.task_weights = [task], {task: 1.0}
        separate[task], _, _ = multitask(**batch)
        assert torch.allclose(stats[f"loss_{task}"], separate[task], atol=1e-5), task
    expected = (separate["asr"] + 1.5 * separate["vsr"] + separate["avsr"]) / 3
    assert torch.allclose(loss, expected, atol=1e-5)


def test_batched_task_pass_equals_separate_passes(multitask):
    batch = make_batch(multitask.decoder.tokenizer, n=3)
    together, stats_t, _ = multitask(**batch)
    multitask.batched_tasks = False
    apart, stats_a, _ = multitask(**batch)
    assert torch.allclose(together, apart, atol=1e-5)
    for k in stats_t:
        assert torch.allclose(stats_t[k], stats_a[k], atol=1e-5), k


def test_bad_task_lists(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["model_conf"] = dict(tasks=["asr", "asr"])
    with pytest.raises(ValueError, match="distinct"):
        build(config)
    config["model_conf"] = dict(tasks=["asr", "vsr"], task_weights=[1.0])
    with pytest.raises(ValueError, match="one weight per task"):
        build(config)
