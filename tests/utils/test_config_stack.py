import pytest
import yaml

from espnet_omni_avsr.utils.config_stack import merge, stack_configs


def test_merge_is_recursive_for_mappings_and_replaces_the_rest():
    base = {"optim_conf": {"lr": 1e-3, "betas": [0.9, 0.98]}, "losses": [{"type": "a"}, {"type": "b"}], "max_epoch": 1}
    over = {"optim_conf": {"lr": 2e-3}, "losses": [{"type": "c"}]}
    assert merge(base, over) == {"optim_conf": {"lr": 2e-3, "betas": [0.9, 0.98]}, "losses": [{"type": "c"}],
                                 "max_epoch": 1}
    assert base["optim_conf"]["lr"] == 1e-3  # inputs untouched


def test_stack_configs_writes_one_merged_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("max_epoch: 1\noptim_conf: {lr: 0.001, weight_decay: 0.1}\n")
    b.write_text("max_epoch: 18\noptim_conf: {lr: 0.002}\n")
    argv = stack_configs(["--config", str(a), "--ngpu", "0", f"--config={b}"])
    assert argv[0] == "--config" and argv[2:] == ["--ngpu", "0"]
    with open(argv[1]) as f:
        assert yaml.safe_load(f) == {"max_epoch": 18, "optim_conf": {"lr": 0.002, "weight_decay": 0.1}}
    one = ["--config", str(a), "--ngpu", "0"]
    assert stack_configs(one) == one


def test_bad_config_files_are_named(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("max_epoch: 1\n")
    bad.write_text("- a list\n")
    with pytest.raises(SystemExit, match="bad.yaml: expected a mapping"):
        stack_configs(["--config", str(good), "--config", str(bad)])
    with pytest.raises(SystemExit, match="missing.yaml: cannot read"):
        stack_configs(["--config", str(good), "--config", str(tmp_path / "missing.yaml")])


def test_base_config_is_loaded_first_relative_to_the_file(tmp_path):
    from espnet_omni_avsr.utils.config_stack import load_config

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "a.yaml").write_text("max_epoch: 1\noptim_conf: {lr: 0.001, weight_decay: 0.1}\n"
                                              "losses: [{type: x}]\n")
    (tmp_path / "v" ).mkdir()
    (tmp_path / "v" / "b.yaml").write_text("base_config: ../base/a.yaml\noptim_conf: {lr: 0.002}\n")
    (tmp_path / "v" / "c.yaml").write_text("base_config: b.yaml\nlosses: [{type: y}]\n")
    expected = {"max_epoch": 1, "optim_conf": {"lr": 0.002, "weight_decay": 0.1}, "losses": [{"type": "y"}]}
    assert load_config(str(tmp_path / "v" / "c.yaml")) == expected
    argv = stack_configs(["--config", str(tmp_path / "v" / "c.yaml")])  # one config with a base: resolved
    with open(argv[1]) as f:
        assert yaml.safe_load(f) == expected


def test_base_config_errors_name_the_file(tmp_path):
    from espnet_omni_avsr.utils.config_stack import load_config

    (tmp_path / "a.yaml").write_text("base_config: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base_config: a.yaml\n")
    with pytest.raises(SystemExit, match="loops back"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base_config: nothere.yaml\n")
    with pytest.raises(SystemExit, match="c.yaml: base_config 'nothere.yaml' does not exist"):
        load_config(str(tmp_path / "c.yaml"))


def test_choosing_another_class_replaces_its_conf():
    base = {"llm_adapter": "shared_lora", "llm_adapter_conf": {"r": 16, "alpha": 32}, "optim_conf": {"lr": 1}}
    assert merge(base, {"llm_adapter": "mome", "llm_adapter_conf": {"top_k": 4}}) == {
        "llm_adapter": "mome", "llm_adapter_conf": {"top_k": 4}, "optim_conf": {"lr": 1}}
    assert merge(base, {"llm_adapter": "task_lora"})["llm_adapter_conf"] == {}
    # the same class: its conf is merged
    assert merge(base, {"llm_adapter": "shared_lora", "llm_adapter_conf": {"r": 8}})["llm_adapter_conf"] == {
        "r": 8, "alpha": 32}
