import pytest
import torch

from espnet_omni_avsr.losses.token_ctc import TokenCTC, transcript_token_ids

from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch


def test_logits_are_scaled_cosines_with_blank_first():
    torch.manual_seed(0)
    head = TokenCTC(8, init_scale=5.0)
    table = torch.randn(11, 8)
    tokens = torch.randn(2, 3, 8)
    logits = head.logits(tokens, table)
    assert logits.shape == (2, 3, 12)
    cos = torch.nn.functional.cosine_similarity(tokens[..., None, :], table[None, None], dim=-1)
    assert torch.allclose(logits[..., 1:], 5.0 * cos, atol=1e-5)
    blank = torch.nn.functional.cosine_similarity(tokens, head.blank.expand_as(tokens), dim=-1)
    assert torch.allclose(logits[..., 0], 5.0 * blank, atol=1e-5)


def test_loss_matches_torch_ctc_with_shifted_ids():
    torch.manual_seed(0)
    head = TokenCTC(8)
    table = torch.randn(11, 8)
    tokens, lengths = torch.randn(2, 9, 8), torch.tensor([9, 6])
    targets = torch.tensor([[3, 0, -1], [10, 2, 2]])
    target_lengths = torch.tensor([2, 3])
    loss = head.compute(tokens, lengths, targets, target_lengths, table)
    log_probs = head.logits(tokens, table).log_softmax(-1)
    ref = [
        torch.nn.functional.ctc_loss(
            log_probs[b, : lengths[b]], targets[b, : target_lengths[b]] + 1, lengths[b : b + 1],
            target_lengths[b : b + 1], reduction="sum",
        ) / target_lengths[b]
        for b in range(2)
    ]
    assert torch.allclose(loss, sum(ref) / 2, atol=1e-5)


def test_restricted_vocabulary_is_ctc_over_the_candidates_and_the_batch_targets():
    """With vocab_ids, the loss is full CTC on a table of the candidate rows only; a target
    outside vocab_ids (10) joins the candidates instead of being lost."""
    torch.manual_seed(0)
    head = TokenCTC(8, vocab_ids=[2, 5, 3])
    table = torch.randn(11, 8)
    tokens, lengths = torch.randn(2, 9, 8), torch.tensor([9, 6])
    targets = torch.tensor([[3, 5, -1], [10, 2, 2]])
    target_lengths = torch.tensor([2, 3])
    loss = head.compute(tokens, lengths, targets, target_lengths, table)
    candidates = torch.tensor([2, 3, 5, 10])
    full = TokenCTC(8)
    full.load_state_dict(head.state_dict())
    remapped = torch.tensor([[1, 2, 0], [3, 0, 0]])  # indices into candidates
    assert torch.allclose(loss, full.compute(tokens, lengths, remapped, target_lengths, table[candidates]), atol=1e-5)
    assert not torch.allclose(loss, full.compute(tokens, lengths, targets, target_lengths, table), atol=1e-3)
    loss.backward()
    assert head.blank.grad is not None and torch.isfinite(head.blank.grad).all()


def test_restricted_vocabulary_refuses_nothing_or_negative_ids():
    for bad in ([], [-1, 3]):
        with pytest.raises(ValueError, match="vocab_ids"):
            TokenCTC(4, vocab_ids=bad)


def test_transcript_token_ids_reads_kaldi_text_in_every_case(tmp_path, tiny_llm_dir):
    from espnet_omni_avsr.decoders.llm_tokenizer import load_llm_tokenizer

    tok = load_llm_tokenizer(tiny_llm_dir)
    text = tmp_path / "text"
    text.write_text("utt1 Bin Blue\nutt2\nutt3 now\n")
    ids = transcript_token_ids(str(text), tok)
    for words in ("Bin Blue", "bin blue", "BIN BLUE", "now"):
        assert set(tok(words, add_special_tokens=False)["input_ids"]) <= set(ids)
    with pytest.raises(ValueError, match="cannot read transcripts from .*missing"):
        transcript_token_ids(str(tmp_path / "missing"), tok)
    (tmp_path / "empty").write_text("utt1\n")
    with pytest.raises(ValueError, match="no transcript in .*empty"):
        transcript_token_ids(str(tmp_path / "empty"), tok)


def test_too_few_tokens_add_zero():
    head = TokenCTC(4)
    loss = head.compute(torch.randn(1, 2, 4), torch.tensor([2]), torch.tensor([[1, 2, 3]]), torch.tensor([3]), torch.randn(5, 4))
    assert loss.item() == 0.0


def test_training_makes_greedy_path_spell_the_targets():
    """A learnable token sequence trained by the loss alone reads back as the target ids."""
    torch.manual_seed(0)
    head = TokenCTC(16)
    table = torch.randn(30, 16)
    tokens = torch.nn.Parameter(torch.randn(1, 8, 16))
    target = torch.tensor([[7, 21, 4]])
    opt = torch.optim.Adam([tokens, *head.parameters()], lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        head.compute(tokens, torch.tensor([8]), target, torch.tensor([3]), table).backward()
        opt.step()
    assert head.greedy(head.logits(tokens, table), torch.tensor([8])) == [(7, 21, 4)]


@pytest.fixture
def token_ctc_model(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["losses"] = [
        {"type": "token_ctc", "conf": {"modality": "audio"}},
        {"type": "token_ctc", "weight": 0.5, "conf": {"modality": "video"}},
    ]
    model, _ = build(config)
    return model


def test_model_warmup_trains_projectors_only_through_token_ctc(token_ctc_model):
    model = token_ctc_model
    model.train()
    batch = make_batch(model.decoder.tokenizer, n=2)
    loss, stats, _ = model(**batch)
    assert set(stats) == {"token_ctc_audio", "token_ctc_video", "loss"}
    assert torch.allclose(loss, stats["token_ctc_audio"] + 0.5 * stats["token_ctc_video"], atol=1e-5)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith(("audio.projectors", "video.projectors", "losses.token_ctc")):
            assert p.grad is not None, name
        if name.startswith("decoder.") or name.startswith("audio.encoder"):
            assert p.grad is None, name


def test_model_token_ctc_vocab_restricts_the_softmax_to_the_transcripts(tiny_llm_dir, tiny_whisper_dir, tmp_path):
    text = tmp_path / "text"
    text.write_text("u1 bin blue at f two now\nu2 place red by g nine again\n")
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["losses"] = [{"type": "token_ctc", "conf": {"modality": "audio", "vocab": str(text)}}]
    model, _ = build(config)
    expected = transcript_token_ids(str(text), model.decoder.tokenizer)
    assert model.losses["token_ctc_audio"].vocab_ids.tolist() == expected
    assert len(expected) < model.decoder.output_embeddings().size(0) / 4
    loss, stats, _ = model(**make_batch(model.decoder.tokenizer, n=2))
    assert torch.isfinite(loss) and set(stats) == {"token_ctc_audio", "loss"}
    # the candidate list is rebuilt from the file, never saved in checkpoints
    assert all("vocab_ids" not in k for k in model.state_dict())


def test_token_ctc_on_a_modality_no_task_uses_is_refused(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir, task="asr")
    config["losses"] = [{"type": "token_ctc", "weight": 0.3, "conf": {"modality": "video"}}]
    with pytest.raises(ValueError, match="'token_ctc' needs the video modality"):
        build(config)


def test_repeat_scores_each_token_k_times_so_a_short_stream_can_spell_a_longer_transcript():
    """Three tokens cannot spell four target ids (CTC gives inf, zeroed); repeated twice they can,
    and the loss equals plain CTC on the tokens repeated by hand."""
    torch.manual_seed(0)
    table = torch.randn(11, 8)
    tokens, lengths = torch.randn(2, 3, 8), torch.tensor([3, 2])
    targets = torch.tensor([[3, 4, 5, 6], [2, 2, 0, 0]])
    target_lengths = torch.tensor([4, 2])
    plain, twice = TokenCTC(8), TokenCTC(8, repeat=2)
    twice.load_state_dict(plain.state_dict())
    short = plain.compute(tokens[:1], lengths[:1], targets[:1], target_lengths[:1], table)
    assert short.item() == 0.0  # zero_infinity: no alignment of 4 ids (and blanks) in 3 frames
    loss = twice.compute(tokens, lengths, targets, target_lengths, table)
    by_hand = plain.compute(tokens.repeat_interleave(2, dim=1), lengths * 2, targets, target_lengths, table)
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.allclose(loss, by_hand)
    with pytest.raises(ValueError, match="repeat must be an integer >= 1"):
        TokenCTC(8, repeat=0)


def test_token_ctc_on_the_fused_stream_trains_the_qformer_without_the_llm(tiny_llm_dir, tiny_whisper_dir):
    """MMS-LLaMA's warm-up: token CTC on the Q-Former's projected queries (`modality:
    audiovisual`), no LLM term: the fusion, Q-Former and projector get gradients, the LoRA none.
    The tiny tokenizer spells each transcript in 15 ids and a clip gets 3 queries: repeat 8."""
    from tests.models.test_fused_model import fused_config

    config = fused_config(tiny_llm_dir, tiny_whisper_dir)
    config["losses"] = [{"type": "token_ctc", "conf": {"modality": "audiovisual", "repeat": 8}}]
    model, _ = build(config)
    loss, stats, _ = model(**make_batch(model.decoder.tokenizer, n=2))
    assert set(stats) == {"token_ctc_audiovisual", "loss"} and loss.item() > 0
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for part in ("fused.fusion.audio.conv", "fused.compressors.q3", "fused.projectors.q3"):
        assert any(part in n for n in grads), part
    assert not any("lora_" in n for n in grads)


def test_token_ctc_on_the_fused_stream_needs_a_fused_model(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["losses"] = [{"type": "token_ctc", "conf": {"modality": "audiovisual"}}]
    with pytest.raises(ValueError, match="'token_ctc' needs the audiovisual stream"):
        build(config)
