"""Batched generation with a tokenizer that has no pad token (the tiny Llama's, like Llama 3 base):
the pad `<pad>` added to it lies outside the embedding table, so generation pads finished rows with
EOS instead; a batch whose hypotheses end at different lengths decodes, each row as it does alone."""
import pytest
import torch
from transformers import LogitsProcessorList

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import PromptLayout
from espnet_omni_avsr.recognizer import _EndAtBudget


@pytest.fixture(scope="module")
def dec(tiny_llm_dir):
    return HFCausalLMDecoder(model_dir=tiny_llm_dir).eval()


def _prompt(dec, rows):
    layout = PromptLayout(dec.tokenizer)
    g = torch.Generator().manual_seed(0)
    n = max(rows)
    tokens = torch.randn(len(rows), n, dec.hidden_size, generator=g)
    return layout.build(dec.embed, "asr", {"audio": (tokens, torch.tensor(rows))}, padding_side="left")


def _select(prompt, b):
    keep = prompt.mask[b].bool()  # drop row b's left padding: the prompt as built alone
    from espnet_omni_avsr.decoders.prompt import Prompt

    return Prompt(prompt.embeds[b:b + 1, keep], prompt.mask[b:b + 1, keep], prompt.labels[b:b + 1, keep],
                  prompt.token_types[b:b + 1, keep], prompt.source_index[b:b + 1, keep], prompt.tasks[b:b + 1],
                  prompt.conditions[b:b + 1])


def test_the_added_pad_is_outside_the_vocabulary_and_generation_pads_with_eos(dec):
    vocab = dec.base_model.get_input_embeddings().weight.size(0)
    assert dec.tokenizer.pad_token == "<pad>" and dec.pad_id >= vocab  # the premise: no pad of its own
    assert dec.generation_pad_id == dec.eos_id < vocab


@pytest.mark.parametrize("num_beams", [1, 3])
def test_hypotheses_ending_at_different_lengths(dec, num_beams):
    """Rows end at steps 2, 5 and 3 (EOS forced there); the finished rows are fed the pad id back:
    before the fix an id outside the embedding table (IndexError)."""
    budgets = [2, 5, 3]
    prompt = _prompt(dec, [4, 2, 3])
    out = dec.generate(prompt, max_new_tokens=7, num_beams=num_beams,
                       logits_processor=LogitsProcessorList([_EndAtBudget(budgets, dec.eos_id, num_beams)]))
    vocab = dec.base_model.get_input_embeddings().weight.size(0)
    assert int(out.max()) < vocab
    for b, n in enumerate(budgets):
        row = out[b].tolist()
        assert row[n] == dec.eos_id and all(t == dec.generation_pad_id for t in row[n:]), row
        assert dec.eos_id not in row[:n]
        alone = dec.generate(_select(prompt, b), max_new_tokens=7, num_beams=num_beams,
                             logits_processor=LogitsProcessorList([_EndAtBudget([n], dec.eos_id, num_beams)]))
        assert alone[0].tolist()[: n + 1] == row[: n + 1]
    texts = dec.tokenizer.batch_decode(out, skip_special_tokens=True)
    assert all(len(dec.tokenizer(t, add_special_tokens=False)["input_ids"]) <= n for t, n in zip(texts, budgets))
