"""The LLM's own tokenizer, with the modality delimiters and a pad token added."""
import os
from typing import List

from espnet_omni_avsr.names import MODALITIES

# modality -> (open, close) delimiter tokens, in MODALITIES order
MODALITY_TOKENS = {m.name: m.delimiters for m in MODALITIES.values()}
PAD_TOKEN = "<pad>"


def special_tokens() -> List[str]:
    """The added tokens, in a fixed order (their ids follow the base vocabulary in this order)."""
    return [t for pair in MODALITY_TOKENS.values() for t in pair]


def load_llm_tokenizer(model_dir: str):
    """Load the tokenizer of a local LLM folder and add `<audio> </audio> <video> </video>` and a pad.

    Nothing is fetched from a hub and no remote code runs. A tokenizer that already has a pad
    token keeps it; otherwise `<pad>` is added.
    """
    from transformers import AutoTokenizer

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(
            f"LLM folder not found: {model_dir} (expected a local Hugging Face model folder; "
            "run `python -m espnet_omni_avsr.bin.prepare_pretrained` for the offline SmolLM2)"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens()})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {model_dir} has no EOS token; the LLM could not end a transcript")
    return tokenizer
