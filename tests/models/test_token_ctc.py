import pytest
import torch

from espnet_omni_avsr.models.token_ctc import TokenCTC

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
    loss = head(tokens, lengths, targets, target_lengths, table)
    log_probs = head.logits(tokens, table).log_softmax(-1)
    ref = [
        torch.nn.functional.ctc_loss(
            log_probs[b, : lengths[b]], targets[b, : target_lengths[b]] + 1, lengths[b : b + 1],
            target_lengths[b : b + 1], reduction="sum",
        ) / target_lengths[b]
        for b in range(2)
    ]
    assert torch.allclose(loss, sum(ref) / 2, atol=1e-5)


def test_too_few_tokens_add_zero():
    head = TokenCTC(4)
    loss = head(torch.randn(1, 2, 4), torch.tensor([2]), torch.tensor([[1, 2, 3]]), torch.tensor([3]), torch.randn(5, 4))
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
        head(tokens, torch.tensor([8]), target, torch.tensor([3]), table).backward()
        opt.step()
    assert head.greedy(head.logits(tokens, table), torch.tensor([8])) == [(7, 21, 4)]


@pytest.fixture
def token_ctc_model(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["model_conf"] = dict(tasks=["avsr"], token_ctc_weights=dict(audio=1.0, video=0.5), llm_weight=0)
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
        if name.startswith(("audio.projectors", "video.projectors", "token_ctc")):
            assert p.grad is not None, name
        if name.startswith("decoder.") or name.startswith("audio.encoder"):
            assert p.grad is None, name


def test_token_ctc_on_a_modality_no_task_uses_is_refused(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir, task="asr")
    config["model_conf"] = dict(tasks=["asr"], token_ctc_weights=dict(video=0.3))
    with pytest.raises(ValueError, match="token_ctc_weights: 'video'"):
        build(config)
