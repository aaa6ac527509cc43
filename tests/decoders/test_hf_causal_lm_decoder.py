import pytest
import torch

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.adapters.lora import SharedLoRA
from espnet_omni_avsr.decoders.prompt import PromptLayout


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFCausalLMDecoder(model_dir=str(tmp_path / "nope"))


def test_unknown_lora_target(tiny_llm_dir):
    with pytest.raises(ValueError, match="do not exist"):
        HFCausalLMDecoder(model_dir=tiny_llm_dir, adapter=SharedLoRA(target_modules=["qkv"]))


def test_trainable_parameters_are_lora_and_delimiters(tiny_llm_dir):
    dec = HFCausalLMDecoder(model_dir=tiny_llm_dir, adapter=SharedLoRA(r=4, target_modules=["q_proj", "v_proj"]))
    names = [n for n, p in dec.named_parameters() if p.requires_grad]
    assert "special_embeddings" in names
    lora = [n for n in names if n != "special_embeddings"]
    assert lora and all("lora_" in n for n in lora)
    # 2 layers x (q, v) x (A, B)
    assert len(lora) == 8


def test_delimiter_embeddings(tiny_llm_dir):
    dec = HFCausalLMDecoder(model_dir=tiny_llm_dir)
    ids = torch.cat([dec.special_ids, torch.tensor([dec.pad_id, 5])])[None]
    emb = dec.embed(ids)
    assert torch.allclose(emb[0, :4], dec.special_embeddings)
    assert torch.isfinite(emb[0, 4]).all()  # an added pad id (outside the vocabulary) still embeds
    assert torch.allclose(emb[0, 5], dec.base_model.get_input_embeddings().weight[5])


def _prompt(dec, n_audio=3):
    layout = PromptLayout(dec.tokenizer)
    g = torch.Generator().manual_seed(0)
    tokens = {"audio": (torch.randn(2, n_audio, dec.hidden_size, generator=g), torch.tensor([n_audio, 2]))}
    text = torch.tensor([[5, 6, 7], [8, 9, -1]])
    return layout.build(dec.embed, "asr", tokens, text, torch.tensor([3, 2]), conditions={"audio": 4})


def test_llm_output_logits_at_scored_positions_only(tiny_llm_dir):
    dec = HFCausalLMDecoder(model_dir=tiny_llm_dir, attn_implementation="eager")
    prompt = _prompt(dec)
    out = dec(prompt)
    targets = prompt.next_token_targets()
    assert out.scored.sum() == 3 + 1 + 2 + 1  # transcript + EOS of each row
    full = dec.llm(inputs_embeds=prompt.embeds, attention_mask=prompt.mask).logits
    assert torch.allclose(out.logits, full[out.scored], atol=1e-5)
    assert torch.equal(targets[out.scored][:4], torch.tensor([5, 6, 7, dec.eos_id]))
    assert out.hidden_states is None and out.attentions is None and out.aux_losses == {}


def test_llm_output_per_layer_hidden_states_and_attentions(tiny_llm_dir):
    dec = HFCausalLMDecoder(model_dir=tiny_llm_dir, attn_implementation="eager")
    prompt = _prompt(dec)
    out = dec(prompt, output_hidden_states=True, output_attentions=True)
    n_layers = dec.base_model.config.num_hidden_layers
    assert len(out.hidden_states) == n_layers + 1 and len(out.attentions) == n_layers
    assert torch.allclose(out.hidden_states[0], prompt.embeds)
    assert torch.allclose(out.hidden_states[-1], out.last_hidden_state)
    b, n = prompt.mask.shape
    assert out.attentions[0].shape[0] == b and out.attentions[0].shape[-2:] == (n, n)
    rows = out.attentions[0].sum(-1).transpose(1, 2)[prompt.mask.bool()]  # (valid queries, heads)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_attention_weights_need_eager_attention(tiny_llm_dir):
    dec = HFCausalLMDecoder(model_dir=tiny_llm_dir, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="attn_implementation: eager"):
        dec(_prompt(dec), output_attentions=True)
