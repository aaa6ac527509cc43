"""Builds a tiny AVSR model through the task's own build_model (the registry path)."""

import pytest


def tiny_config(llm_dir: str, whisper_dir: str, task: str = "avsr") -> dict:
    """A config dict as a YAML would give it: tiny random Whisper, light video, tiny Llama."""
    return dict(
        model="avsr_llm",
        model_conf=dict(tasks=[task]),
        audio_frontend="whisper_logmel",
        audio_frontend_conf=dict(n_mels=80),
        audio_encoder="whisper",
        audio_encoder_conf=dict(model_dir=whisper_dir),
        audio_compressor="avg_pool",
        audio_compressor_conf=dict(rate=4),
        audio_projector="mlp",
        audio_projector_conf=dict(hidden_size=16),
        video_frontend="light",
        video_frontend_conf=dict(output_size=16),
        video_encoder="transformer",
        video_encoder_conf=dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=1),
        video_compressor="stack",
        video_compressor_conf=dict(rate=2),
        video_projector="mlp",
        video_projector_conf=dict(hidden_size=16),
        decoder="hf_causal_lm",
        decoder_conf=dict(model_dir=llm_dir),
        llm_adapter="shared_lora",
        llm_adapter_conf=dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        preprocessor="avsr",
        preprocessor_conf=dict(),
        use_preprocessor=True,
    )


def build(config: dict):
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    parser = AVSRLLMTask.get_parser()
    args = parser.parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    return AVSRLLMTask.build_model(args), args


@pytest.fixture
def tiny_avsr(tiny_llm_dir, tiny_whisper_dir):
    import torch

    torch.manual_seed(0)
    model, args = build(tiny_config(tiny_llm_dir, tiny_whisper_dir))
    return model, args
