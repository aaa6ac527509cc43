import argparse
import io
import json
import tarfile

import pytest
import yaml

from espnet_omni_avsr.bin import pack_model as pack_cli
from espnet_omni_avsr.bin import unpack_model as unpack_cli
from espnet_omni_avsr.utils.model_archive import (
    ArchiveError,
    iter_pretrained_paths,
    pack_model,
    sha256_file,
    unpack_model,
)


def _folder(path, files):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


@pytest.fixture
def recipe(tmp_path):
    """A recipe dir with two pretrained folders (one reached by a relative, one by an absolute path), a
    third folder with the same name as the first, a config with nested keys, and weights."""
    r = tmp_path / "recipe"
    _folder(r / "pretrained" / "tiny-llm", {"config.json": b"{}", "tokenizer.json": b"tok", "sub/w.bin": b"\0" * 100})
    whisper = _folder(tmp_path / "elsewhere" / "tiny-whisper", {"config.json": b"{\"w\": 1}"})
    _folder(tmp_path / "other" / "tiny-llm", {"config.json": b"{\"other\": true}"})
    (r / "pretrained" / "tiny-llm" / "link.json").symlink_to(r / "pretrained" / "tiny-llm" / "config.json")
    config = {
        "model": "avsr_llm",
        "decoder_conf": {"model_dir": "pretrained/tiny-llm", "dtype": "float32"},
        "audio_encoder_conf": {"model_dir": str(whisper), "frozen": True},
        "preprocessor_conf": {"tokenizer_dir": "pretrained/tiny-llm"},
        "experts": [{"name": "a", "nested": {"model_dir": str(tmp_path / "other" / "tiny-llm")}}],
        "unrelated_dir": "pretrained/tiny-llm",
    }
    exp = r / "exp" / "avsr"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (exp / "valid.acc.ave.pth").write_bytes(b"weights" * 1000)
    return r, exp


def test_round_trip(recipe, tmp_path):
    r, exp = recipe
    out = tmp_path / "packed" / "model.tar.gz"
    meta = pack_model(exp / "config.yaml", exp / "valid.acc.ave.pth", out, base_dir=r)
    assert set(meta["pretrained"]) == {"tiny-llm", "tiny-whisper", "tiny-llm-2"}
    assert meta["pretrained"]["tiny-llm"]["keys"] == ["decoder_conf.model_dir", "preprocessor_conf.tokenizer_dir"]
    assert meta["model_sha256"] == sha256_file(exp / "valid.acc.ave.pth")
    stamp = out.stat().st_mtime_ns  # packing the same model again keeps the archive
    assert pack_model(exp / "config.yaml", exp / "valid.acc.ave.pth", out, base_dir=r) == meta
    assert out.stat().st_mtime_ns == stamp
    with tarfile.open(out) as tar:
        names = tar.getnames()
        packed_config = yaml.safe_load(tar.extractfile("config.yaml").read())
        assert not any(m.issym() or m.islnk() for m in tar.getmembers())  # links stored as files
    assert names[:3] == ["meta.yaml", "config.yaml", "model.pth"]
    assert "pretrained/tiny-llm/sub/w.bin" in names and "pretrained/tiny-llm-2/config.json" in names
    assert packed_config["decoder_conf"]["model_dir"] == "pretrained/tiny-llm"
    assert packed_config["experts"][0]["nested"]["model_dir"] == "pretrained/tiny-llm-2"
    assert packed_config["unrelated_dir"] == "pretrained/tiny-llm"  # only model_dir / tokenizer_dir keys

    dest = tmp_path / "unpacked"
    config_path, model_path = unpack_model(out, dest)
    assert model_path.read_bytes() == (exp / "valid.acc.ave.pth").read_bytes()
    cfg = yaml.safe_load(config_path.read_text())
    paths = dict(iter_pretrained_paths(cfg))
    assert paths[("decoder_conf", "model_dir")] == str(dest.resolve() / "pretrained" / "tiny-llm")
    assert paths[("experts", 0, "nested", "model_dir")] == str(dest.resolve() / "pretrained" / "tiny-llm-2")
    assert paths[("audio_encoder_conf", "model_dir")] == str(dest.resolve() / "pretrained" / "tiny-whisper")
    assert (dest / "pretrained" / "tiny-llm" / "sub" / "w.bin").read_bytes() == b"\0" * 100
    assert (dest / "pretrained" / "tiny-llm-2" / "config.json").read_bytes() == b"{\"other\": true}"
    assert (dest / "pretrained" / "tiny-llm" / "link.json").read_bytes() == b"{}"
    assert cfg["decoder_conf"]["dtype"] == "float32" and cfg["audio_encoder_conf"]["frozen"] is True

    # Idempotent: a second call returns at once without extracting.
    stamp = config_path.stat().st_mtime_ns
    assert unpack_model(out, dest) == (config_path, model_path)
    assert config_path.stat().st_mtime_ns == stamp

    # Another model into the same directory: refused unless overwrite.
    (exp / "valid.acc.ave.pth").write_bytes(b"other weights")
    out2 = tmp_path / "packed" / "model2.tar"
    pack_model(exp / "config.yaml", exp / "valid.acc.ave.pth", out2, base_dir=r)
    with pytest.raises(FileExistsError, match="another unpacked model"):
        unpack_model(out2, dest)
    _, model_path = unpack_model(out2, dest, overwrite=True)
    assert model_path.read_bytes() == b"other weights"


def test_without_pretrained(recipe, tmp_path):
    r, exp = recipe
    out = tmp_path / "light.tar"
    meta = pack_model(exp / "config.yaml", exp / "valid.acc.ave.pth", out, base_dir=r, include_pretrained=False)
    assert not meta["pretrained_included"]
    with tarfile.open(out) as tar:
        assert not any(n.startswith("pretrained/") for n in tar.getnames())
    store = tmp_path / "store"
    for name in ("tiny-llm", "tiny-whisper", "tiny-llm-2"):
        (store / name).mkdir(parents=True)
    config_path, _ = unpack_model(out, tmp_path / "u", pretrained_dir=store)
    cfg = yaml.safe_load(config_path.read_text())
    assert cfg["preprocessor_conf"]["tokenizer_dir"] == str(store.resolve() / "tiny-llm")
    with pytest.raises(ArchiveError, match="not found"):
        unpack_model(out, tmp_path / "u2", pretrained_dir=tmp_path / "empty")


def test_pack_errors(recipe, tmp_path):
    r, exp = recipe
    with pytest.raises(ValueError, match=".tar"):
        pack_model(exp / "config.yaml", exp / "valid.acc.ave.pth", tmp_path / "m.zip", base_dir=r)
    with pytest.raises(FileNotFoundError, match="decoder_conf.model_dir"):
        pack_model(exp / "config.yaml", exp / "valid.acc.ave.pth", tmp_path / "m.tar", base_dir=tmp_path)


def _evil_archive(path, member_name, kind="file"):
    meta = {"format": "espnet_omni_avsr model archive", "format_version": 1, "model_sha256": "0",
            "pretrained_included": True, "pretrained": {}}
    with tarfile.open(path, "w") as tar:
        data = yaml.safe_dump(meta).encode()
        info = tarfile.TarInfo("meta.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(member_name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return path


@pytest.mark.parametrize("name,kind,match", [
    ("../evil", "file", r"'\.\.'"),
    ("pretrained/../../evil", "file", r"'\.\.'"),
    ("/tmp/evil_abs", "file", "absolute"),
    ("pretrained/x/link", "symlink", "links"),
])
def test_malicious_members_are_refused(tmp_path, name, kind, match):
    archive = _evil_archive(tmp_path / "evil.tar", name, kind)
    dest = tmp_path / "a" / "dest"
    with pytest.raises(ArchiveError, match=match):
        unpack_model(archive, dest)
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not dest.exists() or not any(dest.iterdir())


def test_cli(recipe, tmp_path, capsys):
    r, exp = recipe
    out = tmp_path / "m.tgz"
    (exp / "model.pth").symlink_to(exp / "valid.acc.ave.pth")  # stage 9 links the selected model
    assert pack_cli.main(["--config", str(exp / "config.yaml"), "--model_file", str(exp / "model.pth"),
                          "--out", str(out), "--base_dir", str(r)]) == 0
    assert json.loads(capsys.readouterr().out)["pretrained"] == ["tiny-llm", "tiny-llm-2", "tiny-whisper"]
    assert unpack_cli.main(["--archive", str(out), "--dest_dir", str(tmp_path / "d")]) == 0
    model_file = json.loads(capsys.readouterr().out)["model_file"]
    assert open(model_file, "rb").read() == (exp / "valid.acc.ave.pth").read_bytes()
    assert unpack_cli.main(["--archive", str(tmp_path / "nope.tar"), "--dest_dir", str(tmp_path)]) == 1
    assert pack_cli.main(["--config", str(exp / "config.yaml"), "--model_file", str(exp / "model.pth"),
                          "--out", str(tmp_path / "x.tar"), "--base_dir", str(tmp_path)]) == 1



# --------------------------------------------------------------------------- files as sources


@pytest.fixture
def file_recipe(tmp_path):
    """A recipe whose config names files: a relative AV-HuBERT checkpoint, an absolute token-CTC
    vocabulary, a second checkpoint with the same file name, and a null checkpoint."""
    r = tmp_path / "recipe"
    _folder(r / "pretrained" / "tiny-llm", {"config.json": b"{}"})
    _folder(r / "ckpt", {"avhubert.pt": b"checkpoint" * 100})
    other = _folder(tmp_path / "other", {"avhubert.pt": b"other checkpoint"})
    vocab = _folder(tmp_path / "data", {"text": b"utt1 HELLO\n"}) / "text"
    config = {
        "decoder_conf": {"model_dir": "pretrained/tiny-llm"},
        "video_encoder_conf": {"checkpoint": "ckpt/avhubert.pt", "frozen": True},
        "losses": [{"type": "token_ctc", "conf": {"modality": "audio", "vocab": str(vocab)}}],
        "experts": [{"checkpoint": str(other / "avhubert.pt")}, {"checkpoint": None}],
    }
    exp = r / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (exp / "model.pth").write_bytes(b"weights")
    return r, exp


def test_files_are_packed_and_unpacked(file_recipe, tmp_path):
    r, exp = file_recipe
    out = tmp_path / "m.tar"
    meta = pack_model(exp / "config.yaml", exp / "model.pth", out, base_dir=r)
    assert {n: v["kind"] for n, v in meta["pretrained"].items()} == {
        "tiny-llm": "folder", "avhubert.pt": "file", "text": "file", "avhubert-2.pt": "file"}
    assert meta["pretrained"]["avhubert.pt"]["keys"] == ["video_encoder_conf.checkpoint"]
    with tarfile.open(out) as tar:
        assert tar.getmember("pretrained/avhubert.pt").isfile() and tar.getmember("pretrained/text").isfile()
        packed = yaml.safe_load(tar.extractfile("config.yaml").read())
    assert packed["video_encoder_conf"]["checkpoint"] == "pretrained/avhubert.pt"
    assert packed["experts"][0]["checkpoint"] == "pretrained/avhubert-2.pt"
    assert packed["experts"][1]["checkpoint"] is None

    (r / "ckpt" / "avhubert.pt").unlink()  # the archive does not need its sources any more
    config_path, _ = unpack_model(out, tmp_path / "u")
    cfg = yaml.safe_load(config_path.read_text())
    assert open(cfg["video_encoder_conf"]["checkpoint"], "rb").read() == b"checkpoint" * 100
    assert open(cfg["experts"][0]["checkpoint"], "rb").read() == b"other checkpoint"
    assert open(cfg["losses"][0]["conf"]["vocab"], "rb").read() == b"utt1 HELLO\n"
    assert cfg["losses"][0]["conf"]["vocab"] == str((tmp_path / "u").resolve() / "pretrained" / "text")


def test_files_without_pretrained(file_recipe, tmp_path):
    r, exp = file_recipe
    out = tmp_path / "light.tar"
    pack_model(exp / "config.yaml", exp / "model.pth", out, base_dir=r, include_pretrained=False)
    store = _folder(tmp_path / "store", {"avhubert.pt": b"c", "avhubert-2.pt": b"c2", "text": b"t"})
    (store / "tiny-llm").mkdir()
    config_path, _ = unpack_model(out, tmp_path / "u", pretrained_dir=store)
    assert yaml.safe_load(config_path.read_text())["video_encoder_conf"]["checkpoint"] == str(store / "avhubert.pt")
    (store / "text").unlink()
    (store / "text").mkdir()  # a folder where the vocabulary file should be
    with pytest.raises(ArchiveError, match=r"losses.0.conf.vocab"):
        unpack_model(out, tmp_path / "u2", pretrained_dir=store)


def test_missing_file_is_an_error_naming_config_and_key(file_recipe, tmp_path):
    r, exp = file_recipe
    (r / "ckpt" / "avhubert.pt").unlink()
    expected = r"config.yaml: video_encoder_conf.checkpoint = 'ckpt/avhubert.pt'.*not a file"
    with pytest.raises(FileNotFoundError, match=expected):
        pack_model(exp / "config.yaml", exp / "model.pth", tmp_path / "m.tar", base_dir=r)
    (r / "ckpt" / "avhubert.pt").mkdir()
    with pytest.raises(FileNotFoundError, match="not a file"):
        pack_model(exp / "config.yaml", exp / "model.pth", tmp_path / "m.tar", base_dir=r)


# Constructor arguments of the registered parts that take a string but name no local source.
NOT_SOURCES = {
    "fs", "relu_type", "modality", "modality_fuse", "resnet_relu_type", "attn_implementation", "dtype",
    "input_layer", "positionwise_layer_type", "rel_pos_type", "pos_enc_layer_type", "selfattention_layer_type",
    "activation_type", "rate_sampling", "text_case", "text_name", "speech_name", "video_name",
    "name", "key",  # loss terms' statistics names
    "noise",  # training-time noise: only the training loader reads it, a packed model decodes without it
    "placement", "tokens", "dispatch",  # MoME: where the experts sit, which positions, how tokens reach them
}


def _takes_str(param) -> bool:
    import typing

    hint = param.annotation
    options = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    return str in options or isinstance(param.default, str)


def test_source_keys_cover_every_path_argument():
    """Every string argument of every part the task can build is either a local source that
    pack_model packs (SOURCE_KEYS) or listed above as something else."""
    import inspect

    from espnet_omni_avsr.tasks.avsr_llm_task import LOSS_TERMS, AVSRLLMTask
    from espnet_omni_avsr.utils.model_archive import SOURCE_KEYS

    found = set()
    constructors = [cls.__init__ for choices in AVSRLLMTask.class_choices_list for cls in choices.classes.values()]
    constructors += [f for cls in LOSS_TERMS.values() for f in (cls.__init__, cls.build)]  # build reads the conf
    for f in constructors:
        params = inspect.signature(f).parameters.values()
        found |= {p.name for p in params if p.name not in ("self", "cls") and _takes_str(p)}
    # the task's own string options (the "Task related" group), e.g. --speech_rate_predictor FILE
    parser = AVSRLLMTask.get_parser()
    group = next(g for g in parser._action_groups if g.description == "Task related")
    found |= {a.dest for a in group._group_actions
              if a.type is str and a.help != argparse.SUPPRESS and not a.dest.endswith("_conf")}
    assert found - NOT_SOURCES == set(SOURCE_KEYS), "a new string argument: add it to SOURCE_KEYS or NOT_SOURCES"
