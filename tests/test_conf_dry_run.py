"""Every YAML under conf/ parses with its CLI's parser and builds a model (with tiny stand-in models)."""
import glob
import os

import numpy as np
import pytest
import soundfile
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# conf/overlays/: a few keys to stack on any train config (e.g. float32), not configs of their own
TRAIN_CONFIGS = sorted(p for p in glob.glob(f"{ROOT}/conf/**/*.yaml", recursive=True)
                       if "/decode/" not in p and "/overlays/" not in p)
DECODE_CONFIGS = sorted(glob.glob(f"{ROOT}/conf/decode/*.yaml"))


def test_there_are_configs():
    assert len(TRAIN_CONFIGS) >= 6 and DECODE_CONFIGS


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: os.path.relpath(p, f"{ROOT}/conf"))
def test_train_config_builds(path, tmp_path, tiny_llm_dir, tiny_whisper_dir, tiny_avhubert_checkpoint):
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    from espnet_omni_avsr.utils.config_stack import load_config, merge

    config = load_config(path)
    if path.endswith("_warmup.yaml"):  # an overlay: stacked on the config it warms up
        config = merge(load_config(path.replace("_warmup.yaml", ".yaml")), config)
        for spec in config["losses"]:
            if (spec.get("conf") or {}).get("vocab"):
                text = tmp_path / "text"
                text.write_text("u1 bin blue at f two now\n")
                spec["conf"]["vocab"] = str(text)
    # point the pretrained folders at tiny random models of the same families
    if config.get("audio_encoder_conf", {}).get("model_dir"):
        config["audio_encoder_conf"]["model_dir"] = tiny_whisper_dir
    if config.get("video_encoder_conf", {}).get("checkpoint"):
        config["video_encoder_conf"]["checkpoint"] = tiny_avhubert_checkpoint
    config["decoder_conf"]["model_dir"] = tiny_llm_dir
    if config.get("preprocessor_conf", {}).get("noise"):
        noise = tmp_path / "babble.wav"
        soundfile.write(noise, np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1, 16000)
        config["preprocessor_conf"]["noise"] = str(noise)
    config["decoder_conf"]["dtype"] = "float32"
    local = tmp_path / "config.yaml"
    local.write_text(yaml.safe_dump(config))
    args = AVSRLLMTask.get_parser().parse_args(["--config", str(local)])
    model = AVSRLLMTask.build_model(args)
    assert model.tasks == config["model_conf"]["tasks"]
    assert AVSRLLMTask.build_preprocess_fn(args, train=True) is not None


@pytest.mark.parametrize("path", DECODE_CONFIGS, ids=os.path.basename)
def test_decode_config_parses(path):
    from espnet_omni_avsr.bin.avsr_inference import get_parser

    args = get_parser().parse_args(
        ["--config", path, "--train_config", "x.yaml", "--output_dir", "o",
         "--data_path_and_name_and_type", "wav.scp,speech,sound"]
    )
    assert args.beam_size >= 1 and args.max_new_tokens > 0


OVERLAYS = sorted(glob.glob(f"{ROOT}/conf/overlays/*.yaml"))


@pytest.mark.parametrize("path", OVERLAYS, ids=os.path.basename)
def test_overlay_keys_are_train_options(path):
    """An overlay stacks on any train config: its keys are options of avsr_train."""
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
    from espnet_omni_avsr.utils.config_stack import load_config

    known = {a.dest for a in AVSRLLMTask.get_parser()._actions}
    config = load_config(path)
    assert config and set(config) <= known, sorted(set(config) - known)
