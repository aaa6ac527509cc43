"""The ``audio16k`` data type for ESPnet's datasets: ESPnet's ``sound`` reader, plus the rate check.

ESPnet's ``sound`` type hands the dataset the samples and drops the sampling rate, so an 8 kHz
recording given straight to training (past stage 3, which resamples everything) is read as if it
were 16 kHz: half as long, an octave up, and the model learns from it without a word of warning.
Whisper's log-mel front end and AV-HuBERT's filterbanks assume 16 kHz. This type reads the same
files (anything libsndfile reads: wav, flac, ...) and refuses any other rate with an
:class:`AudioRateError` naming the utterance, the scp and the file::

    --train_data_path_and_name_and_type dump/train/wav.scp,speech,audio16k

It is the loader the recipe and :func:`espnet_omni_avsr.names.data_args` write for the audio
modality; ``sound`` still works for files known to be 16 kHz. Registered like ``video``
(data/espnet_data_types.py), by the AVSR task module at import.
"""
import collections.abc
from typing import Iterator, Optional

import numpy as np
from espnet2.fileio.sound_scp import SoundScpReader

from espnet_omni_avsr.data.espnet_data_types import register_data_type

AUDIO_DATA_TYPE = "audio16k"
SAMPLE_RATE = 16000  # Whisper's and AV-HuBERT's input rate

_HELP = (
    f"Audio files that libsndfile reads (wav, flac, ...), refused unless sampled at {SAMPLE_RATE} Hz"
    " (ESPnet's `sound` type would read any rate as if it were the model's)."
    "\n\n"
    "   utterance_id_a a.wav\n"
    "   utterance_id_b b.flac\n"
    "   ..."
)


class AudioRateError(ValueError):
    """A recording at a sampling rate the model does not read."""


class AudioReadError(ValueError):
    """A recording libsndfile cannot read."""


class Audio16kLoader(collections.abc.Mapping):
    """``utt_id -> samples`` (1-D, or (T, C) for a multi-channel file) over a wav.scp; lazy."""

    def __init__(self, scp_path: str, float_dtype: Optional[str] = None):
        self.scp_path = scp_path
        self.reader = SoundScpReader(scp_path, dtype=float_dtype, always_2d=False)

    def _where(self, uid: str) -> str:
        return f"utterance {uid!r} in {self.scp_path}: {self.reader.get_path(uid)}"

    def __getitem__(self, uid: str) -> np.ndarray:
        try:
            rate, samples = self.reader[uid]
        except KeyError:
            raise
        except (RuntimeError, ValueError, TypeError, OSError, EOFError) as e:  # libsndfile's errors
            raise AudioReadError(f"{self._where(uid)}: not readable audio ({type(e).__name__}: {e})") from e
        if rate != SAMPLE_RATE:
            raise AudioRateError(
                f"{self._where(uid)}: sampled at {rate} Hz; the audio encoders read {SAMPLE_RATE} Hz. "
                f"Resample it (stage 3 of the recipe does, or `sox in.wav -r {SAMPLE_RATE} out.wav`)")
        return samples

    def __contains__(self, uid: object) -> bool:
        return uid in self.reader.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.reader)

    def __len__(self) -> int:
        return len(self.reader)


def audio16k_loader(path: str, float_dtype: Optional[str] = None) -> Audio16kLoader:
    """The ``DATA_TYPES["audio16k"]["func"]``: the lazy loader of one scp file."""
    return Audio16kLoader(path, float_dtype=float_dtype)


def register_audio_data_type() -> None:
    """Add the ``audio16k`` entry to ESPnet's ``DATA_TYPES``; safe to call repeatedly."""
    register_data_type(AUDIO_DATA_TYPE, audio16k_loader, _HELP, kwargs=["float_dtype"])
