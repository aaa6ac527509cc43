import pytest
import torch

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.lora_strategy import SharedLoRA


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFCausalLMDecoder(model_dir=str(tmp_path / "nope"))


def test_unknown_lora_target(tiny_llm_dir):
    with pytest.raises(ValueError, match="do not exist"):
        HFCausalLMDecoder(model_dir=tiny_llm_dir, lora=SharedLoRA(target_modules=["qkv"]))


def test_trainable_parameters_are_lora_and_delimiters(tiny_llm_dir):
    dec = HFCausalLMDecoder(model_dir=tiny_llm_dir, lora=SharedLoRA(r=4, target_modules=["q_proj", "v_proj"]))
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
