"""The early-fused audio-visual model (MMS-LLaMA): one `audiovisual` prompt block, the template
prompt, query counts as LLM tokens, decoding conditions, and clear errors."""
import pytest
import torch

from espnet_omni_avsr.decoders.prompt import TokenType
from espnet_omni_avsr.names import FUSED
from espnet_omni_avsr.utils.rates import conditions

from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch, select

TEMPLATE = "Recognize this speech in English. Input : {audiovisual}"


def fused_config(llm_dir, whisper_dir, tasks=("avsr",), template=TEMPLATE, **extra):
    config = tiny_config(llm_dir, whisper_dir)
    for key in ("audio_compressor", "audio_compressor_conf", "audio_projector", "audio_projector_conf",
                "video_compressor", "video_compressor_conf", "video_projector", "video_projector_conf"):
        config.pop(key)
    config["model_conf"] = dict(tasks=list(tasks), prompt_templates={"avsr": template} if template else {})
    config.update(
        fusion="concat",
        fusion_conf={},
        fused_compressor="qformer",
        fused_compressor_conf=dict(hidden_size=16, num_layers=1, num_heads=2, queries_per_second=3, dropout=0.0),
        fused_projector="linear",
        fused_projector_conf={},
    )
    config.update(extra)
    return config


@pytest.fixture
def fused(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    model, _ = build(fused_config(tiny_llm_dir, tiny_whisper_dir))
    return model


def test_avsr_reads_one_fused_block_in_the_template(fused):
    assert fused.task_streams("avsr") == (FUSED,)
    assert fused.conditions(FUSED) == ["q3"]
    batch = make_batch(fused.decoder.tokenizer)
    tokens = fused.modality_tokens(["avsr"], batch)
    assert list(tokens) == [FUSED]
    prompt = fused.prompt.build(fused.decoder.embed, "avsr", tokens, batch["text"], batch["text_lengths"])
    types = prompt.token_types[0].tolist()
    tok = fused.decoder.tokenizer
    instruction = tok("Recognize this speech in English. Input : ", add_special_tokens=False)["input_ids"]
    n = int(tokens[FUSED][1][0])
    bos = [int(TokenType.BOS)] * (tok.bos_token_id is not None)
    assert types[: len(bos) + len(instruction) + n] == (
        bos + [int(TokenType.INSTRUCTION)] * len(instruction) + [int(TokenType.AUDIOVISUAL)] * n
    )
    assert int(TokenType.MODALITY_OPEN) not in types and int(TokenType.AUDIO) not in types
    ids = prompt.embeds[0, len(bos): len(bos) + len(instruction)]
    assert torch.allclose(ids, fused.decoder.embed(torch.tensor([instruction]))[0])


def test_query_counts_are_the_llm_tokens(fused):
    """1.0 s and 0.6 s of video at 3 queries per second: max(3, floor(s * 3)) = 3 each; 2.4 s: 7."""
    g = torch.Generator().manual_seed(0)
    secs = [1.0, 0.6, 2.4]
    batch = dict(
        speech=torch.randn(3, int(2.4 * 16000), generator=g) * 0.1,
        speech_lengths=torch.tensor([int(s * 16000) for s in secs]),
        video=torch.randint(0, 256, (3, 60, 96, 96), generator=g, dtype=torch.uint8),
        video_lengths=torch.tensor([int(s * 25) for s in secs]),
    )
    fused.eval()
    ids, n_tokens = fused.generate_ids(**batch, max_new_tokens=2)
    assert n_tokens.tolist() == [3, 3, 7]


def test_fused_path_is_padding_invariant(fused):
    fused.eval()
    batch = make_batch(fused.decoder.tokenizer, n=3)
    with torch.no_grad():
        tokens, lengths = fused.modality_tokens(["avsr"], batch)[FUSED]
        for b in range(3):
            alone, n = fused.modality_tokens(["avsr"], select(batch, b))[FUSED]
            assert int(n) == int(lengths[b])
            assert torch.allclose(alone[0, : int(n)], tokens[b, : int(n)], atol=1e-4)


def test_training_step_reaches_fusion_qformer_and_lora(fused):
    batch = make_batch(fused.decoder.tokenizer)
    loss, stats, _ = fused(**batch)
    loss.backward()
    grads = {n for n, p in fused.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for part in ("fused.fusion.audio.conv", "fused.compressors.q3", "fused.projectors.q3", "lora_", "video."):
        assert any(part in n for n in grads), part
    assert not any(n.startswith("audio.encoder") for n in grads)  # Whisper stays frozen


def test_decoding_conditions_of_a_fused_config(tiny_llm_dir, tiny_whisper_dir):
    config = fused_config(tiny_llm_dir, tiny_whisper_dir)
    assert conditions(config) == [dict(task="avsr", label="avsr", rates={})]


def test_default_layout_without_template_has_no_delimiters(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    model, _ = build(fused_config(tiny_llm_dir, tiny_whisper_dir, template=None))
    batch = make_batch(model.decoder.tokenizer)
    prompt = model.prompt.build(model.decoder.embed, "avsr", model.modality_tokens(["avsr"], batch))
    types = prompt.token_types[0].tolist()
    assert int(TokenType.AUDIOVISUAL) in types and int(TokenType.MODALITY_OPEN) not in types
    assert types[-1] == int(TokenType.INSTRUCTION)


def test_clear_errors(tiny_llm_dir, tiny_whisper_dir):
    with pytest.raises(ValueError, match=r"needs each of \{audiovisual\}"):
        build(fused_config(tiny_llm_dir, tiny_whisper_dir, template="Input : {audio} {video}"))
    with pytest.raises(ValueError, match="asr reads audio tokens, but the audio branch has no compressor"):
        build(fused_config(tiny_llm_dir, tiny_whisper_dir, tasks=("avsr", "asr")))
    with pytest.raises(ValueError, match="fused_compressor must be set"):
        build(fused_config(tiny_llm_dir, tiny_whisper_dir, fused_compressor=None))
    with pytest.raises(ValueError, match="none of the tasks"):
        build(fused_config(tiny_llm_dir, tiny_whisper_dir, tasks=("vsr",), template=None,
                           video_compressor="stack", video_compressor_conf=dict(rate=2),
                           video_projector="linear", video_projector_conf={}))


def test_asr_beside_the_fused_avsr_keeps_its_own_block(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    model, _ = build(fused_config(tiny_llm_dir, tiny_whisper_dir, tasks=("avsr", "asr"),
                                  audio_compressor="avg_pool", audio_compressor_conf=dict(rate=4),
                                  audio_projector="linear", audio_projector_conf={}))
    assert model.task_streams("asr") == ("audio",) and model.task_streams("avsr") == (FUSED,)
    batch = make_batch(model.decoder.tokenizer)
    loss, stats, _ = model(**batch)
    assert torch.isfinite(loss).all()
    labels = [c["label"] for c in conditions(fused_config(
        tiny_llm_dir, tiny_whisper_dir, tasks=("avsr", "asr"), audio_compressor="avg_pool",
        audio_compressor_conf=dict(rate=4)))]
    assert labels == ["avsr", "asr_a4"]


def _predictor_file(tmp_path, input_size, rate):
    """A speech-rate predictor that says `rate` for every utterance (its head starts constant)."""
    from espnet_omni_avsr.speech_rate.predictor import SpeechRatePredictor, save_predictor

    torch.manual_seed(0)
    predictor = SpeechRatePredictor(input_size, hidden_size=16, num_layers=1, num_heads=2, ffn_size=32)
    with torch.no_grad():
        predictor.head.bias.fill_(rate)
    path = tmp_path / f"rate{rate}.pth"
    save_predictor(str(path), predictor, mean_wps=2.7)
    return str(path)


def test_speech_rate_sets_query_counts_and_stays_frozen(tiny_llm_dir, tiny_whisper_dir, tmp_path, fused):
    width = fused.audio.feature_size
    torch.manual_seed(0)
    model, _ = build(fused_config(tiny_llm_dir, tiny_whisper_dir,
                                  speech_rate_predictor=_predictor_file(tmp_path, width, 1.5)))
    predictor = model.fused.speech_rate_predictor
    assert predictor is not None and not any(p.requires_grad for p in predictor.parameters())
    g = torch.Generator().manual_seed(0)
    batch = make_batch(model.decoder.tokenizer)
    batch["speech"] = torch.randn(2, 32000, generator=g) * 0.1
    batch["speech_lengths"] = torch.tensor([32000, 16000])
    batch["video"] = torch.randint(0, 256, (2, 50, 96, 96), generator=g, dtype=torch.uint8)
    batch["video_lengths"] = torch.tensor([50, 25])
    model.eval()
    _, lengths = model.modality_tokens(["avsr"], batch)[FUSED]
    assert lengths.tolist() == [9, 4]  # 2 s and 1 s at 3 queries/s x rate 1.5: floor(9.0), floor(4.5)
    _, plain = fused.modality_tokens(["avsr"], batch)[FUSED]
    assert plain.tolist() == [6, 3]  # rate 1 without a predictor

    model.train()
    assert not predictor.training  # frozen inside the model: no dropout in training either
    before = {k: v.clone() for k, v in predictor.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, _, _ = model(**batch)
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in predictor.state_dict().items())


def test_speech_rate_predictor_of_another_encoder_is_refused(tiny_llm_dir, tiny_whisper_dir, tmp_path):
    with pytest.raises(ValueError, match="reads 7-dim audio features"):
        build(fused_config(tiny_llm_dir, tiny_whisper_dir, speech_rate_predictor=_predictor_file(tmp_path, 7, 1.0)))
    with pytest.raises(ValueError, match="takes no speech rate"):
        build(fused_config(tiny_llm_dir, tiny_whisper_dir, fused_compressor="avg_pool",
                           fused_compressor_conf=dict(rate=2), speech_rate_predictor=_predictor_file(tmp_path, 32, 1.0)))


def test_recognizer_decodes_a_fused_model(tiny_llm_dir, tiny_whisper_dir, tmp_path):
    """The inference library on an early-fused model: its one condition, labelled by the bare task."""
    import yaml

    from espnet_omni_avsr.names import condition_label
    from espnet_omni_avsr.recognizer import AVSRRecognizer

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(fused_config(tiny_llm_dir, tiny_whisper_dir)))
    rec = AVSRRecognizer(config, max_new_tokens=3)
    assert rec.conditions_of("avsr") == {FUSED: "q3"}
    assert condition_label("avsr", rec.conditions_of("avsr")) == "avsr"
    batch = {k: v for k, v in make_batch(rec.model.decoder.tokenizer).items() if not k.startswith("text")}
    out = rec.recognize_batch(batch, task="avsr")
    assert out["llm_tokens"] == [3, 3] and len(out["text"]) == 2
