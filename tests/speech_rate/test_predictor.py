"""The speech-rate predictor: shapes, masking, checkpoints, learning a synthetic rate, and its trainer."""
import json
import math
import os

import numpy as np
import pytest
import soundfile
import torch

from espnet_omni_avsr.speech_rate.predictor import (
    SpeechRateCheckpointError,
    SpeechRatePredictor,
    cut_to_video,
    load_predictor,
    save_predictor,
    subsample_frames,
)


def _small(input_size=8, random_head=True, **kw):
    """A small predictor; `random_head`: a random output layer (it starts at weight 0, so that every
    output is 1.0, which would make the masking tests vacuous)."""
    torch.manual_seed(0)
    model = SpeechRatePredictor(input_size, hidden_size=32, num_heads=4, ffn_size=64, **kw)
    if random_head:
        with torch.no_grad():
            model.head.weight.normal_(0.0, 0.2)
    return model


def test_shapes_and_subsampling():
    model = _small().eval()
    feats, lengths = torch.randn(3, 37, 8), torch.tensor([37, 20, 1])
    rate = model(feats, lengths)
    assert rate.shape == (3,) and (rate >= 0).all() and rate.std() > 0.01
    sub, sub_lens = subsample_frames(feats, lengths, 4)
    assert sub.shape == (3, 10, 8) and sub_lens.tolist() == [10, 5, 1]  # frames 0, 4, 8, ...
    torch.testing.assert_close(model.forward_subsampled(sub, sub_lens), rate)
    default = SpeechRatePredictor(16)
    assert default(torch.randn(2, 9, 16), torch.tensor([9, 4])).eq(1.0).all()  # starts as the constant predictor
    assert default.kwargs == dict(input_size=16, hidden_size=256, num_layers=2, num_heads=4, ffn_size=1024,
                                  subsample=4, dropout=0.1, positional="sinusoidal")
    layer = default.encoder.layers[0]
    assert len(default.encoder.layers) == 2 and layer.norm_first and layer.self_attn.num_heads == 4
    assert layer.linear1.out_features == 1024 and default.proj.out_features == 256
    with pytest.raises(ValueError, match=r"expected feats \(B, T, 16\)"):
        default(torch.randn(1, 5, 8), torch.tensor([5]))


@pytest.mark.parametrize("positional", ["sinusoidal", "none"])
def test_an_utterance_alone_equals_it_in_a_padded_batch(positional):
    model = _small(positional=positional).eval()
    lengths = torch.tensor([41, 17, 3, 0])
    feats = torch.randn(4, 41, 8) * 5  # garbage in the padding too: the mask must hide it
    with torch.no_grad():
        batched = model(feats, lengths)
        alone = torch.stack([model(feats[i:i + 1, : lengths[i]], lengths[i:i + 1])[0] for i in range(4)])
    assert batched.std() > 0.01  # not a constant
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_cut_to_video():
    feats = torch.ones(3, 10, 2)
    out, lens = cut_to_video(feats, torch.tensor([10, 6, 9]), torch.tensor([3, 5, 2]))
    assert lens.tolist() == [6, 6, 4] and out.shape == (3, 6, 2)
    assert out[2, 4:].abs().sum() == 0 and out[2, :4].eq(1).all()


def test_save_load_round_trip(tmp_path):
    model = _small(input_size=12)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = str(tmp_path / "sub" / "rate.pth")
    meta = {"encoder": {"model_dir": "whisper-tiny.en", "output_layer": -1}, "valid_mae_wps": 0.3, "ok": [1, 2.5]}
    save_predictor(path, model, 2.707, meta)
    # plain types only: readable without unpickling arbitrary objects
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "kwargs", "state_dict", "mean_wps", "meta"}

    loaded, mean_wps, meta_back = load_predictor(path)
    assert mean_wps == pytest.approx(2.707) and meta_back == meta and loaded.kwargs == model.kwargs
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    loaded.train()  # inside a training model it stays frozen in eval (no dropout)
    assert not loaded.training and not loaded.encoder.layers[0].dropout.training
    feats, lengths = torch.randn(2, 20, 12), torch.tensor([20, 13])
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, lengths), model.eval()(feats, lengths))

    with pytest.raises(TypeError, match=r"meta\['bad'\] is a Tensor"):
        save_predictor(str(tmp_path / "x.pth"), model, 2.7, {"bad": torch.zeros(1)})


def test_load_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_predictor(missing)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(SpeechRateCheckpointError, match=r"notes\.txt: not a speech-rate predictor checkpoint"):
        load_predictor(str(text))
    state = tmp_path / "state.pth"
    torch.save(_small().state_dict(), state)  # a torch file, but a bare state dict
    with pytest.raises(SpeechRateCheckpointError, match=r"state\.pth: not a speech-rate predictor checkpoint"):
        load_predictor(str(state))


def _synthetic(n, generator, window=8, frame_rate=50.0):
    """Frames that each hold a short window of a sinusoid (as an encoder frame holds local context),
    whose frequency is proportional to the rate (0.5-2 -> 0.75-3 Hz); random phase, noise, lengths."""
    rates = 0.5 + 1.5 * torch.rand(n, generator=generator)
    lengths = torch.randint(100, 201, (n,), generator=generator)
    t = (torch.arange(int(lengths.max()))[:, None] + torch.arange(window)[None]) / frame_rate  # (T, window)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=generator)
    x = torch.sin(2 * math.pi * 1.5 * rates[:, None, None] * t[None] + phase)
    x = x + 0.05 * torch.randn(x.shape, generator=generator)
    x = x * (torch.arange(x.size(1))[None] < lengths[:, None])[:, :, None]
    return x, lengths, rates


def test_learns_a_synthetic_rate():
    g = torch.Generator().manual_seed(0)
    valid_x, valid_lens, valid_rates = _synthetic(128, g)
    model = _small(dropout=0.0, random_head=False)  # as it starts in training: the constant 1.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        x, lengths, rates = _synthetic(16, g)
        loss = torch.nn.functional.mse_loss(model(x, lengths), rates)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(model(valid_x, valid_lens), valid_rates).item()
    constant = ((valid_rates - valid_rates.mean()) ** 2).mean().item()  # the best constant predictor
    assert mse < 0.25 * constant, (mse, constant)


# --------------------------------------------------------------------------- the trainer


TEXTS = ["bin blue", "place red at c four now", "set white", "lay green by d two soon please",
         "bin blue at f one again", "place"]


def _write_set(root, n, rng, video=True, num_frames_file=False, bad_wav=None, empty_text=None):
    """n utterances of 0.6-1.4 s of sine waves; video (.npy) a few frames shorter than the audio."""
    os.makedirs(root, exist_ok=True)
    lists = {"wav.scp": [], "text": [], "video.scp": [], "utt2num_frames": []}
    frames = {}
    for i in range(n):
        uid = f"spk{i % 2}-utt{i:02d}"
        secs = 0.6 + 0.8 * rng.random()
        wav = os.path.join(root, f"{uid}.wav")
        if uid == bad_wav:
            with open(wav, "wb") as f:
                f.write(b"this is not a wav file")
        else:
            t = np.arange(int(secs * 16000)) / 16000
            soundfile.write(wav, (0.3 * np.sin(2 * np.pi * (150 + 50 * i) * t)).astype(np.float32), 16000)
        frames[uid] = int(secs * 25) - 2
        npy = os.path.join(root, f"{uid}.npy")
        np.save(npy, rng.integers(0, 256, (frames[uid], 8, 8), dtype=np.uint8))
        lists["wav.scp"].append(f"{uid} {wav}")
        lists["text"].append(f"{uid} {'' if uid == empty_text else TEXTS[i % len(TEXTS)].upper()}".rstrip())
        lists["video.scp"].append(f"{uid} {npy}")
        lists["utt2num_frames"].append(f"{uid} {frames[uid]}")
    for name, lines in lists.items():
        if (name == "video.scp" and not video) or (name == "utt2num_frames" and not num_frames_file):
            continue
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(sorted(lines)) + "\n")
    return frames


def test_train_speech_rate_cli(tmp_path, tiny_whisper_dir, caplog, capsys):
    from espnet_omni_avsr.bin import train_speech_rate

    rng = np.random.default_rng(0)
    train_frames = _write_set(str(tmp_path / "train"), 10, rng, bad_wav="spk1-utt03")
    valid_frames = _write_set(str(tmp_path / "valid"), 4, rng, num_frames_file=True, empty_text="spk0-utt02")
    output = str(tmp_path / "exp" / "rate.pth")
    argv = ["--train_dir", str(tmp_path / "train"), "--valid_dir", str(tmp_path / "valid"),
            "--whisper_dir", tiny_whisper_dir, "--output", output, "--epochs", "3", "--batch_size", "4",
            "--lr", "1e-3", "--seed", "0", "--num_threads", "1", "--hidden_size", "32", "--ffn_size", "64",
            "--log_level", "WARNING"]
    with caplog.at_level("WARNING"):
        assert train_speech_rate.main(argv) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("spk1-utt03" in w and "unreadable audio" in w for w in warnings), warnings
    assert any("spk0-utt02" in w and "empty transcript" in w for w in warnings), warnings

    record = json.loads((tmp_path / "exp" / "rate.json").read_text())
    meta = record["meta"]
    assert meta["num_train"] == 9 and meta["num_valid"] == 3 and meta["skipped"] == {"train": 1, "valid": 1}
    assert [s["utt"] for s in record["skipped_utterances"]] == ["spk1-utt03", "spk0-utt02"]
    for key in ("valid_mae_wps", "valid_baseline_mae_wps", "valid_mse", "valid_baseline_mse", "best_epoch"):
        assert math.isfinite(meta[key])
    assert len(meta["history"]) == 3 and meta["encoder"]["output_size"] == 32

    # the label's duration is the video's: frames / 25
    words = {f"spk{i % 2}-utt{i:02d}": len(TEXTS[i % len(TEXTS)].split()) for i in range(10)}
    expected = np.mean([words[u] / (train_frames[u] / 25) for u in train_frames if u != "spk1-utt03"])
    assert record["mean_wps"] == pytest.approx(expected)
    expected_valid = np.mean([words[u] / (valid_frames[u] / 25) for u in valid_frames if u != "spk0-utt02"])
    assert meta["valid_mean_wps"] == pytest.approx(expected_valid)

    model, mean_wps, meta_back = load_predictor(output)
    assert mean_wps == pytest.approx(expected) and meta_back == meta
    assert model.input_size == 32 and not model.training

    out = capsys.readouterr().out
    assert "(1 skipped)" in out and "constant predictor" in out and "valid MAE" in out


def test_train_speech_rate_cli_without_video(tmp_path, tiny_whisper_dir):
    """Without a video.scp the label's duration is the audio's."""
    from espnet_omni_avsr.bin import train_speech_rate

    rng = np.random.default_rng(1)
    _write_set(str(tmp_path / "train"), 4, rng, video=False)
    _write_set(str(tmp_path / "valid"), 2, rng, video=False)
    output = str(tmp_path / "rate.pth")
    assert train_speech_rate.main(["--train_dir", str(tmp_path / "train"), "--valid_dir", str(tmp_path / "valid"),
                                   "--whisper_dir", tiny_whisper_dir, "--output", output, "--epochs", "1",
                                   "--hidden_size", "32", "--ffn_size", "64", "--log_level", "WARNING"]) == 0
    _, mean_wps, _ = load_predictor(output)
    seconds = [soundfile.info(str(tmp_path / "train" / f"spk{i % 2}-utt{i:02d}.wav")).duration for i in range(4)]
    words = [len(TEXTS[i].split()) for i in range(4)]
    assert mean_wps == pytest.approx(np.mean([w / s for w, s in zip(words, seconds)]))
