"""Tiny random models in ordinary Hugging Face folders, for debug recipes and tests.

They have the real architectures (Llama, Whisper) and a real byte-level BPE tokenizer, so every
code path that a pretrained folder takes is exercised, in seconds and a few MB. Their outputs are
meaningless.
"""
from pathlib import Path
from typing import Iterable, Optional

import torch

# Enough text for a small BPE vocabulary that covers the GRID grammar and the instructions.
DEFAULT_TEXT = [
    "bin lay place set blue green red white at by in with",
    "a b c d e f g h i j k l m n o p q r s t u v x y z",
    "zero one two three four five six seven eight nine again now please soon",
    "transcribe speech to text. transcribe video to text. transcribe speech and video to text.",
    "the capital of france is paris",
]


def build_tiny_tokenizer(out_dir: str, text: Optional[Iterable[str]] = None, vocab_size: int = 300):
    """A byte-level BPE tokenizer with Llama-style `<s>` / `</s>`, trained on `text`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(text or DEFAULT_TEXT), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(
    out_dir: str,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: Optional[int] = None,
    tokenizer_dir: Optional[str] = None,
    vocab_size: Optional[int] = None,
) -> dict:
    """A random Llama saved with save_pretrained: the tiny BPE tokenizer, or the tokenizer of the
    model folder `tokenizer_dir` (e.g. SmolLM2's 49,152 tokens, for benchmarks at real vocabulary size).
    The FFN width defaults to twice the hidden size; `vocab_size` (at least the tokenizer's) sizes the
    embedding table and LM head like a larger model's (e.g. Llama 3's 128,256) for memory benchmarks."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer_dir is None:
        tokenizer = build_tiny_tokenizer(out_dir)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        tokenizer.save_pretrained(out_dir)
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512 if tokenizer_dir is None else 2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return {"architecture": "LlamaForCausalLM", "hidden_size": hidden_size, "vocab_size": len(tokenizer)}


def build_tiny_whisper(out_dir: str, d_model: int = 32, num_layers: int = 2, seed: int = 0,
                       num_heads: int = 4, ffn_dim: Optional[int] = None) -> dict:
    """A random Whisper (80 mel bins) with Whisper's feature-extractor config; FFN 2 x d_model by default."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=num_layers,
        encoder_attention_heads=num_heads,
        encoder_ffn_dim=ffn_dim or 2 * d_model,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=2 * d_model,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(seed)
    WhisperForConditionalGeneration(config).save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out_dir)
    return {"architecture": "WhisperForConditionalGeneration", "d_model": d_model}


def check_loads(out_dir: Path) -> dict:
    """A tiny folder counts as good when transformers loads it and a forward pass is finite."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(out_dir, local_files_only=True)
    model = AutoModel.from_pretrained(out_dir, local_files_only=True)
    with torch.no_grad():
        if config.model_type == "whisper":
            out = model.encoder(torch.zeros(1, config.num_mel_bins, 3000)).last_hidden_state
        else:
            out = model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
    return {"passed": bool(torch.isfinite(out).all()), "note": "random weights: loads and runs, nothing more"}
