"""The sink / massive-activation measurements on hand-built tensors, and the analysis tool on a tiny
model whose attention is forced onto one intermediate position and whose residual stream carries a
planted massive feature."""
import json

import pytest
import torch
import yaml

from espnet_omni_avsr.analysis.sinks import SinkRule, SinkStats, analyze_row, massive_entries, received_attention
from espnet_omni_avsr.decoders.prompt import TokenType as T
from tests.bin.test_train_and_decode import _write_corpus
from tests.models.conftest import tiny_config

TYPES = [T.BOS, T.MODALITY_OPEN, T.VIDEO, T.VIDEO, T.VIDEO, T.MODALITY_CLOSE, T.INSTRUCTION, T.TRANSCRIPT,
         T.TRANSCRIPT, T.EOS]


def causal_uniform(n: int, heads: int = 2) -> torch.Tensor:
    a = torch.tril(torch.ones(n, n))
    return (a / a.sum(1, keepdim=True)).expand(heads, n, n).clone()


def forced(n: int, position: int, share: float, heads: int = 2) -> torch.Tensor:
    """Every query q >= position puts `share` of its attention on `position`, the rest uniformly."""
    a = causal_uniform(n, heads)
    for q in range(position, n):
        a[:, q] *= (1 - share)
        a[:, q, position] += share
    return a


def test_uniform_attention_scores_one_everywhere():
    out = received_attention(causal_uniform(7), 7)
    assert torch.allclose(out["score"], torch.ones(7))
    # raw received attention favours early keys: key 0 gets the mean of 1/(q+1) over every query
    assert torch.isclose(out["received"][0], torch.tensor(sum(1 / (q + 1) for q in range(7)) / 7))


def test_a_forced_position_is_an_intermediate_sink_of_its_token_type():
    n, layers = len(TYPES), 3
    attn = [forced(n, 3, 0.8)[None] for _ in range(layers)]
    hidden = [torch.randn(1, n, 8) for _ in range(layers + 1)]
    row = analyze_row(attn, hidden, torch.tensor([TYPES]), 0, SinkRule())
    assert row.sinks == [[3]] * layers and row.anchor == 0
    assert row.bos_sink == [False] * layers  # BOS got only the uniform share here
    stats = SinkStats(layers)
    stats.add(row)
    s = stats.summary()
    assert s["intermediate_sinks_by_type"] == {"VIDEO": layers} and s["layers_with_intermediate_sinks"] == [1, 2, 3]
    # below the multiple: not a sink
    weak = analyze_row([forced(n, 3, 0.2)[None]] * layers, hidden, torch.tensor([TYPES]), 0, SinkRule())
    assert weak.sinks == [[]] * layers


def test_transcript_and_padding_positions_are_never_intermediate_sinks():
    types = TYPES + [T.PAD, T.PAD]
    n = len(types)
    attn = [forced(n, 8, 0.9)[None]]  # a transcript position gets the attention
    hidden = [torch.randn(1, n, 8) for _ in range(2)]
    row = analyze_row(attn, hidden, torch.tensor([types]), 0, SinkRule())
    assert row.sinks == [[]] and len(row.types) == len(TYPES)
    with pytest.raises(ValueError, match="right-padded"):
        analyze_row(attn, hidden, torch.tensor([[T.PAD] + types[:-1]]), 0, SinkRule())


def test_massive_entries_need_both_thresholds():
    h = torch.randn(6, 32) * 0.1
    h[2, 5] = 300.0
    h[4, 7] = 50.0  # 500x the median but below the absolute threshold
    pos, values = massive_entries(h, 6, SinkRule())
    assert pos.tolist() == [[2, 5]] and values.tolist() == [300.0]
    big = torch.randn(6, 32) * 10  # median near 7: 300 is not 1000x it
    big[2, 5] = 300.0
    assert massive_entries(big, 6, SinkRule())[0].numel() == 0


def test_cosine_to_bos_is_split_by_the_next_layers_sinks():
    n, layers = len(TYPES), 3
    attn = [causal_uniform(n)[None], forced(n, 3, 0.8)[None], causal_uniform(n)[None]]
    hidden = [torch.randn(1, n, 8) for _ in range(layers + 1)]
    hidden[1][0, 3] = hidden[1][0, 0]  # hidden state 1 at the sink of layer 2 equals BOS's
    stats = SinkStats(layers)
    stats.add(analyze_row(attn, hidden, torch.tensor([TYPES]), 0, SinkRule()))
    cos = stats.summary()["layers"][0]["cos_to_bos"]
    assert cos["sink"] == pytest.approx(1.0) and cos["other"] < 0.9


# ------------------------------------------------------------------------------ the tool, end to end
PLANTED, FEATURE = 2, 3  # VSR prompt: [BOS] <video> v0 ...: position 2 is the first video token


def _tiny_qwen2(out_dir) -> str:
    """A 2-layer random Qwen2 whose tokenizer has no BOS (as Qwen2.5's)."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from espnet_omni_avsr.pretrained.tiny_random import build_tiny_tokenizer

    build_tiny_tokenizer(str(out_dir))
    tok = PreTrainedTokenizerFast.from_pretrained(str(out_dir))
    tok.bos_token = None
    tok.save_pretrained(str(out_dir))
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(out_dir))
    return str(out_dir)


def _exp_dir(tmp_path, llm_dir, whisper_dir):
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    config = tiny_config(llm_dir, whisper_dir)
    config["model_conf"] = dict(tasks=["vsr", "avsr"])
    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    model = AVSRLLMTask.build_model(args)
    exp = tmp_path / "exp"
    exp.mkdir()
    torch.save(model.state_dict(), exp / "model.pth")
    (exp / "config.yaml").write_text(yaml.safe_dump(vars(args), sort_keys=False))
    return exp


def _plant(monkeypatch, modeling=None, position=PLANTED):
    """Force every layer's attention onto `position` and add a massive feature to layer 1's output."""
    import transformers.models.llama.modeling_llama as llama

    modeling = modeling or llama
    eager = modeling.eager_attention_forward

    def forced_attention(module, query, key, value, attention_mask, *args, **kwargs):
        bias = torch.zeros_like(attention_mask)
        bias[..., position] = 30.0
        return eager(module, query, key, value, attention_mask + bias * (attention_mask > -1), *args, **kwargs)

    monkeypatch.setattr(modeling, "eager_attention_forward", forced_attention)

    def massive(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden[:, position, FEATURE] += 5000.0
        return output

    return massive


def _hook_first_layer(monkeypatch, hook):
    from espnet_omni_avsr.recognizer import AVSRRecognizer

    real_init = AVSRRecognizer.__init__

    def init_and_hook(self, *a, **k):
        real_init(self, *a, **k)
        self.model.decoder.base_model.model.layers[0].register_forward_hook(hook)

    monkeypatch.setattr(AVSRRecognizer, "__init__", init_and_hook)


def _analyze(exp, data, out, **extra):
    from espnet_omni_avsr.bin.analyze_sinks import analyze, get_parser

    argv = ["--model", str(exp), "--data", str(data), "--output_dir", str(out), "--num_utts", "3",
            "--batch_size", "2", "--task", "vsr"]
    for k, v in extra.items():
        argv += [f"--{k}", str(v)]
    return analyze(get_parser().parse_args(argv))


def test_the_tool_finds_a_planted_sink_and_massive_activation(tmp_path, monkeypatch, tiny_llm_dir, tiny_whisper_dir):
    exp = _exp_dir(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    data = tmp_path / "dump"
    _write_corpus(str(data), 3)

    (clean,) = _analyze(exp, data, tmp_path / "clean")
    at_planted = sum(d["intermediate_sinks_by_type"].get("VIDEO", 0) for d in clean["layers"])

    _hook_first_layer(monkeypatch, _plant(monkeypatch))
    out = tmp_path / "planted"
    (s,) = _analyze(exp, data, out)
    layers = s["layers"]
    assert s["rows"] == 3 and s["label"] == "vsr_v2"
    # every layer, every utterance: the planted position is an intermediate sink, on a video token
    assert all(d["intermediate_sinks_by_type"].get("VIDEO", 0) == 3 for d in layers)
    assert at_planted < 3 * len(layers)
    # the planted feature is massive from layer 1 on, at the planted (video) position
    for d in layers[:-1]:
        top = d["massive_activations"][0]
        assert top["feature"] == FEATURE and top["token_types"] == {"VIDEO": 3}
    assert s["massive_features"][0] == FEATURE
    for name in ("attention_map.png", "activations.png", "cos_to_bos.png", "sink_counts.png", "summary.json"):
        assert (out / "vsr_v2" / name).stat().st_size > 1000, name
    assert json.loads((out / "summary.json").read_text())["conditions"][0]["label"] == "vsr_v2"
    md = (out / "summary.md").read_text()
    assert "| vsr_v2 |" in md and f"VIDEO {3 * len(layers)}" in md


def test_the_tool_switches_sdpa_to_eager_and_refuses_untrained_rates(tmp_path, tiny_llm_dir, tiny_whisper_dir):
    exp = _exp_dir(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    config = yaml.safe_load((exp / "config.yaml").read_text())
    assert config["decoder_conf"].get("attn_implementation", "sdpa") == "sdpa"
    data = tmp_path / "dump"
    _write_corpus(str(data), 2)
    (s,) = _analyze(exp, data, tmp_path / "a", rates="v2")
    assert s["rows"] == 2 and len(s["layers"]) == 2
    with pytest.raises(SystemExit, match="video rate 5 is not one this branch was trained at"):
        _analyze(exp, data, tmp_path / "b", rates="v5")


def test_without_bos_the_first_prefix_position_is_the_anchor(tmp_path, monkeypatch, tiny_whisper_dir):
    """Qwen2 (no BOS): the VSR prompt starts at <video>, the anchor; the first video token, forced,
    is an intermediate sink."""
    import transformers.models.qwen2.modeling_qwen2 as qwen2

    exp = _exp_dir(tmp_path, _tiny_qwen2(tmp_path / "qwen2"), tiny_whisper_dir)
    data = tmp_path / "dump"
    _write_corpus(str(data), 2)
    _hook_first_layer(monkeypatch, _plant(monkeypatch, qwen2, position=1))
    (s,) = _analyze(exp, data, tmp_path / "out")
    assert all(d["intermediate_sinks_by_type"].get("VIDEO", 0) == 2 for d in s["layers"])
    assert "BOS" not in s["intermediate_sinks_by_type"] and "MODALITY_OPEN" not in s["intermediate_sinks_by_type"]
    assert s["massive_features"][0] == FEATURE


def test_rates_are_condition_labels():
    from espnet_omni_avsr.bin.analyze_sinks import parse_rates

    assert parse_rates(["a16v5", "avsr_a4v2", "v2"]) == [{"audio": 16, "video": 5}, {"audio": 4, "video": 2},
                                                        {"video": 2}]
    with pytest.raises(SystemExit, match="expected conditions such as a16v5"):
        parse_rates(["audio=4"])
