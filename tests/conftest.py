"""Shared fixtures: tiny random Hugging Face models written to local folders (no hub access)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """A 2-layer random Llama (hidden 32) with a small BPE tokenizer, saved as an ordinary HF folder."""
    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_llama

    out = tmp_path_factory.mktemp("tiny_llama")
    build_tiny_llama(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """A 2-layer random Whisper (d_model 32, 80 mel bins) with Whisper's feature-extractor config."""
    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_whisper

    out = tmp_path_factory.mktemp("tiny_whisper")
    build_tiny_whisper(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_avhubert_checkpoint(tmp_path_factory):
    """A random 2-layer, 32-dim AV-HuBERT written in the layout of the official checkpoints."""
    from espnet_omni_avsr.encoders.avhubert_checkpoint import official_checkpoint
    from espnet_omni_avsr.encoders.avhubert_modules import AVHubertArch, AVHubertModel

    torch.manual_seed(0)
    arch = AVHubertArch(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                        conv_pos=8, conv_pos_groups=4)
    path = tmp_path_factory.mktemp("tiny_avhubert") / "tiny_avhubert.pt"
    torch.save(official_checkpoint(AVHubertModel(arch).state_dict(), arch), path)
    return str(path)
