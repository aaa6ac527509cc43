import itertools
import os
import re
import subprocess
import sys

import pytest
import yaml

from espnet_omni_avsr import names
from espnet_omni_avsr.names import (
    condition_label,
    data_args,
    data_triples,
    decode_dir,
    decode_jobs,
    dump_set_name,
    find_decode_dirs,
    format_snr,
    noisy_set_name,
    parse_condition_label,
    parse_decode_dir,
    parse_noisy_set_name,
    parse_snr_dir,
    snr_dir,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_registry_values():
    a, v = names.MODALITIES["audio"], names.MODALITIES["video"]
    assert (a.data_name, a.scp, a.loader, a.tag, a.delimiters) == ("speech", "wav.scp", "audio16k", "a",
                                                                   ("<audio>", "</audio>"))
    assert (v.data_name, v.scp, v.loader, v.tag, v.delimiters) == ("video", "video.scp", "video", "v",
                                                                   ("<video>", "</video>"))
    assert a.lengths_name == "speech_lengths" and a.noisy and not v.noisy
    assert names.TASK_MODALITIES == {"asr": ("audio",), "vsr": ("video",), "avsr": ("audio", "video")}
    assert names.DEFAULT_INSTRUCTIONS == {"asr": "Transcribe speech to text.", "vsr": "Transcribe video to text.",
                                          "avsr": "Transcribe speech and video to text."}
    with pytest.raises(Exception):
        a.tag = "x"  # frozen
    twin = names.Modality("lips", data_name="lips", scp="lips.scp", loader="video", tag="a", open_token="<lips>",
                          close_token="</lips>")
    with pytest.raises(ValueError, match="share a tag"):
        names._check_distinct({"audio": a, "lips": twin})
    with pytest.raises(ValueError, match="tag 'a1'"):
        names.Modality("x", data_name="x", scp="x.scp", loader="sound", tag="a1", open_token="<x>", close_token="</x>")
    with pytest.raises(ValueError, match="'lips'"):
        names.Task("lipsr", ("lips",), "Read the lips.")


def test_derived_tables_agree():
    from espnet_omni_avsr.decoders.llm_tokenizer import MODALITY_TOKENS, special_tokens
    from espnet_omni_avsr.decoders.prompt import DEFAULT_INSTRUCTIONS
    from espnet_omni_avsr.utils import rates

    assert MODALITY_TOKENS == {"audio": ("<audio>", "</audio>"), "video": ("<video>", "</video>")}
    assert special_tokens() == ["<audio>", "</audio>", "<video>", "</video>"]
    assert DEFAULT_INSTRUCTIONS == names.DEFAULT_INSTRUCTIONS
    assert rates.TASK_MODALITIES is names.TASK_MODALITIES and rates.condition_label is condition_label


def test_labels_byte_identical_for_integer_rates():
    def old(task, rates):  # the rule the existing result directories were written with
        return f"{task}_" + "".join(f"{m[0]}{rates[m]}" for m in names.TASK_MODALITIES[task])

    for task, mods in names.TASK_MODALITIES.items():
        for combo in itertools.product([1, 2, 4, 5, 10, 16, 25], repeat=len(mods)):
            r = dict(zip(mods, combo))
            assert condition_label(task, r) == old(task, r)
            assert parse_condition_label(old(task, r)) == (task, r)
    assert condition_label("asr", {"audio": 4}) == "asr_a4"
    assert condition_label("vsr", {"video": 2}) == "vsr_v2"
    assert condition_label("avsr", {"audio": 4, "video": 2}) == "avsr_a4v2"
    assert condition_label("asr", {"audio": 4, "video": 2}) == "asr_a4"  # modalities it does not read


@pytest.mark.parametrize("task,conds,label", [
    ("asr", {"audio": "q3"}, "asr_aq3"),
    ("vsr", {"video": "q16"}, "vsr_vq16"),
    ("avsr", {"audio": "q3", "video": 2}, "avsr_aq3v2"),
    ("avsr", {"audio": 4, "video": "q3"}, "avsr_a4vq3"),
    ("avsr", {"audio": "q3", "video": "q32"}, "avsr_aq3vq32"),
    ("avsr", {"audio": "va1", "video": "aa2"}, "avsr_ava1vaa2"),  # names may hold the other tags' letters
    ("avsr", {"audio": 0, "video": 100}, "avsr_a0v100"),
    ("asr", {}, "asr"),
])
def test_label_round_trips(task, conds, label):
    assert condition_label(task, conds) == label
    assert parse_condition_label(label) == (task, conds)


@pytest.mark.parametrize("label,message", [
    ("xsr_a4", "'xsr' is not a task"),
    ("avsr_a4", "expected 'v<condition>' for video"),
    ("avsr_v2a4", "expected 'a<condition>' for audio"),
    ("avsr_a4v2x", "unexpected 'x'"),
    ("avsr_a04v2", "leading zero"),
    ("asr_aq", "expected 'a<condition>'"),
    ("asr_", "expected 'a<condition>'"),
    ("asr_A4", "expected 'a<condition>'"),
    ("odd-label", "'odd-label' is not a task"),
])
def test_bad_label_names_it(label, message):
    with pytest.raises(ValueError, match=f"condition label '{label}'") as e:
        parse_condition_label(label)
    assert message in str(e.value)


@pytest.mark.parametrize("conds,message", [
    ({"audio": -1, "video": 2}, "audio condition -1"),
    ({"audio": 2.5, "video": 2}, "audio condition 2.5"),
    ({"audio": True, "video": 2}, "audio condition True"),
    ({"audio": "Q3", "video": 2}, "audio condition 'Q3'"),
    ({"audio": "q", "video": 2}, "audio condition 'q'"),
    ({"audio": "3q", "video": 2}, "audio condition '3q'"),
    ({"audio": 4}, "no condition for ['video']"),
    ({"audio": 4, "video": 2, "lips": 1}, "unknown modality 'lips'"),
])
def test_bad_conditions(conds, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        condition_label("avsr", conds)
    with pytest.raises(ValueError, match="unknown task 'xsr'"):
        condition_label("xsr", {"audio": 4})


def test_noisy_set_names_round_trip():
    for snr, name in [(-5, "test_snr-5"), (0, "test_snr0"), (10.0, "test_snr10"), (2.5, "test_snr2.5"),
                      (-0.5, "test_snr-0.5")]:
        assert noisy_set_name("test", snr) == name
        assert parse_noisy_set_name(name) == ("test", float(snr))
    assert parse_noisy_set_name("my_snr_set_snr-5") == ("my_snr_set", -5.0)
    assert dump_set_name("test", None) == "test" and dump_set_name("test", -5) == "test_snr-5"
    for bad in ("test", "test_snr", "_snr5", "test_snrx"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_noisy_set_name(bad)
    for bad in (float("nan"), float("inf"), 1e-7, "loud", None):
        with pytest.raises(ValueError, match="SNR"):
            format_snr(bad)


def test_the_prep_and_scoring_names_are_these():
    from espnet_omni_avsr.prep import noise
    from espnet_omni_avsr.scoring import results_table

    assert noise.noisy_set_name is noisy_set_name and noise.format_snr is format_snr
    assert results_table.dump_set_name is dump_set_name


def test_decode_dirs(tmp_path):
    assert snr_dir(None) == "snr_clean" and snr_dir(-5) == "snr_-5" and snr_dir(2.5) == "snr_2.5"
    assert parse_snr_dir("snr_clean") is None and parse_snr_dir("snr_-5") == -5.0
    with pytest.raises(ValueError, match="snr_loud"):
        parse_snr_dir("snr_loud")
    path = decode_dir("exp/m", "greedy", "test", "avsr_a4v2", -5)
    assert path == "exp/m/decode_greedy/test/avsr_a4v2/snr_-5"
    d = parse_decode_dir(path)
    assert (d.exp_dir, d.inference_tag, d.test_set, d.label, d.snr) == ("exp/m", "greedy", "test", "avsr_a4v2", -5.0)
    assert d.path == path and d.dump_set == "test_snr-5"
    assert parse_decode_dir(decode_dir("exp/m", "greedy", "test", "asr_a4")).dump_set == "test"
    with pytest.raises(ValueError, match="exp/m/test/asr/snr_0"):
        parse_decode_dir("exp/m/test/asr/snr_0")
    with pytest.raises(ValueError, match="label 'a/b'"):
        decode_dir("exp/m", "greedy", "test", "a/b")

    exp = str(tmp_path / "m")
    for label, snr in [("asr_a4", None), ("asr_a4", -5), ("vsr_v2", None)]:
        os.makedirs(decode_dir(exp, "greedy", "test", label, snr))
    os.makedirs(decode_dir(exp, "beam4", "test", "asr_a4"))
    found = find_decode_dirs(exp, "greedy")
    assert [p for p, _ in found] == sorted(decode_dir(exp, "greedy", "test", lab, s)
                                           for lab, s in [("asr_a4", None), ("asr_a4", -5), ("vsr_v2", None)])
    assert [d.dump_set for _, d in found] == ["test_snr-5", "test", "test"]


def test_data_args():
    assert data_triples("dump/test", ["video"]) == [("dump/test/video.scp", "video", "video")]
    assert data_args("dump/train", prefix="train", text=True) == [
        "--train_data_path_and_name_and_type", "dump/train/wav.scp,speech,audio16k",
        "--train_data_path_and_name_and_type", "dump/train/video.scp,video,video",
        "--train_data_path_and_name_and_type", "dump/train/text,text,text"]
    assert data_args("d", names.TASK_MODALITIES["asr"]) == ["--data_path_and_name_and_type", "d/wav.scp,speech,audio16k"]
    with pytest.raises(ValueError, match="unknown modality 'lips'"):
        data_args("d", ["lips"])


def test_decode_jobs_rows():
    conds = [dict(task="asr", label="asr_a4", rates={"audio": 4}),
             dict(task="vsr", label="vsr_v2", rates={"video": 2}),
             dict(task="avsr", label="avsr_a4v2", rates={"audio": 4, "video": 2})]
    rows = decode_jobs(conds, ["test"], [0, -5], "dump", "exp/m", "greedy")
    assert rows == [
        ["asr", "dump/test", "exp/m/decode_greedy/test/asr_a4/snr_clean", "4", "-"],
        ["asr", "dump/test_snr0", "exp/m/decode_greedy/test/asr_a4/snr_0", "4", "-"],
        ["asr", "dump/test_snr-5", "exp/m/decode_greedy/test/asr_a4/snr_-5", "4", "-"],
        ["vsr", "dump/test", "exp/m/decode_greedy/test/vsr_v2/snr_clean", "-", "2"],  # noise touches audio only
        ["avsr", "dump/test", "exp/m/decode_greedy/test/avsr_a4v2/snr_clean", "4", "2"],
        ["avsr", "dump/test_snr0", "exp/m/decode_greedy/test/avsr_a4v2/snr_0", "4", "2"],
        ["avsr", "dump/test_snr-5", "exp/m/decode_greedy/test/avsr_a4v2/snr_-5", "4", "2"],
    ]


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "espnet_omni_avsr.names", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_cli(tmp_path):
    def out(*args):
        proc = _cli(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.rstrip("\n")

    assert out("data-args", "--prefix", "train", "--dir", "dump/train") == (
        "--train_data_path_and_name_and_type dump/train/wav.scp,speech,audio16k "
        "--train_data_path_and_name_and_type dump/train/video.scp,video,video "
        "--train_data_path_and_name_and_type dump/train/text,text,text")
    assert out("data-args", "--dir", "d", "--modalities", "video", "--no_text") == \
        "--data_path_and_name_and_type d/video.scp,video,video"
    assert out("noisy-set", "test", "-5") == "test_snr-5" and out("noisy-set", "test", "2.50") == "test_snr2.5"
    assert out("modality", "audio", "scp") == "wav.scp" and out("modality", "audio", "data_name") == "speech"
    assert out("label", "avsr", "4", "q3") == "avsr_a4vq3" and out("label", "asr") == "asr"
    assert out("parse-label", "avsr_a4v2") == "avsr\t4\t2" and out("parse-label", "vsr_vq3") == "vsr\t-\tq3"
    assert out("decode-dir", "--exp_dir", "exp/m", "--inference_tag", "greedy", "--test_set", "test",
               "--label", "asr_a4", "--snr", "-5") == "exp/m/decode_greedy/test/asr_a4/snr_-5"
    bad = _cli("parse-label", "avsr_a4")
    assert bad.returncode == 1 and "condition label 'avsr_a4'" in bad.stderr
    bad = _cli("label", "avsr", "4")
    assert bad.returncode == 1 and "avsr needs 2 conditions" in bad.stderr

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"audio_frontend": "whisper", "audio_rates": [4, 16], "video_frontend": "pixel",
                                      "video_compressor_conf": {"rate": 2}, "model_conf": {"tasks": ["asr", "avsr"]}}))
    jobs = out("decode-jobs", "--config", str(config), "--test_sets", "test", "--snrs=-5", "--dump_dir", "dump",
               "--exp_dir", "exp/m", "--inference_tag", "greedy").split("\n")
    assert jobs[0] == "asr\tdump/test\texp/m/decode_greedy/test/asr_a4/snr_clean\t4\t-"
    assert jobs[-1] == "avsr\tdump/test_snr-5\texp/m/decode_greedy/test/avsr_a16v2/snr_-5\t16\t2"
    assert len(jobs) == 2 * 2 * 2
    rates = subprocess.run([sys.executable, "-m", "espnet_omni_avsr.utils.rates", "--config", str(config),
                            "--tasks", "vsr avsr"], env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert rates == ["vsr\tvsr_v2\t-\t2", "avsr\tavsr_a4v2\t4\t2", "avsr\tavsr_a16v2\t16\t2"]

    exp = tmp_path / "exp" / "m"
    for d in ("decode_greedy/test/asr_a4/snr_clean", "decode_greedy/test/asr_a4/snr_-5"):
        (exp / d).mkdir(parents=True)
    listed = out("decode-dirs", "--exp_dir", str(exp), "--inference_tag", "greedy", "--dump_dir", "dump")
    assert listed.split("\n") == [f"{exp}/decode_greedy/test/asr_a4/snr_-5\tdump/test_snr-5",
                                  f"{exp}/decode_greedy/test/asr_a4/snr_clean\tdump/test"]
    none = _cli("decode-dirs", "--exp_dir", str(exp), "--inference_tag", "beam4", "--dump_dir", "dump")
    assert none.returncode == 1 and "no decoding directories" in none.stderr


def test_module_imports_nothing_heavy():
    code = ("import sys, espnet_omni_avsr.names; "
            "print(sorted(m for m in ('torch', 'espnet2', 'yaml', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_parse_conditions_reads_the_conditions_part_of_a_label():
    from espnet_omni_avsr.names import parse_conditions

    assert parse_conditions("a16v5") == {"audio": 16, "video": 5}
    assert parse_conditions("avsr_a4v2") == {"audio": 4, "video": 2}
    assert parse_conditions("v2") == {"video": 2}
    assert parse_conditions("aq3v2") == {"audio": "q3", "video": 2}
    for bad in ("audio=16", "", "a16x", "v2a4"):
        with pytest.raises(ValueError, match="expected conditions such as a16v5"):
            parse_conditions(bad)
