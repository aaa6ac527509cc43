"""Every registered part goes forward and backward through the task's own build_model."""
import pytest
import torch

from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch

VIDEO_ENCODERS = {
    "transformer": dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=1),
    "conformer": dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=1, cnn_module_kernel=3),
}


@pytest.mark.parametrize(
    "frontend,encoder,compressor,projector",
    [("light", "transformer", "avg_pool", "mlp"), ("resnet18", "conformer", "stack", "linear"),
     ("light", None, "stack", "mlp")],
)
def test_registered_parts_forward_backward(tiny_llm_dir, tiny_whisper_dir, frontend, encoder, compressor, projector):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config.update(video_frontend=frontend, video_frontend_conf={} if frontend == "resnet18" else dict(output_size=16),
                  video_encoder=encoder, video_encoder_conf=VIDEO_ENCODERS.get(encoder, {}),
                  video_compressor=compressor, audio_compressor=compressor,
                  video_projector=projector, audio_projector=projector,
                  audio_projector_conf={} if projector == "linear" else dict(hidden_size=16),
                  video_projector_conf={} if projector == "linear" else dict(hidden_size=16))
    model, _ = build(config)
    batch = make_batch(model.decoder.tokenizer)
    batch["video"] = batch["video"][:, :6]  # keep the ResNet cheap
    batch["video_lengths"] = torch.tensor([6, 4])
    batch["speech"], batch["speech_lengths"] = batch["speech"][:, :4000], torch.tensor([4000, 3000])
    loss, _, _ = model(**batch)
    loss.backward()
    grads = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    assert any(n.startswith("video.frontend") for n in grads)
    assert any(n.startswith("audio.projector") for n in grads) and any(n.startswith("video.projector") for n in grads)
    if encoder:
        assert any(n.startswith("video.encoder") for n in grads)


def test_frozen_video_encoder_by_flag(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["video_encoder_conf"] = dict(VIDEO_ENCODERS["transformer"], frozen=True)
    model, _ = build(config)
    assert not any(p.requires_grad for p in model.video.encoder.parameters())


def test_unknown_component_is_a_clear_error(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config["audio_encoder"] = "whisperx"
    with pytest.raises(ValueError, match="whisperx"):
        build(config)


def test_missing_llm_folder(tiny_whisper_dir, tmp_path):
    config = tiny_config(str(tmp_path / "no_such_llm"), tiny_whisper_dir)
    with pytest.raises(FileNotFoundError, match="no_such_llm"):
        build(config)


def _avhubert_tiny_config(tiny_llm_dir):
    import os

    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "conf/debug/vsr_avhubert_tiny.yaml")) as f:
        config = yaml.safe_load(f)
    config["decoder_conf"]["model_dir"] = tiny_llm_dir
    return config


def _vsr_batch(model):
    batch = make_batch(model.decoder.tokenizer)
    batch["video"], batch["video_lengths"] = batch["video"][:, :10], torch.tensor([10, 7])
    return {k: v for k, v in batch.items() if not k.startswith("speech")}


def test_avhubert_video_encoder_from_the_tiny_config(tiny_llm_dir):
    torch.manual_seed(0)
    model, _ = build(_avhubert_tiny_config(tiny_llm_dir))
    assert type(model.video.encoder).__name__ == "AVHubertEncoder"
    model.train()
    assert not model.video.encoder.model.training  # frozen: eval mode, also with trainable LoRA
    loss, stats, _ = model(**_vsr_batch(model))
    assert torch.isfinite(loss)
    loss.backward()
    enc_grads = [n for n, p in model.video.encoder.named_parameters() if p.grad is not None]
    assert enc_grads and all("lora_" in n for n in enc_grads)
    # no checkpoint file: the random encoder weights are the model's own and are saved
    assert "video.encoder.model.encoder.layers.0.fc1.weight" in model.state_dict()


def test_avhubert_checkpoint_weights_stay_out_of_model_checkpoints(tiny_llm_dir, tiny_avhubert_checkpoint):
    config = _avhubert_tiny_config(tiny_llm_dir)
    config["video_encoder_conf"] = dict(checkpoint=tiny_avhubert_checkpoint, lora_r=2)
    model, _ = build(config)
    keys = set(model.state_dict())
    assert not any(k.startswith("video.encoder.") and "lora_" not in k and "num_batches" not in k
                   and "running_" not in k for k in keys)
    assert any("video.encoder." in k and "lora_A" in k for k in keys)
    loss, _, _ = model.eval()(**_vsr_batch(model))
    assert torch.isfinite(loss)


def test_a_config_of_the_earlier_layout_names_every_renamed_key(tiny_llm_dir, tiny_whisper_dir):
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config.pop("llm_adapter")
    config["lora"] = "shared"
    config["model_conf"] = dict(tasks=["avsr"], ctc_weights=dict(video=0.3), llm_weight=0)
    with pytest.raises(ValueError, match=r"lora -> llm_adapter .*model_conf.ctc_weights -> losses: .*model_conf.llm_weight"):
        build(config)
