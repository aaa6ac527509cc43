import pytest
import torch

from espnet_omni_avsr.decoders.llm_tokenizer import load_llm_tokenizer
from espnet_omni_avsr.decoders.prompt import IGNORE_ID, Prompt, PromptLayout, TokenType


@pytest.fixture(scope="module")
def layout(tiny_llm_dir):
    return PromptLayout(load_llm_tokenizer(tiny_llm_dir))


def test_exact_token_layout_avsr(layout):
    tok = layout.tokenizer
    ids, labels, types = layout.token_ids("avsr", {"audio": 2, "video": 3}, text=[7, 8])
    a0, a1, v0, v1 = tok.convert_tokens_to_ids(["<audio>", "</audio>", "<video>", "</video>"])
    instr = tok("Transcribe speech and video to text.", add_special_tokens=False)["input_ids"]
    expected = [tok.bos_token_id, a0, -1, -1, a1, v0, -2, -2, -2, v1] + instr + [7, 8, tok.eos_token_id]
    assert ids == expected
    assert labels == [IGNORE_ID] * (len(expected) - 3) + [7, 8, tok.eos_token_id]
    T = TokenType
    assert types == [T.BOS, T.MODALITY_OPEN, T.AUDIO, T.AUDIO, T.MODALITY_CLOSE, T.MODALITY_OPEN] + [T.VIDEO] * 3 + [
        T.MODALITY_CLOSE] + [T.INSTRUCTION] * len(instr) + [T.TRANSCRIPT, T.TRANSCRIPT, T.EOS]


@pytest.mark.parametrize("task,present,absent", [("asr", "<audio>", "<video>"), ("vsr", "<video>", "<audio>")])
def test_single_modality_prompts(layout, task, present, absent):
    tok = layout.tokenizer
    ids, _, _ = layout.token_ids(task, {"audio": 4, "video": 4}, text=[5])
    assert tok.convert_tokens_to_ids(present) in ids
    assert tok.convert_tokens_to_ids(absent) not in ids
    assert ids[-1] == tok.eos_token_id


def test_unknown_task(layout):
    with pytest.raises(ValueError, match="unknown task"):
        layout.token_ids("lipreading", {"video": 1})


def _embed(ids):  # a deterministic stand-in for the LLM's embedding
    return torch.stack([ids.float(), -ids.float()], dim=-1)


@pytest.mark.parametrize("side", ["right", "left"])
def test_build_places_modality_tokens_and_text(layout, side):
    audio = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2) + 1000
    alen = torch.tensor([3, 1])
    video = torch.arange(2 * 2 * 2, dtype=torch.float).view(2, 2, 2) + 2000
    vlen = torch.tensor([1, 2])
    text = torch.tensor([[5, 6, 9], [4, -1, -1]])
    tlen = torch.tensor([3, 1])
    prompt = layout.build(
        _embed, "avsr", {"audio": (audio, alen), "video": (video, vlen)}, text, tlen, padding_side=side,
        conditions={"audio": 4, "video": 2},
    )
    embeds, mask, labels = prompt.embeds, prompt.mask, prompt.labels
    assert prompt.tasks == ["avsr", "avsr"] and prompt.conditions == [{"audio": "4", "video": "2"}] * 2
    for b in range(2):
        ids, lab, types = layout.token_ids("avsr", {"audio": alen[b], "video": vlen[b]}, text[b, : tlen[b]].tolist())
        n = len(ids)
        assert int(mask[b].sum()) == n
        sl = slice(0, n) if side == "right" else slice(embeds.size(1) - n, embeds.size(1))
        row, lab_row = embeds[b, sl], labels[b, sl]
        assert lab_row.tolist() == lab
        a_pos = [i for i, x in enumerate(ids) if x == -1]
        v_pos = [i for i, x in enumerate(ids) if x == -2]
        assert torch.equal(row[a_pos], audio[b, : alen[b]])
        assert torch.equal(row[v_pos], video[b, : vlen[b]])
        other = [i for i, x in enumerate(ids) if x >= 0]
        assert torch.equal(row[other, 0], torch.tensor(ids)[other].float())
        # only transcript + EOS carry a loss
        assert (labels[b] != IGNORE_ID).sum() == tlen[b] + 1
        # the token-type map and each modality token's source index
        assert prompt.token_types[b, sl].tolist() == types
        assert (prompt.token_types[b] == TokenType.PAD).sum() == embeds.size(1) - n
        assert prompt.source_index[b, sl][a_pos].tolist() == list(range(int(alen[b])))
        assert prompt.source_index[b, sl][v_pos].tolist() == list(range(int(vlen[b])))
        assert prompt.modality_mask("audio")[b].sum() == alen[b] and prompt.modality_mask()[b].sum() == alen[b] + vlen[b]


def test_decoding_prompt_has_no_eos(layout):
    audio = torch.zeros(1, 2, 2)
    prompt = layout.build(_embed, "asr", {"audio": (audio, torch.tensor([2]))}, padding_side="left")
    assert (prompt.labels == IGNORE_ID).all()
    assert prompt.embeds[0, -1, 0] != layout.eos
    assert TokenType.EOS not in prompt.token_types[0].tolist()


def test_cat_pads_shorter_prompts_at_the_end(layout):
    a = layout.build(_embed, "asr", {"audio": (torch.zeros(1, 2, 2), torch.tensor([2]))}, torch.tensor([[5]]),
                     torch.tensor([1]))
    v = layout.build(_embed, "vsr", {"video": (torch.zeros(1, 5, 2), torch.tensor([5]))}, torch.tensor([[5]]),
                     torch.tensor([1]))
    both = Prompt.cat([a, v])
    assert both.tasks == ["asr", "vsr"] and both.embeds.size(1) == max(a.embeds.size(1), v.embeds.size(1))
    n = a.embeds.size(1)
    assert (both.token_types[0, n:] == TokenType.PAD).all() and (both.labels[0, n:] == IGNORE_ID).all()
    assert torch.equal(both.next_token_targets()[1], torch.cat([v.labels[0, 1:], torch.tensor([IGNORE_ID])]))
