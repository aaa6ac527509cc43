"""bin/eval_real_speech on a fake data root (tone wavs at several rates and channel counts, two
transcript folders): the model decoded as ASR through the transcriber, a tiny random Whisper (with a
small tokenizer) scored beside it, the outputs and the table; named errors for bad data, model and
arguments; the real pocketsphinx-testdata parsed when it is installed."""
import json
import os
import shutil

import numpy as np
import pytest

from espnet_omni_avsr.bin import eval_real_speech as ev
from tests.inference.conftest import write_exp_dir
from tests.inference.media_helpers import write_audio

REFERENCES = {("cards", "001"): "ten of clubs", ("cards", "002"): "four queen of clubs",
              ("librivox", "s-0870"): "he was not an ill disposed young man"}


@pytest.fixture(scope="module")
def asr_exp(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir):
    return write_exp_dir(tmp_path_factory.mktemp("asr_exp"), tiny_llm_dir, tiny_whisper_dir, ["asr"], seed=3)


@pytest.fixture(scope="module")
def whisper_with_tokenizer(tmp_path_factory, tiny_whisper_dir):
    """The tiny random Whisper with a 64-token byte-level tokenizer (letters, space, apostrophe)."""
    from transformers import WhisperTokenizer

    out = tmp_path_factory.mktemp("whisper") / "whisper-tiny-random"
    shutil.copytree(tiny_whisper_dir, out)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|pad|>": 0, "<|startoftranscript|>": 1, "<|endoftext|>": 2}
    for token in ["\u0120", "'", *letters, *("\u0120" + c for c in letters), *("ab", "cd", "ef", "gh", "ij", "kl",
                                                                               "mn")]:
        vocab.setdefault(token, len(vocab))
    assert len(vocab) == 64
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    WhisperTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), unk_token="<|endoftext|>",
                     bos_token="<|startoftranscript|>", eos_token="<|endoftext|>",
                     pad_token="<|pad|>").save_pretrained(str(out))
    return str(out)


def _tone(seconds: float, rate: int, channels: int, freq: float) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * freq * (1 + 0.1 * c) * t) for c in range(channels)], axis=1)


def fake_data_root(root) -> str:
    """cards/{001,002}.wav with cards/cards.transcription, librivox/s-0870.wav with librivox/transcription
    (the pocketsphinx-testdata layout), at 16 kHz mono, 8 kHz stereo and 22.05 kHz mono."""
    (root / "cards").mkdir(parents=True)
    (root / "librivox").mkdir()
    for (folder, utt), rate, channels in zip(REFERENCES, (16000, 8000, 22050), (1, 2, 1)):
        write_audio(str(root / folder / f"{utt}.wav"), _tone(0.8, rate, channels, 300 + 50 * len(utt)), rate)
    (root / "cards" / "cards.transcription").write_text(
        "<s> ten of clubs  </s> (001)\n\n<s> four queen of clubs  </s> (002)\n")
    (root / "librivox" / "transcription").write_text("<s> he was not an ill disposed young man </s> (s-0870)\n")
    (root / "cards" / "cards.hyp").write_text("not a transcript file\n")
    return str(root)


def test_model_and_whisper_on_a_fake_data_root(tmp_path, asr_exp, whisper_with_tokenizer, capsys):
    data = fake_data_root(tmp_path / "data")
    out = tmp_path / "out"
    code = ev.main(["--model", str(asr_exp), "--data_root", data, "--whisper_dir", whisper_with_tokenizer,
                    "--output_dir", str(out), "--batch_size", "2", "--max_new_tokens", "3"])
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| system | utterances | words | WER (%) | sub | del | ins |" and len(table) == 4
    assert table[2].startswith(f"| {asr_exp.name} (asr_a4, beam 1) | 3 | 15 |")
    assert table[3].startswith("| whisper-tiny-random (Whisper, greedy) | 3 | 15 |")
    rows = json.loads((out / "utterances.json").read_text())
    assert [r["id"] for r in rows] == ["cards/001", "cards/002", "librivox/s-0870"]
    assert [r["reference"] for r in rows] == list(REFERENCES.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["utterances"] == 3 and set(summary["systems"]) == {"model", "whisper"}
    for key, system in summary["systems"].items():
        assert system["utterances"] == 3 and system["words"] == 15 and system["failed"] == 0
        assert [r[key]["words"] for r in rows] == [3, 4, 8]
        for k in ("sub", "del", "ins", "errors"):
            assert system[k] == sum(r[key][k] for r in rows)
        assert system["errors"] == system["sub"] + system["del"] + system["ins"]
        assert system["wer"] == round(100 * system["errors"] / 15, 2)
        assert all(isinstance(r[key]["text"], str) and "error" not in r[key] for r in rows)
    assert summary["systems"]["model"]["condition"] == "asr_a4"
    assert summary["systems"]["model"]["decoding"]["max_new_tokens"] == 3
    tsv = (out / "utterances.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == list(ev.TSV_COLUMNS) and len(tsv) == 4
    assert tsv[1].split("\t")[:2] == ["cards/001", "ten of clubs"]


def test_an_undecodable_wav_fails_by_name_and_counts_as_deletions(tmp_path, asr_exp, caplog, capsys):
    data = fake_data_root(tmp_path / "data")
    bad = tmp_path / "data" / "cards" / "002.wav"
    bad.write_bytes(b"RIFF\0\0\0\0WAVE garbage" * 20)
    code = ev.main(["--model", str(asr_exp), "--data_root", data, "--output_dir", str(tmp_path / "out"),
                    "--max_new_tokens", "2"])
    assert code == 1
    rows = json.loads((tmp_path / "out" / "utterances.json").read_text())
    assert str(bad) in rows[1]["model"]["error"] and rows[1]["model"]["text"] is None
    assert rows[1]["model"]["del"] == 4 and rows[1]["model"]["normalized"] == ""
    assert f"FAILED (model) {rows[1]['model']['error']}" in caplog.text
    assert len(capsys.readouterr().out.splitlines()) == 3  # the table, without Whisper


def test_normalization_and_counts():
    assert ev.normalize("Ten of Clubs.") == "ten of clubs"
    assert ev.normalize("4, Queen of clubs!") == "four queen of clubs"
    assert ev.normalize("And Mr. John Dashwood, cold-hearted; don\u2019t") == "and mister john dashwood cold hearted don't"
    rows, total = ev.score_system(["ten of clubs", "five five", "seven of clubs"], ["10 of Clubs.", None, "seven clubs of"])
    assert [r["errors"] for r in rows] == [0, 2, 2] and rows[1]["del"] == 2
    assert (total["words"], total["errors"], total["failed"], total["wer"]) == (8, 4, 1, 50.0)


@pytest.mark.parametrize("case", ["no_root", "no_transcript", "missing_wav", "bad_line", "no_whisper", "bad_batch"])
def test_bad_data_and_arguments_are_named(tmp_path, case, caplog):
    """All refused before the model loads (a --model that does not exist is never read)."""
    data = tmp_path / "data"
    args = ["--model", str(tmp_path / "no_model"), "--data_root", str(data)]
    if case == "no_root":
        expected = f"--data_root {data}: no such folder. The default data is Debian's pocketsphinx-testdata: " \
                   "apt-get install pocketsphinx-testdata"
    else:
        fake_data_root(data)
    if case == "no_transcript":
        os.remove(data / "cards" / "cards.transcription")
        os.remove(data / "librivox" / "transcription")
        expected = f"--data_root {data}: no transcript file in it"
    elif case == "missing_wav":
        os.remove(data / "librivox" / "s-0870.wav")
        expected = f"{data / 'librivox' / 's-0870.wav'}: no such file (named by {data / 'librivox' / 'transcription'}:1"
    elif case == "bad_line":
        with open(data / "librivox" / "transcription", "a") as f:
            f.write("he might even\n")
        expected = f"{data / 'librivox' / 'transcription'}:2: not a transcript line"
    elif case == "no_whisper":
        args += ["--whisper_dir", str(tmp_path / "whisper")]
        expected = f"--whisper_dir {tmp_path / 'whisper'}: no such folder"
    elif case == "bad_batch":
        args += ["--batch_size", "0"]
        expected = "--batch_size must be >= 1, got 0"
    assert ev.main(args) == 2
    assert expected in caplog.text


def test_a_model_without_asr_or_no_model_is_named(tmp_path, tiny_llm_dir, tiny_whisper_dir, caplog):
    data = fake_data_root(tmp_path / "data")
    assert ev.main(["--model", str(tmp_path / "nowhere"), "--data_root", data]) == 2
    assert f"--model {tmp_path / 'nowhere'}: " in caplog.text and "neither a model archive nor a directory" in caplog.text
    vsr = write_exp_dir(tmp_path / "vsr_exp", tiny_llm_dir, tiny_whisper_dir, ["vsr"])
    assert ev.main(["--model", str(vsr), "--data_root", data]) == 2
    assert "the model was trained for vsr only, not asr" in caplog.text


def test_the_default_data_is_the_ten_pocketsphinx_recordings():
    if not os.path.isdir(ev.DEFAULT_DATA_ROOT):
        pytest.skip(f"{ev.DEFAULT_DATA_ROOT} absent: {ev.INSTALL_HINT}")
    assert ev.get_parser().parse_args(["--model", "m"]).data_root == ev.DEFAULT_DATA_ROOT
    recordings = ev.load_recordings(ev.DEFAULT_DATA_ROOT)
    assert len(recordings) == 10
    assert [r.utt_id for r in recordings[:5]] == [f"cards/00{i}" for i in range(1, 6)]
    assert all(r.utt_id.startswith("librivox/sense_and_sensibility_01_austen_64kb-") for r in recordings[5:])
    assert recordings[0].reference == "ten of clubs"
    assert recordings[5].reference.startswith("and mister john dashwood had then leisure")
    assert sum(len(ev.normalize(r.reference).split()) for r in recordings) == 92
