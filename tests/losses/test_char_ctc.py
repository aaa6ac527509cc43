import pytest
import torch

from espnet_omni_avsr.losses.char_ctc import BLANK, CHARS, CharCTC
from espnet_omni_avsr.models.step_record import StepRecord

from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch


def test_encode_texts_maps_characters_and_unknowns():
    head = CharCTC(8)
    ids, lengths = head.encode_texts(["Bin  blue", "a-1"])
    assert lengths.tolist() == [8, 3]
    assert "".join(CHARS[i] for i in ids[0].tolist()) == "bin blue"
    assert [CHARS[i] for i in ids[1, :3].tolist()] == ["a", "<unk>", "1"]
    assert ids[1, 3:].eq(BLANK).all()


def test_loss_matches_torch_ctc_per_character():
    torch.manual_seed(0)
    head = CharCTC(8, dropout=0.0)
    feats, lengths = torch.randn(2, 20, 8), torch.tensor([20, 12])
    loss = head.compute(feats, lengths, ["ab", "cab"])
    log_probs = head.head(feats).log_softmax(-1)
    ref = [
        torch.nn.functional.ctc_loss(
            log_probs[b, : lengths[b]], torch.tensor([CHARS.index(c) for c in t]), lengths[b : b + 1],
            torch.tensor([len(t)]), reduction="sum",
        ) / len(t)
        for b, t in enumerate(["ab", "cab"])
    ]
    assert torch.allclose(loss, sum(ref) / 2, atol=1e-5)


def test_greedy_reads_the_best_path_without_repeats_and_blanks():
    head = CharCTC(len(CHARS), dropout=0.0)
    with torch.no_grad():
        head.head.weight.copy_(torch.eye(len(CHARS)))
        head.head.bias.zero_()
    path = ["a", "a", "<blank>", "a", "b", " ", " ", "7", "x"]
    feats = torch.nn.functional.one_hot(torch.tensor([[CHARS.index(c) for c in path]]), len(CHARS)).float()
    assert head.greedy(feats, torch.tensor([8])) == ["aab 7"]


def test_impossible_alignment_adds_zero_not_infinity():
    head = CharCTC(4, dropout=0.0)
    loss = head.compute(torch.randn(1, 3, 4), torch.tensor([3]), ["abcdefgh"])
    assert loss.item() == 0.0


LLM = {"type": "llm_cross_entropy"}


def with_losses(config: dict, *losses: dict) -> dict:
    config["losses"] = list(losses)
    return config


@pytest.fixture
def ctc_model(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["model_conf"] = dict(tasks=["avsr", "vsr"])
    with_losses(config, LLM, {"type": "char_ctc", "weight": 0.5, "conf": {"modality": "video"}})
    model, _ = build(config)
    return model


def test_model_adds_weighted_video_ctc(ctc_model):
    ctc_model.eval()
    batch = make_batch(ctc_model.decoder.tokenizer, n=3)
    loss, stats, _ = ctc_model(**batch)
    llm = (stats["loss_avsr"] + stats["loss_vsr"]) / 2
    assert "ctc_video" in stats and stats["ctc_video"] > 0
    assert torch.allclose(loss, llm + 0.5 * stats["ctc_video"], atol=1e-5)


def test_transcripts_decode_the_llm_ids(ctc_model):
    batch = make_batch(ctc_model.decoder.tokenizer, n=3)
    step = StepRecord(batch["text"], batch["text_lengths"], {}, ctc_model.branches, ctc_model.decoder, {})
    assert step.transcripts()[1] == "lay green by a nine again"


def test_ctc_trains_the_video_encoder(ctc_model):
    ctc_model.train()
    batch = make_batch(ctc_model.decoder.tokenizer, n=2)
    ctc_model.zero_grad()
    texts = ["bin blue at f two now", "lay green by a nine again"]
    ctc_model.losses["ctc_video"].compute(*ctc_model.video.encode(batch["video"], batch["video_lengths"]), texts).backward()
    grads = [p.grad for n, p in ctc_model.named_parameters() if n.startswith("video.encoder") and p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_ctc_on_a_modality_no_task_uses_is_refused(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir, task="asr")
    with_losses(config, LLM, {"type": "char_ctc", "weight": 0.3, "conf": {"modality": "video"}})
    with pytest.raises(ValueError, match="'char_ctc' needs the video modality"):
        build(config)


@pytest.fixture
def warmup_model(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    with_losses(config, LLM, {"type": "char_ctc", "weight": 0.3, "conf": {"modality": "video"}}, {"type": "av_distill"})
    model, _ = build(config)
    return model, config


def test_distill_and_ctc_add_to_the_llm_loss(warmup_model):
    model, _ = warmup_model
    model.eval()
    batch = make_batch(model.decoder.tokenizer, n=3)
    loss, stats, _ = model(**batch)
    llm = loss - 0.3 * stats["ctc_video"] - stats["distill"]
    only_llm = {n: t for n, t in model.losses.items() if n == "llm"}
    model.losses = torch.nn.ModuleDict(only_llm)
    alone, _, _ = model(**batch)
    assert torch.allclose(llm, alone, atol=1e-5)
    assert 0 < stats["distill"] < 2


def test_without_the_llm_term_no_llm_pass_runs(warmup_model, monkeypatch, tiny_llm_dir, tiny_whisper_dir):
    _, config = warmup_model
    torch.manual_seed(0)
    with_losses(config, {"type": "char_ctc", "weight": 0.3, "conf": {"modality": "video"}}, {"type": "av_distill"})
    model, _ = build(config)
    monkeypatch.setattr(model.decoder, "forward", lambda *a, **k: pytest.fail("LLM pass without an LLM loss term"))
    batch = make_batch(model.decoder.tokenizer, n=2)
    loss, stats, _ = model(**batch)
    assert "acc" not in stats
    assert torch.allclose(loss, 0.3 * stats["ctc_video"] + stats["distill"])
    loss.backward()
    assert model.video.frontend.proj.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" in n)


def test_distill_needs_both_modalities_and_a_model_needs_a_loss(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir, task="vsr")
    with_losses(config, LLM, {"type": "av_distill"})
    with pytest.raises(ValueError, match="'av_distill' needs the audio modality"):
        build(config)
    with_losses(config)
    with pytest.raises(ValueError, match="at least one loss term"):
        build(config)
    with_losses(config, {"type": "no_such_loss"})
    with pytest.raises(ValueError, match="unknown type 'no_such_loss'"):
        build(config)
    with_losses(config, {"type": "llm_cross_entropy", "wieght": 2})
    with pytest.raises(ValueError, match=r"unknown keys \['wieght'\]"):
        build(config)
    with_losses(config, {"type": "llm_cross_entropy", "weight": -1})
    with pytest.raises(ValueError, match="weight must be >= 0"):
        build(config)
    with_losses(config, LLM, LLM)
    with pytest.raises(ValueError, match="each with its own name"):
        build(config)
