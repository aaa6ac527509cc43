"""expert_usage on a tiny trained-looking MoME model: a heatmap per condition and the numbers."""
import argparse
import json

import pytest
import torch
import yaml

from espnet_omni_avsr.bin import expert_usage
from tests.bin.test_train_and_decode import _write_corpus
from tests.models.test_matryoshka import _config as matryoshka_config


def _exp_dir(tmp_path, llm, whisper, adapter="mome"):
    """config.yaml + model.pth of a matryoshka model (audio rates 2, 4; video 1, 2), every trainable
    weight moved from its start, as training writes them."""
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    config = matryoshka_config(llm, whisper, rate_sampling="all_pairs")
    config["model_conf"]["tasks"] = ["avsr", "asr", "vsr"]
    config["model_conf"]["task_weights"] = [1.0, 1.0, 1.5]
    config["llm_adapter"] = adapter
    if adapter == "mome":
        config["llm_adapter_conf"] = dict(num_experts=4, top_k=2, num_shared_experts=1, bottleneck=3)
    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in config.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    model = AVSRLLMTask.build_model(argparse.Namespace(**vars(args)))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    exp = tmp_path / f"exp_{adapter}"
    exp.mkdir()
    torch.save(model.state_dict(), exp / "model.pth")
    (exp / "config.yaml").write_text(yaml.safe_dump(vars(args), sort_keys=False))
    return exp


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("usage_corpus")
    _write_corpus(str(root), 3)  # 0.6, 0.8, 1.0 s
    return root


def test_expert_usage_writes_heatmaps_and_numbers(tmp_path, tiny_llm_dir, tiny_whisper_dir, corpus):
    exp = _exp_dir(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    out = tmp_path / "usage"
    assert expert_usage.main(["--model", str(exp), "--data", str(corpus), "--task", "avsr",
                              "--rates", "a4v2", "avsr_a2v1", "--output_dir", str(out), "--max_new_tokens", "3",
                              "--batch_size", "2"]) == 0
    record = json.loads((out / "expert_usage.json").read_text())
    assert record["num_utts"] == 3 and record["top_k"] == 2 and record["num_experts"] == 4
    assert record["parameters"]["active"] < record["parameters"]["total"]
    assert list(record["conditions"]) == ["avsr_a4v2", "avsr_a2v1"]
    for label, (n_audio, n_video) in {"avsr_a4v2": (8 + 10 + 13, 8 + 10 + 13),
                                      "avsr_a2v1": (15 + 20 + 25, 15 + 20 + 25)}.items():
        spans = record["conditions"][label]["spans"]
        assert spans["audio"]["tokens"] == n_audio and spans["video"]["tokens"] == n_video, label
        assert spans["text"]["tokens"] > 0 and spans["other"]["tokens"] == 3 * 5  # BOS + 4 delimiters
        assert spans["all"]["tokens"] == sum(spans[s]["tokens"] for s in ("audio", "video", "text", "other"))
        for span in ("all", "audio", "video", "text"):
            table = torch.tensor(spans[span]["frequency"])
            assert table.shape == (2, 4)  # layers x routed experts
            assert torch.allclose(table.sum(1), torch.full((2,), 2.0, dtype=table.dtype))  # k per token
        png = out / f"expert_usage_{label}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the routing depends on the rate: the audio spans' tables differ between the two conditions
    a, b = (torch.tensor(record["conditions"][k]["spans"]["audio"]["frequency"]) for k in record["conditions"])
    assert not torch.allclose(a, b)
    rows = {r["span"]: r for r in record["consistency"]}
    assert set(rows) == {"all", "audio", "video", "text"} and all(r["a"] == "avsr_a4v2" for r in rows.values())
    assert 0 < rows["audio"]["tv"] <= 1 and 0 < rows["audio"]["tv_shuffled"] <= 1


def test_consistency_on_hand_tables():
    """Identical routing: distance 0 (shuffling moves it away); disjoint experts: distance 1."""
    def cond(rows):
        return {"spans": {s: {"tokens": 5, "frequency": rows} for s in expert_usage.PLOTTED}}

    peaked = [[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]  # k = 2: rows sum to 2
    other = [[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]]
    rows = expert_usage.consistency({"x": cond(peaked), "y": cond(peaked), "z": cond(other)}, top_k=2)
    by_pair = {(r["a"], r["b"], r["span"]): r for r in rows}
    same, disjoint = by_pair["x", "y", "all"], by_pair["x", "z", "all"]
    assert same["tv"] == 0 and same["tv_shuffled"] > 0.3
    assert disjoint["tv"] == 1
    assert len(rows) == 3 * len(expert_usage.PLOTTED)


def test_default_conditions_and_num_utts(tmp_path, tiny_llm_dir, tiny_whisper_dir, corpus):
    exp = _exp_dir(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    out = tmp_path / "usage"
    assert expert_usage.main(["--model", str(exp), "--data", str(corpus), "--task", "vsr", "--output_dir", str(out),
                              "--num_utts", "2", "--max_new_tokens", "2"]) == 0
    record = json.loads((out / "expert_usage.json").read_text())
    assert record["num_utts"] == 2 and list(record["conditions"]) == ["vsr_v1", "vsr_v2"]
    assert record["conditions"]["vsr_v2"]["spans"]["audio"]["tokens"] == 0
    assert len((out / "utt_ids").read_text().split()) == 2


def test_a_model_without_mome_is_refused(tmp_path, tiny_llm_dir, tiny_whisper_dir, corpus):
    exp = _exp_dir(tmp_path, tiny_llm_dir, tiny_whisper_dir, adapter="shared_lora")
    assert expert_usage.main(["--model", str(exp), "--data", str(corpus), "--output_dir", str(tmp_path / "o")]) == 1


def test_avsr_train_with_mome_then_expert_usage(tmp_path, tiny_llm_dir, tiny_whisper_dir):
    """The real CLIs: a MoME model trains an epoch (its balance loss reported), and expert_usage reads
    the exp dir that training wrote."""
    from tests.bin.test_train_and_decode import _data_args, _run
    from tests.models.conftest import tiny_config

    train, valid = str(tmp_path / "train"), str(tmp_path / "valid")
    _write_corpus(train, 4)
    _write_corpus(valid, 2)
    config = tiny_config(tiny_llm_dir, tiny_whisper_dir)
    config.update(llm_adapter="mome", llm_adapter_conf=dict(num_experts=4, top_k=2, bottleneck=2, placement="layer"),
                  optim="adamw", optim_conf=dict(lr=1e-3), max_epoch=1, batch_size=2, batch_type="sorted",
                  num_att_plot=0, num_workers=0, best_model_criterion=[["valid", "acc", "max"]],
                  keep_nbest_models=1, seed=0)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config))
    common = ["espnet_omni_avsr.bin.avsr_train", "--config", str(cfg), "--ngpu", "0", "--use_tensorboard", "false"]
    data = _data_args("train", train) + _data_args("valid", valid)
    stats = tmp_path / "stats"
    _run(common + data + ["--collect_stats", "true", "--output_dir", str(stats), "--batch_type", "unsorted",
                          "--train_shape_file", f"{train}/wav.scp", "--valid_shape_file", f"{valid}/wav.scp"],
         cwd=tmp_path)
    exp = tmp_path / "exp"
    proc = _run(common + data + ["--train_shape_file", str(stats / "train/speech_shape"),
                                 "--valid_shape_file", str(stats / "valid/speech_shape"), "--output_dir", str(exp)],
                cwd=tmp_path)
    assert "balance=" in proc.stderr
    state = torch.load(exp / "1epoch.pth", weights_only=True)
    assert any(".mome.router.weight" in k for k in state)
    assert not any(k.startswith("decoder.llm") and ".mome." not in k for k in state)
    out = tmp_path / "usage"
    assert expert_usage.main(["--model", str(exp), "--data", valid, "--output_dir", str(out),
                              "--max_new_tokens", "2"]) == 0
    record = json.loads((out / "expert_usage.json").read_text())
    assert list(record["conditions"]) == ["avsr_a4v2"] and record["placement"] == "layer"
    assert (out / "expert_usage_avsr_a4v2.png").is_file()
