"""data/espnet_audio_type.py: ESPnet reads wav scps through `audio16k`, which refuses other rates."""
import re

import numpy as np
import pytest
import soundfile
from espnet2.train.dataset import DATA_TYPES, ESPnetDataset
from espnet2.train.iterable_dataset import IterableESPnetDataset

from espnet_omni_avsr.data.espnet_audio_type import AUDIO_DATA_TYPE, AudioRateError, AudioReadError, \
    audio16k_loader, register_audio_data_type
from espnet_omni_avsr.data.espnet_data_types import register_data_type


@pytest.fixture
def scp(tmp_path):
    rng = np.random.default_rng(0)
    rates = {"u16k": 16000, "u8k": 8000, "u44k": 44100}
    lines = []
    for uid, rate in rates.items():
        path = tmp_path / f"{uid}.wav"
        soundfile.write(path, (rng.standard_normal(rate // 2) * 0.1).astype(np.float32), rate)
        lines.append(f"{uid} {path}\n")
    (tmp_path / "bad.wav").write_bytes(b"RIFF not a wav")
    lines.append(f"ubad {tmp_path / 'bad.wav'}\n")
    (tmp_path / "wav.scp").write_text("".join(lines))
    return tmp_path / "wav.scp"


def test_register_is_idempotent_and_not_shadowed():
    register_audio_data_type()
    register_audio_data_type()
    assert DATA_TYPES[AUDIO_DATA_TYPE]["func"] is audio16k_loader
    assert DATA_TYPES[AUDIO_DATA_TYPE]["kwargs"] == ["float_dtype"]
    # ESPnet matches types by prefix in order: a name starting with an existing key is refused
    with pytest.raises(RuntimeError, match="'sound' would match it first"):
        register_data_type("sound16k", audio16k_loader, "help")


def test_16k_is_read_as_espnet_reads_it(scp):
    register_audio_data_type()
    ours = ESPnetDataset([(str(scp), "speech", AUDIO_DATA_TYPE)])["u16k"][1]["speech"]
    espnets = ESPnetDataset([(str(scp), "speech", "sound")])["u16k"][1]["speech"]
    assert ours.dtype == np.float32 and ours.shape == (8000,)
    np.testing.assert_array_equal(ours, espnets)


@pytest.mark.parametrize("uid,rate", [("u8k", 8000), ("u44k", 44100)])
def test_other_rates_are_refused_by_name(scp, uid, rate):
    register_audio_data_type()
    dataset = ESPnetDataset([(str(scp), "speech", AUDIO_DATA_TYPE)])
    where = re.escape(f"utterance {uid!r} in {scp}: {scp.parent / uid}.wav")
    with pytest.raises(AudioRateError, match=f"{where}: sampled at {rate} Hz; .* 16000 Hz"):
        dataset[uid]
    # ESPnet's own `sound` type reads it without a word (what this type exists to stop)
    assert ESPnetDataset([(str(scp), "speech", "sound")])[uid][1]["speech"].shape == (rate // 2,)


def test_unreadable_file_is_named(scp):
    register_audio_data_type()
    dataset = ESPnetDataset([(str(scp), "speech", AUDIO_DATA_TYPE)])
    with pytest.raises(AudioReadError, match=re.escape(f"utterance 'ubad' in {scp}: ") + ".*bad.wav: not readable"):
        dataset["ubad"]


def test_iterable_dataset_reads_it(scp, tmp_path):
    register_audio_data_type()
    good = tmp_path / "good.scp"
    good.write_text(scp.read_text().splitlines()[0] + "\n")
    shapes = {uid: d["speech"].shape for uid, d in IterableESPnetDataset([(str(good), "speech", AUDIO_DATA_TYPE)])}
    assert shapes == {"u16k": (8000,)}
