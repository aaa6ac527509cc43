"""decoders.sequence_packing: the row layout, the round trip to the padded layout, the refusals,
and one LLM pass packed vs padded on the tiny random Llama (eager and sdpa, float32)."""
import pytest
import torch

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import Prompt, PromptLayout, TokenType
from espnet_omni_avsr.decoders.sequence_packing import SequencePacker, assign_rows

RTOL, ATOL = 1e-5, 1e-6  # float32: summation order only


def test_assign_rows_first_fit_decreasing():
    assert assign_rows([5, 3, 4, 2, 6], capacity=6) == [[4], [0], [2, 3], [1]]
    assert assign_rows([9, 2], capacity=6) == [[0], [1]]  # too long for a row: a row of its own
    assert assign_rows([3, 3, 3], capacity=100) == [[0, 1, 2]]


def _prompt(decoder, seed=0, tasks=(("asr", "audio", 7), ("vsr", "video", 12)), batch=3):
    """Right-padded prompts of two tasks and several lengths, stacked as one pass."""
    g = torch.Generator().manual_seed(seed)
    layout = PromptLayout(decoder.tokenizer)
    prompts = []
    for task, modality, n in tasks:
        lengths = torch.tensor([n, n - 3, n - 5][:batch])
        tokens = {modality: (torch.randn(batch, n, decoder.hidden_size, generator=g) * 0.5, lengths)}
        text = torch.randint(10, 200, (batch, 5), generator=g)
        prompts.append(layout.build(decoder.embed, task, tokens, text, torch.tensor([5, 3, 4][:batch])))
    return Prompt.cat(prompts)


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def decoder(request, tiny_llm_dir):
    torch.manual_seed(0)
    return HFCausalLMDecoder(model_dir=tiny_llm_dir, attn_implementation=request.param)


def test_pack_and_unpack_round_trip(decoder):
    prompt = _prompt(decoder)
    packed = SequencePacker("eager", max_length=60).pack(prompt)
    lengths = prompt.mask.sum(1)
    assert packed.num_rows < prompt.batch_size and packed.embeds.size(1) <= 60
    assert int(packed.mask.sum()) == int(lengths.sum())
    torch.testing.assert_close(packed.unpack(packed.embeds), prompt.embeds * prompt.mask[..., None])
    torch.testing.assert_close(packed.unpack(packed.token_types[..., None])[..., 0], prompt.token_types)
    # each sequence's positions restart at 0: the position ids of its tokens are 0 .. n-1 again
    pos = packed.unpack(packed.position_ids[..., None])[..., 0]
    n = prompt.embeds.size(1)
    torch.testing.assert_close(pos, torch.arange(n)[None, :].expand_as(pos) * prompt.mask)
    assert packed.tasks == prompt.tasks
    assert (packed.token_types[packed.mask == 0] == int(TokenType.PAD)).all()


def test_one_row_for_flash_attention_and_its_refusals(decoder):
    prompt = _prompt(decoder)
    packed = SequencePacker("flash_attention_2").pack(prompt)
    assert packed.num_rows == 1 and packed.embeds.size(1) == int(prompt.mask.sum())
    with pytest.raises(ValueError, match="packed into one row"):
        SequencePacker("flash_attention_2", max_length=128)
    with pytest.raises(ValueError, match="does not detect packed sequences"):
        SequencePacker("paged|eager")
    with pytest.raises(ValueError, match="must be >= 1"):
        SequencePacker("sdpa", max_length=0)


def test_left_padded_prompts_are_refused(decoder):
    layout = PromptLayout(decoder.tokenizer)
    tokens = {"audio": (torch.randn(2, 6, decoder.hidden_size), torch.tensor([6, 3]))}
    prompt = layout.build(decoder.embed, "asr", tokens, padding_side="left")
    with pytest.raises(ValueError, match="right-padded"):
        SequencePacker("sdpa").pack(prompt)


@pytest.mark.parametrize("max_length", [None, 1, 10_000])
def test_packed_pass_equals_padded_pass(decoder, max_length):
    """Logits, hidden states and the gradient into the prompt's embeddings; max_length 1: a row
    per sequence; 10_000: the whole pass in one row."""
    outs = {}
    for name, packer in (("padded", None), ("packed", SequencePacker(decoder.attn_implementation, max_length))):
        prompt = _prompt(decoder)
        prompt.embeds = prompt.embeds.detach().requires_grad_(True)
        out = decoder(prompt, output_hidden_states=True, packer=packer)
        out.logits.logsumexp(-1).sum().backward()
        real = prompt.mask.bool()
        outs[name] = (out.logits, [h[real] for h in out.hidden_states], prompt.embeds.grad)
    (lp, hp, gp), (lk, hk, gk) = outs["padded"], outs["packed"]
    torch.testing.assert_close(lk, lp, rtol=RTOL, atol=ATOL)
    for a, b in zip(hk, hp):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(gk, gp, rtol=RTOL, atol=ATOL)


def test_probe_passes_in_bfloat16(tiny_llm_dir):
    """The probe's half-precision tolerance holds the packed pass of a bf16 LLM (sdpa)."""
    torch.manual_seed(0)
    decoder = HFCausalLMDecoder(model_dir=tiny_llm_dir, attn_implementation="sdpa", dtype="bfloat16")
    prompt = _prompt(decoder)
    decoder(prompt, packer=SequencePacker("sdpa"))
    assert decoder._packing_verified


def test_probe_with_a_single_sequence(decoder):
    """A pass of one sequence is probed with two copies of it in one row."""
    fresh = HFCausalLMDecoder(model_dir=decoder.model_dir, attn_implementation=decoder.attn_implementation)
    prompt = _prompt(fresh, tasks=(("asr", "audio", 7),), batch=1)
    fresh(prompt, packer=SequencePacker(fresh.attn_implementation))
    assert fresh._packing_verified
