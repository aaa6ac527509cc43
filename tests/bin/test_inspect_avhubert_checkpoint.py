import json

from espnet_omni_avsr.bin.inspect_avhubert_checkpoint import main


def test_prints_the_architecture(tiny_avhubert_checkpoint, capsys):
    assert main(["--checkpoint", tiny_avhubert_checkpoint]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arch"]["encoder_layers"] == 2 and out["arch"]["encoder_embed_dim"] == 32
    assert out["read_with"] == "weights_only" and out["unused"] == []


def test_error_exit_status(tmp_path, caplog):
    assert main(["--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "missing.pt" in caplog.text
