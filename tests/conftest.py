"""Shared fixtures: tiny random Hugging Face models written to local folders (no hub access)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TINY_CORPUS = [
    "bin blue at f two now",
    "lay green by a nine again",
    "place red in z seven please",
    "set white with q one soon",
    "the capital of france is paris",
    "transcribe speech to text.",
    "transcribe video to text.",
    "transcribe speech and video to text.",
]


def build_tiny_tokenizer(out_dir: str):
    """A small byte-level BPE tokenizer with Llama-style bos/eos, trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TINY_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out_dir)
    return fast


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """A 2-layer random Llama (hidden 32) with its tokenizer, saved as an ordinary HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = build_tiny_tokenizer(str(out))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """A 2-layer random Whisper (d_model 32, 80 mel bins) with Whisper's feature-extractor config."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny_whisper")
    config = WhisperConfig(
        vocab_size=64,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(str(out))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(out))
    return str(out)
