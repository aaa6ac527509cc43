"""The port against ESPnet's AV-HuBERT code with identical random weights, directly and through a
checkpoint file in the official layout; bad checkpoints give errors that name the key or file."""
import argparse
import os
import pickle

import pytest
import torch

from espnet_omni_avsr.encoders.avhubert_checkpoint import (
    AVHubertCheckpointError,
    official_checkpoint,
    read_avhubert_checkpoint,
)
from espnet_omni_avsr.encoders.avhubert_encoder import AVHubertEncoder
from espnet_omni_avsr.encoders.avhubert_modules import AVHubertArch
from espnet_omni_avsr.utils.safe_checkpoint import UnsafeCheckpointError
from tests.encoders.avhubert_reference import build_reference, official_state_dict, reference_forward

TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_pos=8, conv_pos_groups=4)
ARCHS = {
    "prenorm_concat": AVHubertArch(**TINY, layer_norm_first=True, modality_fuse="concat"),
    "postnorm_add_relu": AVHubertArch(**TINY, layer_norm_first=False, modality_fuse="add", resnet_relu_type="relu"),
}
CROP = 24
TOL = 1e-5


def _inputs(arch, seed=1):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(2, 9, CROP, CROP, generator=g)
    audio = torch.randn(2, 9, arch.audio_feat_dim, generator=g)
    lengths = torch.tensor([9, 6])
    video[1, 6:] = 0.0  # padded frames are zero, as the mouth_roi front end gives them
    return video, audio, lengths


def _compare(encoder, reference, arch, audio_on: bool) -> float:
    video, audio, lengths = _inputs(arch)
    pad = torch.arange(9)[None, :] >= lengths[:, None]
    expected = reference_forward(reference, video, audio if audio_on else None, pad)
    with torch.no_grad():
        got, olens, _ = encoder(video.flatten(2), lengths, audio=audio if audio_on else None)
    assert got.shape == expected.shape == (2, 9, arch.encoder_embed_dim)
    valid = ~pad
    return float((got[valid] - expected[valid]).abs().max())


def _save(tmp_path, state, arch, config_format="cfg", name="avhubert.pt", dictconfig=False):
    ckpt = official_checkpoint(state, arch, config_format)
    if dictconfig:
        from omegaconf import OmegaConf

        ckpt["cfg"] = OmegaConf.create(ckpt["cfg"])  # what fairseq versions that keep the omegaconf tree save
    path = tmp_path / name
    torch.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("modality", ["video", "audiovisual"])
def test_matches_espnet_reference_directly(name, modality):
    arch = ARCHS[name]
    reference = build_reference(arch)
    encoder = AVHubertEncoder(input_size=CROP * CROP, modality=modality, **arch.as_dict()).eval()
    state = {k: v for k, v in official_state_dict(reference).items() if k in encoder.model.state_dict()}
    missing, unexpected = encoder.model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    diff = _compare(encoder, reference, arch, audio_on=modality == "audiovisual")
    print(f"\nmax abs difference, direct, {name}, {modality}: {diff:.3g}")
    assert diff < TOL


@pytest.mark.parametrize("how", ["cfg_dict", "cfg_dictconfig", "args_namespace"])
def test_checkpoint_round_trip(tmp_path, how):
    arch = ARCHS["prenorm_concat"]
    reference = build_reference(arch, seed=0)
    path = _save(tmp_path, official_state_dict(reference), arch, "args" if how == "args_namespace" else "cfg",
                 dictconfig=how == "cfg_dictconfig")
    ckpt = read_avhubert_checkpoint(path)
    assert ckpt.arch == arch
    assert ckpt.read_with == ("weights_only" if how == "cfg_dict" else "restricted")
    assert {"mask_emb", "final_proj.weight", "label_embs_concat"} <= set(ckpt.ignored)
    encoder = AVHubertEncoder(input_size=CROP * CROP, checkpoint=path)  # architecture from the file
    assert encoder.output_size() == arch.encoder_embed_dim and encoder.arch == arch
    diff = _compare(encoder, reference, arch, audio_on=False)
    print(f"\nmax abs difference, checkpoint round trip ({how}): {diff:.3g}")
    assert diff < TOL


def test_finetuned_checkpoint_gives_its_encoder(tmp_path):
    arch = ARCHS["prenorm_concat"]
    reference = build_reference(arch, seed=4)
    state = {f"encoder.w2v_model.{k}": v for k, v in official_state_dict(reference).items()}
    state["decoder.embed_tokens.weight"] = torch.randn(10, 8)
    w2v_args = official_checkpoint({}, arch)["cfg"]
    ckpt = {"cfg": {"model": {"_name": "av_hubert_seq2seq", "w2v_args": w2v_args}}, "model": state}
    torch.save(ckpt, tmp_path / "ft.pt")
    encoder = AVHubertEncoder(input_size=CROP * CROP, checkpoint=str(tmp_path / "ft.pt"))
    assert _compare(encoder, reference, arch, audio_on=False) < TOL


@pytest.fixture
def good_state():
    return official_state_dict(build_reference(ARCHS["prenorm_concat"], seed=5))


def test_missing_key_is_named(tmp_path, good_state):
    del good_state["encoder.layers.1.fc1.weight"]
    path = _save(tmp_path, good_state, ARCHS["prenorm_concat"])
    with pytest.raises(AVHubertCheckpointError, match=r"missing 1 key.*encoder\.layers\.1\.fc1\.weight"):
        AVHubertEncoder(input_size=CROP * CROP, checkpoint=path)


def test_wrong_shape_is_named(tmp_path, good_state):
    good_state["feature_extractor_video.proj.weight"] = torch.zeros(32, 256)
    path = _save(tmp_path, good_state, ARCHS["prenorm_concat"])
    with pytest.raises(AVHubertCheckpointError,
                       match=r"feature_extractor_video\.proj\.weight: checkpoint \(32, 256\), model \(32, 512\)"):
        AVHubertEncoder(input_size=CROP * CROP, checkpoint=path)


def test_unsupported_config_and_conflicting_settings(tmp_path, good_state):
    ckpt = official_checkpoint(good_state, ARCHS["prenorm_concat"])
    ckpt["cfg"]["model"]["sub_encoder_layers"] = 2
    torch.save(ckpt, tmp_path / "sub.pt")
    with pytest.raises(AVHubertCheckpointError, match="sub_encoder_layers=2"):
        read_avhubert_checkpoint(str(tmp_path / "sub.pt"))
    del ckpt["cfg"]["model"]["encoder_layers"]
    torch.save(ckpt, tmp_path / "nolayers.pt")
    with pytest.raises(AVHubertCheckpointError, match="encoder_layers"):
        read_avhubert_checkpoint(str(tmp_path / "nolayers.pt"))
    path = _save(tmp_path, good_state, ARCHS["prenorm_concat"])
    with pytest.raises(ValueError, match="encoder_layers"):
        AVHubertEncoder(input_size=CROP * CROP, checkpoint=path, encoder_layers=24)


def test_not_found_and_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.pt"):
        read_avhubert_checkpoint(str(tmp_path / "no_such.pt"))
    (tmp_path / "notes.txt").write_text("this is not a checkpoint\n")
    with pytest.raises(AVHubertCheckpointError, match="notes.txt.*not a torch checkpoint"):
        read_avhubert_checkpoint(str(tmp_path / "notes.txt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(AVHubertCheckpointError, match="other.pt.*'model' state dict"):
        read_avhubert_checkpoint(str(tmp_path / "other.pt"))


class _RunsCode:
    """Pickles as a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("where", ["in_cfg", "as_tensor_list"])
def test_file_that_runs_code_is_refused(tmp_path, good_state, where):
    marker = tmp_path / "pwned"
    ckpt = official_checkpoint(good_state, ARCHS["prenorm_concat"])
    payload = _RunsCode(f"touch {marker}")
    if where == "in_cfg":
        from omegaconf import OmegaConf

        ckpt["cfg"] = OmegaConf.create(ckpt["cfg"])  # the restricted unpickler is reached, then refuses
        ckpt["extra_state"] = {"hook": payload}
    else:
        ckpt["model"]["encoder.layer_norm.weight"] = payload
    torch.save(ckpt, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*'(posix|os)\.system'"):
        AVHubertEncoder(input_size=CROP * CROP, checkpoint=str(tmp_path / "evil.pt"))
    assert not marker.exists()
    # the same refusal for a legacy (non-zip) torch file
    torch.save(ckpt, tmp_path / "evil_legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_avhubert_checkpoint(str(tmp_path / "evil_legacy.pt"))
    assert not marker.exists()


def test_restricted_unpickler_gives_plain_containers(tmp_path):
    from omegaconf import OmegaConf

    from espnet_omni_avsr.utils.safe_checkpoint import load_checkpoint

    cfg = OmegaConf.create({"model": {"encoder_layers": 2, "names": ["a", "b"], "sub": {"x": None}}})
    torch.save({"cfg": cfg, "args": argparse.Namespace(lr=[0.1], arch="av_hubert"), "t": torch.arange(3)},
               tmp_path / "c.pt")
    out, how = load_checkpoint(str(tmp_path / "c.pt"))
    assert how == "restricted"
    assert out["cfg"] == {"model": {"encoder_layers": 2, "names": ["a", "b"], "sub": {"x": None}}}
    assert out["args"] == {"lr": [0.1], "arch": "av_hubert"}
    assert torch.equal(out["t"], torch.arange(3))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "c.pt", weights_only=True)  # why the restricted path exists
