"""An input's signal-to-noise ratio, estimated from its audio alone (no reference, no model).

Rule (energy-based, :func:`estimate_snr`):

1. the waveform (its mean removed) is cut into frames of ``FRAME_SECONDS`` (25 ms), and the power
   of each window of ``WINDOW_FRAMES`` (2) adjacent frames is the mean of its squared samples
   (50 ms windows every 25 ms: long enough to smooth a babble's syllable-rate ups and downs,
   short enough to fit between words);
2. the *noise floor* starts as the mean power of the quietest ``NOISE_FRACTION`` (10 %, at least
   3) of the windows, and is then refined: it becomes the mean power of every window within
   ``FLOOR_RANGE_DB`` (2 dB) above it, again and again until it stops changing (the pauses'
   windows scatter around the noise's mean power, not below it: the quietest windows alone
   would put the floor under the noise's mean, the more so the more the noise fluctuates);
3. the total power P_x is the mean power of all samples; speech and noise being independent, the
   speech power is P_x - P_n, and::

       SNR = 10 log10((P_x - P_n) / P_n)   dB

That is the definition the noisy test sets are mixed at (``prep/noise.py``: powers over *all*
samples of the utterance, pauses included), so an estimate is comparable to the ``snr_<X>``
decodings of the recipe. The value is clamped to [``MIN_SNR_DB``, ``MAX_SNR_DB``] (-20, 60): a
clean recording with digitally silent pauses reads as 60 dB, noise without speech as about -10.

Limits (what the rule assumes):

* the speech has pauses (between words, before and after the sentence) covering at least about
  ``NOISE_FRACTION`` of the windows; in continuous speech without any, the quietest windows hold
  speech, the floor is too high and the SNR is underestimated (by up to about 3 dB at 0 dB for
  synthetic speech with short word gaps);
* the noise is about as loud in the pauses as on average: stationary noise (white, fan, car) or a
  babble of many talkers (the recipe's is 30). A babble of few talkers, music or bursts fluctuate
  more than the 50-ms windows smooth: the floor lands in their dips and the SNR is
  overestimated: by 2-35 dB for a 6-talker babble (measured as below);
* a "clean" recording measures its own background: a studio clip reads 40-60 dB, a phone video in
  a room perhaps 20-30 dB (which it is);
* clips shorter than ``MIN_FRAMES`` frames (0.5 s) or digitally silent ones give None.

Measured (synthetic voiced speech with pauses, and espeak-ng sentences, 6 seeds each, mixed with
``prep.noise.mix_at_snr``): error within [-2.6, +0.1] dB for white noise and [-2.1, +2.1] dB for a
30-talker babble at 0, 10 and 20 dB (tests/inference/test_token_budget.py checks 3 dB).
"""
import math
from typing import Optional

import numpy as np

MIN_SNR_DB = -20.0
MAX_SNR_DB = 60.0
FRAME_SECONDS = 0.025
WINDOW_FRAMES = 2
NOISE_FRACTION = 0.1
FLOOR_RANGE_DB = 2.0
MIN_FRAMES = 20
_MAX_ITERATIONS = 50


def frame_powers(x: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS) -> np.ndarray:
    """The mean squared sample of each whole frame of ``frame_seconds`` (the mean of x removed)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    size = max(1, int(round(frame_seconds * sample_rate)))
    n = len(x) // size
    if n == 0:
        return np.zeros(0)
    x = x[: n * size] - x.mean()
    return np.mean(x.reshape(n, size) ** 2, axis=1)


def noise_floor(window_powers: np.ndarray, noise_fraction: float = NOISE_FRACTION,
                floor_range_db: float = FLOOR_RANGE_DB) -> float:
    """Step 2 of the rule: the noise power from the windows' powers."""
    p = np.asarray(window_powers, dtype=np.float64)
    k = min(len(p), max(3, int(math.ceil(noise_fraction * len(p)))))
    floor = float(np.partition(p, k - 1)[:k].mean())
    ratio = 10.0 ** (floor_range_db / 10.0)
    for _ in range(_MAX_ITERATIONS):
        near = p[p <= floor * ratio]
        new = float(near.mean()) if len(near) else floor
        if new == floor:
            break
        floor = new
    return floor


def estimate_snr(x: np.ndarray, sample_rate: int, frame_seconds: float = FRAME_SECONDS,
                 noise_fraction: float = NOISE_FRACTION) -> Optional[float]:
    """The SNR of a mono waveform in dB by the rule of the module docstring; None for a clip too
    short (fewer than MIN_FRAMES frames) or digitally silent."""
    if not 0.0 < noise_fraction < 1.0:
        raise ValueError(f"noise_fraction must be in (0, 1), got {noise_fraction}")
    p = frame_powers(x, sample_rate, frame_seconds)
    if len(p) < MIN_FRAMES:
        return None
    total = float(p.mean())
    if not math.isfinite(total) or total <= 0.0:
        return None
    windows = np.convolve(p, np.ones(WINDOW_FRAMES) / WINDOW_FRAMES, mode="valid")
    floor = noise_floor(windows, noise_fraction)
    if floor <= total * 10.0 ** (-MAX_SNR_DB / 10.0):
        return MAX_SNR_DB
    speech = total - floor
    if speech <= floor * 10.0 ** (MIN_SNR_DB / 10.0):
        return MIN_SNR_DB
    return float(min(MAX_SNR_DB, 10.0 * math.log10(speech / floor)))
