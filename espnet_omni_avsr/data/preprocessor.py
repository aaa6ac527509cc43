"""Per-utterance preprocessing in the data loader: LLM tokenization, input checks, training noise."""
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
from espnet2.iterators.abs_iter_factory import AbsIterFactory
from espnet2.train.preprocessor import AbsPreprocessor

from espnet_omni_avsr.decoders.llm_tokenizer import load_llm_tokenizer
from espnet_omni_avsr.names import MODALITIES, TEXT
from espnet_omni_avsr.prep.noise import NoiseAugmenter, derive_seed

DEFAULT_NOISE_SEED = 0


class AVSRPreprocessor(AbsPreprocessor):
    """Tokenizes the transcript with the LLM's own tokenizer, checks the inputs and, in training,
    adds noise to the audio.

    Errors (ValueError) name the utterance: a transcript that is empty or not text (bytes that
    are not UTF-8, lone surrogates), audio that is multi-channel, empty, not numeric or holds NaN
    or infinite samples, video frames that are not (frames, height, width) with pixels, audio and
    video whose durations disagree by more than `max_av_offset` seconds, or either longer than
    `max_duration`.

    Args:
        train: training mode (ESPnet passes it).
        tokenizer_dir: local LLM folder whose tokenizer is used (the decoder's `model_dir`).
        text_case: "lower" (default; WER is scored on lower-cased words), "upper" or "keep".
        sample_rate: audio rate in Hz; fps: video frame rate.
        max_av_offset: largest allowed |audio duration - video duration| in seconds (None: no check).
        max_duration: longest allowed audio or video in seconds (None: no limit), checked before
            anything is copied; e.g. 30 for a Whisper encoder, which reads at most 30 s.
        noise: training-time noise (``prep.noise.NoiseAugmenter``): a wav file, a folder searched
            for wavs, or a list of them (the recipes give ``dump/noise/babble.wav``); None: off.
            Only the training loader adds noise; validation and decoding stay clean.
        noise_snrs: SNRs in dB drawn uniformly per utterance; ``clean`` (or null) keeps it clean.
            The papers draw from {-5, 0, 5, 10, 15, 20, clean}.
        noise_prob: probability that an utterance is considered for noise at all.
        noise_seed: seed of the noise draws (default 0). The draws for utterance `uid` in epoch `e`
            (whether to add noise, the SNR, the noise file and offset) come from a generator seeded
            with ``derive_seed(noise_seed, f"epoch{e}/{uid}")`` (prep/noise.py: sha256 of both):
            the same noise for an utterance in every run, whatever the DataLoader worker, the
            process (DDP rank) or the order that reads it, and other noise in every epoch, drawn as
            before (each utterance and epoch independently). The epoch comes from the training
            iterator (`EpochAwareIterFactory`, set by the task); 0 until it is set.
            None: fresh random noise in every run (not reproducible).
    """

    def __init__(
        self,
        train: bool,
        tokenizer_dir: str,
        text_case: str = "lower",
        sample_rate: int = 16000,
        fps: float = 25.0,
        max_av_offset: Optional[float] = 0.5,
        max_duration: Optional[float] = None,
        text_name: str = TEXT.data_name,
        speech_name: str = MODALITIES["audio"].data_name,
        video_name: str = MODALITIES["video"].data_name,
        noise: Optional[Union[str, Sequence[str]]] = None,
        noise_snrs: Sequence[Union[float, str, None]] = (-5, 0, 5, 10, 15, 20, "clean"),
        noise_prob: float = 1.0,
        noise_seed: Optional[int] = DEFAULT_NOISE_SEED,
    ):
        super().__init__(train)
        if text_case not in ("lower", "upper", "keep"):
            raise ValueError(f"text_case must be lower, upper or keep, got {text_case!r}")
        self.tokenizer = load_llm_tokenizer(tokenizer_dir)
        self.text_case = text_case
        self.sample_rate = sample_rate
        self.fps = fps
        self.max_av_offset = max_av_offset
        if max_duration is not None and not max_duration > 0:
            raise ValueError(f"max_duration must be > 0 seconds (or None: no limit), got {max_duration!r}")
        self.max_duration = max_duration
        self.text_name, self.speech_name, self.video_name = text_name, speech_name, video_name
        self.augment = None
        self.noise_seed = None if noise_seed is None else int(noise_seed)
        self.epoch = 0
        if train and noise:
            self.augment = NoiseAugmenter(noise, [_snr(x) for x in noise_snrs], prob=noise_prob)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next utterances are read for (seeds the training noise)."""
        self.epoch = int(epoch)

    def noise_rng(self, uid: str) -> Optional[np.random.Generator]:
        """The generator of utterance `uid`'s noise draws in the current epoch (None: unseeded)."""
        if self.noise_seed is None:
            return None
        return np.random.default_rng(derive_seed(self.noise_seed, f"epoch{self.epoch}/{uid}"))

    def normalize_text(self, text: str) -> str:
        text = " ".join(text.split())
        if self.text_case == "lower":
            return text.lower()
        if self.text_case == "upper":
            return text.upper()
        return text

    def _too_long(self, uid: str, what: str, seconds: float) -> None:
        if self.max_duration is not None and seconds > self.max_duration:
            raise ValueError(f"utterance {uid}: {what} lasts {seconds:.1f} s, longer than max_duration "
                             f"{self.max_duration:g} s")

    def __call__(self, uid: str, data: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        data = dict(data)  # the caller's dict stays as it was (a second call sees the same input)
        if self.text_name in data:
            text = self.normalize_text(_transcript(uid, data[self.text_name]))
            if not text:
                raise ValueError(f"utterance {uid}: empty transcript")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            data[self.text_name] = np.asarray(ids, dtype=np.int64)
        speech = data.get(self.speech_name)
        if speech is not None:
            speech = np.asarray(speech)
            if speech.ndim == 2 and speech.shape[1] == 1:
                speech = speech[:, 0]
            if speech.ndim != 1:
                raise ValueError(f"utterance {uid}: audio must be mono, got shape {speech.shape}")
            if speech.size == 0:
                raise ValueError(f"utterance {uid}: empty audio")
            if speech.dtype.kind not in "fiu":
                raise ValueError(f"utterance {uid}: audio samples of dtype {speech.dtype} are not real numbers")
            self._too_long(uid, "audio", speech.shape[0] / self.sample_rate)
            # a float64 sum is NaN or infinite exactly when a sample is (float32 samples cannot
            # overflow it), and allocates nothing
            if speech.dtype.kind == "f" and not np.isfinite(np.sum(speech, dtype=np.float64)):
                raise ValueError(f"utterance {uid}: the audio holds NaN or infinite samples")
            speech = speech.astype(np.float32, copy=False)
            if self.augment is not None:
                speech = self.augment(speech, self.noise_rng(uid))
            data[self.speech_name] = speech
        video = data.get(self.video_name)
        if video is not None:
            if video.ndim != 3 or 0 in video.shape:
                raise ValueError(f"utterance {uid}: video must be (frames, height, width), got {video.shape}")
            self._too_long(uid, "video", video.shape[0] / self.fps)
            if speech is not None and self.max_av_offset is not None:
                a, v = speech.shape[0] / self.sample_rate, video.shape[0] / self.fps
                if abs(a - v) > self.max_av_offset:
                    raise ValueError(
                        f"utterance {uid}: audio lasts {a:.2f} s but video {v:.2f} s "
                        f"({video.shape[0]} frames at {self.fps:g} fps); the limit is {self.max_av_offset} s"
                    )
        return data


class EpochAwareIterFactory(AbsIterFactory):
    """An ESPnet iterator factory that tells the preprocessor(s) of its dataset(s) the epoch before
    building that epoch's iterator (DataLoader workers, forked or spawned when the iterator starts,
    get the preprocessor with the epoch set)."""

    def __init__(self, factory: AbsIterFactory):
        self.factory = factory
        self.preprocessors = _epoch_aware_preprocessors(factory)

    def build_iter(self, epoch: int, shuffle: Optional[bool] = None) -> Iterator:
        for pre in self.preprocessors:
            pre.set_epoch(epoch)
        return self.factory.build_iter(epoch, shuffle)


def _epoch_aware_preprocessors(factory: object, depth: int = 0) -> List[AVSRPreprocessor]:
    """The preprocessors with `set_epoch` of a factory's dataset, and of the factories it wraps
    (ESPnet's chunk iterators wrap a sequence iterator)."""
    pre = getattr(getattr(factory, "dataset", None), "preprocess", None)
    found = [pre] if callable(getattr(pre, "set_epoch", None)) else []
    if depth < 3:
        for value in vars(factory).values():
            if isinstance(value, AbsIterFactory):
                found += _epoch_aware_preprocessors(value, depth + 1)
    return found


def _transcript(uid: str, value) -> str:
    """The loader's transcript as str: ESPnet's text loader gives str; bytes must be UTF-8."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"utterance {uid}: the transcript is not UTF-8 text ({e})") from None
    if not isinstance(value, str):
        raise ValueError(f"utterance {uid}: the transcript must be text, got {type(value).__name__} {value!r:.60}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates, e.g. from a file read with errors="surrogateescape"
        raise ValueError(f"utterance {uid}: the transcript is not valid Unicode text ({e})") from None
    return value


def _snr(value: Union[float, str, None]) -> Optional[float]:
    """A noise_snrs entry: a number in dB, or clean / None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("clean", "none", "inf")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"noise_snrs: {value!r} is neither a number (dB) nor 'clean'") from None
