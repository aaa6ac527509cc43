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

    Errors name the utterance: an empty transcript, multi-channel audio, or audio and video
    whose durations disagree by more than `max_av_offset` seconds.

    Args:
        train: training mode (ESPnet passes it).
        tokenizer_dir: local LLM folder whose tokenizer is used (the decoder's `model_dir`).
        text_case: "lower" (default; WER is scored on lower-cased words), "upper" or "keep".
        sample_rate: audio rate in Hz; fps: video frame rate.
        max_av_offset: largest allowed |audio duration - video duration| in seconds (None: no check).
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

    def __call__(self, uid: str, data: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.text_name in data:
            text = self.normalize_text(str(data[self.text_name]))
            if not text:
                raise ValueError(f"utterance {uid}: empty transcript")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            data[self.text_name] = np.asarray(ids, dtype=np.int64)
        speech = data.get(self.speech_name)
        if speech is not None:
            if speech.ndim == 2 and speech.shape[1] == 1:
                speech = speech[:, 0]
            if speech.ndim != 1:
                raise ValueError(f"utterance {uid}: audio must be mono, got shape {speech.shape}")
            if speech.size == 0:
                raise ValueError(f"utterance {uid}: empty audio")
            speech = speech.astype(np.float32, copy=False)
            if self.augment is not None:
                speech = self.augment(speech, self.noise_rng(uid))
            data[self.speech_name] = speech
        video = data.get(self.video_name)
        if video is not None:
            if video.ndim != 3 or video.shape[0] == 0:
                raise ValueError(f"utterance {uid}: video must be (frames, height, width), got {video.shape}")
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


def _snr(value: Union[float, str, None]) -> Optional[float]:
    """A noise_snrs entry: a number in dB, or clean / None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("clean", "none", "inf")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"noise_snrs: {value!r} is neither a number (dB) nor 'clean'") from None
