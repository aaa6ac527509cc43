import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from espnet_omni_avsr.bin import make_noisy_sets
from espnet_omni_avsr.prep.kaldi_dir import read_table
from espnet_omni_avsr.prep.noise import (
    NOISE_SPEAKERS,
    NoiseAugmenter,
    NoiseBank,
    babble_speakers_path,
    check_disjoint_babbles,
    make_babble,
    make_noisy_set,
    mix_at_snr,
    noisy_set_name,
    power,
    read_speaker_list,
    snr_db,
    split_speakers,
)

SR = 16000


def _speechlike(rng, seconds, f0, level):
    """A harmonic tone with syllable-like on/off envelope and a silent gap: not stationary."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 6))
    env = (np.sin(2 * np.pi * 3.0 * t) > -0.2).astype(float)
    env[: SR // 10] = 0.0
    return level * env * x / np.max(np.abs(x))


def _write_set(root, n_spk, n_utt_per_spk, seed, seconds=(0.6, 1.3)):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "wavs").mkdir()
    lines = {"wav.scp": [], "text": [], "utt2spk": [], "utt2dur": []}
    for s in range(n_spk):
        spk = f"spk{seed}{s}"
        for u in range(n_utt_per_spk):
            utt = f"{spk}-u{u}"
            x = _speechlike(rng, rng.uniform(*seconds), 90 + 40 * s, 0.3 + 0.1 * s)
            path = root / "wavs" / f"{utt}.wav"
            sf.write(str(path), x, SR, subtype="PCM_16")
            lines["wav.scp"].append(f"{utt} {path}")
            lines["text"].append(f"{utt} BIN BLUE AT F {u} NOW")
            lines["utt2spk"].append(f"{utt} {spk}")
            lines["utt2dur"].append(f"{utt} {len(x) / SR:.4f}")
    for name, ls in lines.items():
        (root / name).write_text("\n".join(ls) + "\n")
    return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("noise")
    train = _write_set(base / "train", n_spk=4, n_utt_per_spk=3, seed=1)
    test = _write_set(base / "test", n_spk=2, n_utt_per_spk=3, seed=2, seconds=(1.0, 2.5))
    babble = base / "noise" / "babble.wav"
    make_babble(train / "wav.scp", train / "utt2spk", babble, num_speakers=3, duration_s=4.0, seed=0,
                progress=False)
    return base, train, test, babble


def test_mix_at_snr_exact_and_clipping():
    rng = np.random.default_rng(0)
    s, n = rng.standard_normal(8000) * 0.1, rng.standard_normal(8000)
    for snr in (-5, 0, 7.5, 20):
        mix, gain, scale = mix_at_snr(s, n, snr)
        assert scale == 1.0
        assert snr_db(s, mix - s) == pytest.approx(snr, abs=1e-9)
    mix, gain, scale = mix_at_snr(s * 8, n, -5)  # peaks above 1: both scaled, SNR unchanged
    assert scale < 1.0 and np.max(np.abs(mix)) <= 0.99 + 1e-12
    assert snr_db(scale * s * 8, mix - scale * s * 8) == pytest.approx(-5, abs=1e-9)
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(np.zeros(10), n[:10], 0)


def test_babble_from_several_speakers(dirs):
    base, train, _, babble = dirs
    rec = json.loads(babble.with_suffix(".json").read_text())
    spk = read_table(train / "utt2spk")
    stream_spk = [st["speaker"] for st in rec["streams"]]
    assert len(stream_spk) == 3 and len(set(stream_spk)) == 3
    for st in rec["streams"]:  # every stream holds only its speaker's utterances
        assert {spk[u] for u in st["utterances"]} == {st["speaker"]}
    x, sr = sf.read(str(babble))
    assert sr == SR and len(x) == 4 * SR
    assert np.sqrt(power(x)) == pytest.approx(0.1, rel=0.05)
    # Same arguments: kept; other arguments: an error unless forced.
    assert make_babble(train / "wav.scp", train / "utt2spk", babble, num_speakers=3, duration_s=4.0,
                       seed=0, progress=False)["status"] == "skipped"
    with pytest.raises(FileExistsError, match="other arguments"):
        make_babble(train / "wav.scp", train / "utt2spk", babble, num_speakers=3, duration_s=4.0, seed=1,
                    progress=False)


def test_babble_reuses_speakers_with_a_warning_and_folds(dirs, caplog):
    base, train, _, _ = dirs
    out = base / "noise" / "babble_many.wav"
    rec = make_babble(train / "wav.scp", train / "utt2spk", out, num_speakers=6, duration_s=1.0, seed=0,
                      progress=False)
    assert len(rec["streams"]) == 6 and rec["num_distinct_speakers"] == 4
    assert "reuse a speaker" in caplog.text
    a = make_babble(train / "wav.scp", train / "utt2spk", base / "noise" / "f0.wav", num_speakers=2,
                    duration_s=1.0, speaker_fold=(0, 2), progress=False)
    b = make_babble(train / "wav.scp", train / "utt2spk", base / "noise" / "f1.wav", num_speakers=2,
                    duration_s=1.0, speaker_fold=(1, 2), progress=False)
    assert not set(a["speakers"]) & set(b["speakers"])


def _snr_rows(set_dir):
    lines = (set_dir / "snr.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {r.split("\t")[0]: dict(zip(header, r.split("\t"))) for r in lines[1:]}


def test_noisy_sets_exact_snr(dirs):
    base, _, test, babble = dirs
    for snr in (-5, 0, 10):
        out = base / noisy_set_name("test", snr)
        summary = make_noisy_set(test, out, babble, snr, seed=0, progress=False)
        assert summary["status"] == "written" and summary["num_utts"] == 6
        rows = _snr_rows(out)
        scp = read_table(out / "wav.scp")
        src = read_table(test / "wav.scp")
        assert list(scp) == list(src)
        for utt, path in scp.items():
            assert path == os.path.join(str(out), "wav", f"{utt}.wav")
            noisy, sr = sf.read(path)
            clean, _ = sf.read(src[utt])
            assert sr == SR and noisy.shape == clean.shape
            clean = clean * float(rows[utt]["clip_scale"])
            assert snr_db(clean, noisy - clean) == pytest.approx(snr, abs=0.1)
            assert float(rows[utt]["measured_snr_db"]) == pytest.approx(snr, abs=0.1)
        for name in ("text", "utt2spk", "utt2dur"):
            assert (out / name).read_text() == (test / name).read_text()
    assert _snr_rows(base / "test_snr-5")  # named as the results table expects
    # -5 dB on these loud signals clips: reported in snr.tsv and the summary
    assert any(float(r["clip_scale"]) < 1 for r in _snr_rows(base / "test_snr-5").values())


def test_same_segment_whatever_the_order_and_run(dirs, tmp_path):
    base, _, test, babble = dirs
    a = make_noisy_set(test, tmp_path / "a_snr0", babble, 0, seed=3, progress=False)
    # another set holding a subset of the utterances, in reverse order
    sub = tmp_path / "sub"
    sub.mkdir()
    lines = (test / "wav.scp").read_text().splitlines()[::-1][:4]
    (sub / "wav.scp").write_text("\n".join(lines) + "\n")
    make_noisy_set(sub, tmp_path / "b_snr0", babble, 0, seed=3, progress=False)
    ra, rb = _snr_rows(tmp_path / "a_snr0"), _snr_rows(tmp_path / "b_snr0")
    for utt in rb:
        assert ra[utt]["offset"] == rb[utt]["offset"]
        assert (tmp_path / "a_snr0" / "wav" / f"{utt}.wav").read_bytes() == \
               (tmp_path / "b_snr0" / "wav" / f"{utt}.wav").read_bytes()
    # the same segment at every SNR; another seed moves it
    r10 = _snr_rows(base / "test_snr10")
    r0 = _snr_rows(base / "test_snr0")
    assert all(r10[u]["offset"] == r0[u]["offset"] for u in r0)
    assert a["status"] == "written"
    assert any(ra[u]["offset"] != r0[u]["offset"] for u in r0)


def test_idempotent_and_guarded(dirs, tmp_path):
    _, _, test, babble = dirs
    out = tmp_path / "t_snr5"
    make_noisy_set(test, out, babble, 5, seed=0, progress=False)
    wav = next((out / "wav").iterdir())
    mtime = wav.stat().st_mtime_ns
    assert make_noisy_set(test, out, babble, 5, seed=0, progress=False)["status"] == "skipped"
    assert wav.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="other arguments"):
        make_noisy_set(test, out, babble, 5, seed=1, progress=False)
    (out / ".done").unlink()
    with pytest.raises(FileExistsError, match="without"):
        make_noisy_set(test, out, babble, 5, seed=0, progress=False)
    assert make_noisy_set(test, out, babble, 5, seed=0, force=True, progress=False)["status"] == "written"
    assert not (tmp_path / "t_snr5.partial").exists()


def test_short_noise_wraps_and_noise_dir(dirs, tmp_path):
    _, _, test, _ = dirs
    noise_dir = tmp_path / "musan" / "noise"
    noise_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(str(noise_dir / "a.wav"), rng.standard_normal(SR // 4) * 0.1, SR)  # shorter than any utterance
    sf.write(str(noise_dir / "b.wav"), rng.standard_normal((SR // 2, 2)) * 0.1, 8000)  # stereo, 8 kHz
    bank = NoiseBank.from_dir(tmp_path / "musan")
    assert len(bank) == 2 and bank.num_frames(1) == SR  # 0.5 s at 8 kHz = 1 s at 16 kHz
    out = tmp_path / "m_snr0"
    make_noisy_set(test, out, bank, 0, seed=0, progress=False)
    rows = _snr_rows(out)
    assert all(abs(float(r["measured_snr_db"])) < 0.1 for r in rows.values())


def test_augmenter(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(str(tmp_path / "n.wav"), rng.standard_normal(SR), SR, subtype="FLOAT")
    wave = (rng.standard_normal(SR // 2) * 0.05).astype(np.float32)
    aug = NoiseAugmenter(tmp_path / "n.wav", snrs=[None], prob=1.0, seed=0)
    out = aug(wave)
    assert out is not wave and np.array_equal(out, wave)
    aug = NoiseAugmenter([tmp_path / "n.wav"], snrs=[5], prob=1.0, seed=0)
    noisy, info = aug.augment(wave, np.random.default_rng(1))
    assert noisy.dtype == np.float32 and info.snr == 5 and info.noise_file.endswith("n.wav")
    clean = wave.astype(np.float64) * info.clip_scale
    assert snr_db(clean, noisy.astype(np.float64) - clean) == pytest.approx(5, abs=0.01)
    again, _ = aug.augment(wave, np.random.default_rng(1))
    assert np.array_equal(again, noisy)
    assert np.array_equal(NoiseAugmenter(tmp_path, snrs=[5], prob=0.0)(wave), wave)
    with pytest.raises(ValueError, match="prob"):
        NoiseAugmenter(tmp_path, prob=1.5)


def test_cli(dirs, tmp_path, capsys):
    base, train, test, babble = dirs
    src = tmp_path / "test"
    shutil.copytree(test, src)
    # the stage-4 call: babble from training speech, then the noisy copies
    argv = ["--train_dir", str(train), "--noise_out", str(tmp_path / "noise"), "--num_speakers", "2",
            "--babble_duration", "1", "--src", str(src), "--snrs", "-5", "5", "--no_progress"]
    assert make_noisy_sets.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[str(tmp_path / "noise" / "babble.wav")]["status"] == "written"
    assert report[str(tmp_path / "noise" / "babble_test.wav")]["status"] == "written"
    assert (tmp_path / "test_snr-5" / ".done").is_file() and (tmp_path / "test_snr5" / ".done").is_file()
    assert make_noisy_sets.main(argv) == 0  # everything complete: skipped
    assert set(r["status"] for r in json.loads(capsys.readouterr().out).values()) == {"skipped"}
    # own noise, another output root
    assert make_noisy_sets.main(["--noise", str(babble), "--src", str(src), "--snrs", "0",
                                 "--out_root", str(tmp_path / "other"), "--no_progress"]) == 0
    assert (tmp_path / "other" / "test_snr0" / "wav.scp").is_file()
    assert make_noisy_sets.main(["--noise", str(babble), "--src", str(tmp_path / "nope"), "--snrs", "0"]) == 1
    with pytest.raises(SystemExit):
        make_noisy_sets.main(["--src", str(src), "--snrs", "0"])  # no noise source
    with pytest.raises(SystemExit):  # babble speech without its folder
        make_noisy_sets.main(["--train_dir", str(train), "--src", str(src), "--snrs", "0"])
    with pytest.raises(SystemExit):
        make_noisy_sets.main(["--noise", str(babble), "--src", str(src)])  # --src without --snrs


def test_cli_without_snrs_makes_the_babble_only(dirs, tmp_path, capsys):
    """`--snrs` without values (the recipes' --snrs ""): clean test sets only, but the babble the
    training noise reads is still made."""
    _, train, test, _ = dirs
    src = tmp_path / "test"
    shutil.copytree(test, src)
    argv = ["--train_dir", str(train), "--noise_out", str(tmp_path / "noise"), "--num_speakers", "2",
            "--babble_duration", "1", "--src", str(src), "--snrs", "--no_progress"]
    assert make_noisy_sets.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report) == [str(tmp_path / "noise" / "babble.wav")]
    assert sorted(p.name for p in (tmp_path / "noise").iterdir()) == [
        "babble.json", "babble.wav", "babble_speakers.txt"]  # no test babble without noisy sets
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise", "test"]


# --------------------------------------------------------------------------- honest noise: disjoint babbles


@pytest.fixture(scope="module")
def stage5(tmp_path_factory):
    """The stage-5 call on a training set of 6 speakers: training babble, test babble, noisy sets."""
    base = tmp_path_factory.mktemp("stage5")
    train = _write_set(base / "train", n_spk=6, n_utt_per_spk=2, seed=3)
    test = _write_set(base / "test", n_spk=2, n_utt_per_spk=2, seed=4, seconds=(1.0, 2.0))
    argv = ["--train_dir", str(train), "--noise_out", str(base / "noise"), "--num_speakers", "3",
            "--babble_duration", "3", "--src", str(test), "--snrs", "0", "10", "--no_progress"]
    assert make_noisy_sets.main(argv) == 0
    return base, train, test, argv


def _babble_speakers_from_record(wav, utt2spk):
    """The speakers whose utterances the babble's streams hold (from its record, through utt2spk)."""
    rec = json.loads(wav.with_suffix(".json").read_text())
    return {utt2spk[u] for st in rec["streams"] for u in st["utterances"]}, rec


def test_training_and_test_babble_share_no_speaker(stage5):
    base, train, _, _ = stage5
    spk = read_table(train / "utt2spk")
    train_wav, test_wav = base / "noise" / "babble.wav", base / "noise" / "babble_test.wav"
    heard_train, rec_train = _babble_speakers_from_record(train_wav, spk)
    heard_test, rec_test = _babble_speakers_from_record(test_wav, spk)
    assert heard_train and heard_test and not heard_train & heard_test
    # the lists beside the babbles say exactly who is in them
    assert set(read_speaker_list(base / "noise" / "babble_speakers.txt")) == heard_train
    assert set(read_speaker_list(base / "noise" / "babble_test_speakers.txt")) == heard_test
    # the halves: fold 0 and fold 1 of the documented split, together every training speaker
    speakers = sorted(set(spk.values()))
    fold0, fold1 = split_speakers(speakers, 0, (0, 2)), split_speakers(speakers, 0, (1, 2))
    assert heard_train <= set(fold0) and heard_test <= set(fold1)
    assert sorted(fold0 + fold1) == speakers and len(fold0) == len(fold1) == 3
    assert rec_train["args"]["speaker_fold"] == [0, 2] and rec_test["args"]["speaker_fold"] == [1, 2]
    assert check_disjoint_babbles(train_wav, test_wav) == sorted(heard_test)


def test_noisy_sets_are_mixed_from_the_test_babble_only(stage5):
    """Every noisy utterance is clean speech plus a segment of the test babble (rebuilt from
    snr.tsv's offset and gain, to the 16-bit quantisation), never of the training babble."""
    base, _, test, _ = stage5
    test_babble, _ = sf.read(str(base / "noise" / "babble_test.wav"), dtype="float64")
    train_babble, _ = sf.read(str(base / "noise" / "babble.wav"), dtype="float64")
    clean = read_table(test / "wav.scp")
    for snr in (0, 10):
        out = base / noisy_set_name("test", snr)
        rows = _snr_rows(out)
        assert set(rows) == set(clean)
        for utt, row in rows.items():
            assert row["noise_file"] == str(base / "noise" / "babble_test.wav")
            x, _ = sf.read(clean[utt], dtype="float64")
            y, _ = sf.read(str(out / "wav" / f"{utt}.wav"), dtype="float64")
            off, gain, scale = int(row["offset"]), float(row["noise_gain"]), float(row["clip_scale"])
            seg = np.take(test_babble, np.arange(off, off + len(x)), mode="wrap")
            assert np.max(np.abs(y - scale * (x + gain * seg))) < 1e-4, (utt, snr)
            wrong = np.take(train_babble, np.arange(off, off + len(x)), mode="wrap")
            assert np.max(np.abs(y - scale * (x + gain * wrong))) > 1e-2  # the check can tell them apart
        # the test babble's speakers lie next to snr.tsv, and the marker records them
        assert (out / NOISE_SPEAKERS).read_text() == (base / "noise" / "babble_test_speakers.txt").read_text()
        marker = json.loads((out / ".done").read_text())
        assert marker["args"]["noise_speakers"] == read_speaker_list(out / NOISE_SPEAKERS)


def test_stage5_rerun_skips_and_restores_a_lost_list(stage5, capsys):
    base, _, _, argv = stage5
    capsys.readouterr()
    (base / "noise" / "babble_speakers.txt").unlink()
    assert make_noisy_sets.main(argv) == 0
    assert set(r["status"] for r in json.loads(capsys.readouterr().out).values()) == {"skipped"}
    assert read_speaker_list(base / "noise" / "babble_speakers.txt")  # rewritten from babble.json


def test_missing_or_shared_speaker_lists_are_errors(tmp_path, dirs):
    _, train, _, _ = dirs
    a = make_babble(train / "wav.scp", train / "utt2spk", tmp_path / "a.wav", num_speakers=2, duration_s=1.0,
                    progress=False)
    b = make_babble(train / "wav.scp", train / "utt2spk", tmp_path / "b.wav", num_speakers=2, duration_s=1.0,
                    speaker_fold=(1, 2), progress=False)
    assert babble_speakers_path(tmp_path / "a.wav") == tmp_path / "a_speakers.txt"
    if set(a["speakers"]) & set(b["speakers"]):
        with pytest.raises(ValueError, match="share"):
            check_disjoint_babbles(tmp_path / "a.wav", tmp_path / "b.wav")
    # the same speakers on both sides: always shared
    with pytest.raises(ValueError, match="share"):
        check_disjoint_babbles(tmp_path / "a.wav", tmp_path / "a.wav")
    (tmp_path / "b_speakers.txt").unlink()
    with pytest.raises(FileNotFoundError, match="b_speakers.txt"):
        check_disjoint_babbles(tmp_path / "a.wav", tmp_path / "b.wav")


def test_babble_of_another_training_set_is_not_reused(tmp_path):
    """The babble's record holds a hash of the training speakers: the same path with other
    speakers is an error, not a silent skip (the halves could then overlap)."""
    train = _write_set(tmp_path / "train", n_spk=4, n_utt_per_spk=1, seed=5)
    make_babble(train / "wav.scp", train / "utt2spk", tmp_path / "n" / "babble.wav", num_speakers=2,
                duration_s=1.0, speaker_fold=(0, 2), progress=False)
    spk = read_table(train / "utt2spk")  # one speaker renamed
    (train / "utt2spk").write_text("".join(f"{u} {s.replace('spk53', 'spk99')}\n" for u, s in spk.items()))
    with pytest.raises(FileExistsError, match="other arguments"):
        make_babble(train / "wav.scp", train / "utt2spk", tmp_path / "n" / "babble.wav", num_speakers=2,
                    duration_s=1.0, speaker_fold=(0, 2), progress=False)


def test_own_noise_for_the_noisy_sets_keeps_the_training_babble(dirs, tmp_path, capsys):
    """--noise_dir with --train_dir: the training babble is made (the configs' training noise), the
    noisy sets are mixed with the given noise only, and no test babble is made."""
    _, train, test, _ = dirs
    noise_dir = tmp_path / "musan"
    noise_dir.mkdir()
    sf.write(str(noise_dir / "n.wav"), np.random.default_rng(0).standard_normal(SR) * 0.1, SR)
    src = tmp_path / "test"
    shutil.copytree(test, src)
    argv = ["--train_dir", str(train), "--noise_out", str(tmp_path / "noise"), "--num_speakers", "2",
            "--babble_duration", "1", "--noise_dir", str(noise_dir), "--src", str(src), "--snrs", "5",
            "--no_progress"]
    assert make_noisy_sets.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "noise").iterdir()) == [
        "babble.json", "babble.wav", "babble_speakers.txt"]
    rows = _snr_rows(tmp_path / "test_snr5")
    assert {r["noise_file"] for r in rows.values()} == {str(noise_dir / "n.wav")}
    assert not (tmp_path / "test_snr5" / NOISE_SPEAKERS).exists()
