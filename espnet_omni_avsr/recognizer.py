"""The inference library class: load a trained model and transcribe audio, video or both.

Decoding is deterministic (greedy, or beam search with HF ``num_beams``; never sampling), and an
utterance decodes to the same hypothesis alone and inside a padded batch.

Transcript length (``max_new_tokens``): a fixed number when given; otherwise each utterance gets
its own budget from its duration (the longest of the streams its task reads)::

    max_new_tokens = ceil(seconds * CHARS_PER_SECOND * tokens_per_char) + TOKEN_MARGIN

with ``CHARS_PER_SECOND = 20`` (fast read speech is about 15 characters a second, spaces
included) and ``TOKEN_MARGIN = 16``; ``tokens_per_char`` is measured once with the model's own
tokenizer on :data:`BUDGET_REFERENCE_TEXT` (in the model's text case), so the budget follows the
tokenizer (about 0.25 tokens a character for Llama 3 / SmolLM2: 5 tokens a second, 166 for a
30-s segment). In a batch, a row whose budget is spent is made to end (EOS is forced at that
step), so that it gets exactly the hypothesis it gets alone.
"""
import math
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from espnet_omni_avsr.names import MODALITIES, TASK_MODALITIES
from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
from espnet_omni_avsr.utils.safe_checkpoint import load_weights

_INPUTS = tuple(k for m in MODALITIES.values() for k in (m.data_name, m.lengths_name))
_MODEL_FILES = ("model.pth", "valid.acc.ave.pth", "valid.acc.best.pth", "valid.loss.best.pth", "latest.pth")

CHARS_PER_SECOND = 20.0
TOKEN_MARGIN = 16
BUDGET_REFERENCE_TEXT = (
    "the quick brown fox jumps over the lazy dog while seven blue birds sing about green hills and "
    "quiet rivers; she said that they would meet again at twelve o'clock near the old railway station"
)


class _EndAtBudget:
    """A logits processor that forces EOS in every row (beam) of utterance b once b has
    generated budgets[b] tokens. With `inputs_embeds` prompts, generate's `input_ids` hold the
    generated tokens only, so their length is the step."""

    def __init__(self, budgets: Sequence[int], eos_id: int, num_beams: int):
        self.budgets = torch.as_tensor(list(budgets), dtype=torch.long).repeat_interleave(num_beams)
        self.eos_id = int(eos_id)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        done = self.budgets.to(scores.device) <= input_ids.shape[1]
        if done.any():
            scores = scores.clone()
            scores[done] = -float("inf")
            scores[done, self.eos_id] = 0.0
        return scores


def _lengths_before_eos(ids: torch.Tensor, eos_id: int) -> List[int]:
    """Generated tokens of each row up to (without) its first EOS."""
    is_eos = ids == eos_id
    first = torch.where(is_eos.any(1), is_eos.long().argmax(1), torch.full_like(ids[:, 0], ids.size(1)))
    return first.tolist()


class AVSRRecognizer:
    """Transcribe with a trained model, one utterance or a batch at a time.

    Args:
        train_config: the `config.yaml` written by training.
        model_file: the trained weights (`*.pth`); None keeps the freshly built model.
        device: "cpu", "cuda", "cuda:N".
        task: "asr", "vsr" or "avsr" (default: the task the model was trained for).
        rates: modality -> compression rate, e.g. {"audio": 16, "video": 5} (elastic inference;
            default: the first trained rate of each modality). Untrained rates are refused.
        beam_size: 1 = greedy.
        max_new_tokens: longest transcript in LLM tokens; None: from each utterance's duration
            (module docstring).
        length_penalty: beam search's exponent on the hypothesis length (HF `length_penalty`;
            > 0 favours longer hypotheses); unused by greedy search.

    Example:
        >>> rec = AVSRRecognizer.from_pretrained("exp/multitask_small/packed/multitask_small.tar")
        >>> rec(speech=waveform, video=frames)
    """

    def __init__(
        self,
        train_config: Union[str, Path],
        model_file: Optional[Union[str, Path]] = None,
        device: str = "cpu",
        task: Optional[str] = None,
        rates: Optional[Dict[str, int]] = None,
        beam_size: int = 1,
        max_new_tokens: Optional[int] = None,
        length_penalty: float = 1.0,
    ):
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (or None: from the duration), got {max_new_tokens}")
        # the weights first: a file that is refused (its pickle names code) or unreadable fails fast
        state = None if model_file is None else load_weights(model_file, what="model file", map_location=device)
        model, args = AVSRLLMTask.build_model_from_file(train_config, None, device)
        if state is not None:
            model.load_state_dict(state, strict=True)  # frozen pretrained weights may be absent
        model.eval()
        self.model = model
        self.args = args
        self.device = device
        self.task = task or model.task
        self.rates = dict(rates or {})
        self.beam_size = beam_size
        self.max_new_tokens = max_new_tokens
        self.length_penalty = float(length_penalty)
        self.preprocess = AVSRLLMTask.build_preprocess_fn(args, train=False)
        self.collate = AVSRLLMTask.build_collate_fn(args, train=False)
        conf = dict(getattr(args, "preprocessor_conf", None) or {})
        self.sample_rate = int(conf.get("sample_rate", 16000))
        self.fps = float(conf.get("fps", 25.0))
        tokenizer = model.decoder.tokenizer
        reference = BUDGET_REFERENCE_TEXT
        if self.preprocess is not None and hasattr(self.preprocess, "normalize_text"):
            reference = self.preprocess.normalize_text(reference)
        self.tokens_per_char = len(tokenizer(reference, add_special_tokens=False)["input_ids"]) / len(reference)
        self._record_at: Optional[tuple] = None  # (model dir, weights) for `meta`, set by from_pretrained
        self._meta: Optional[Dict] = None

    @classmethod
    def from_pretrained(
        cls, model: Union[str, Path], cache_dir: Optional[Union[str, Path]] = None, **kwargs
    ) -> "AVSRRecognizer":
        """Load from a packed archive (.tar / .tar.gz from the recipe's stage 12) or a directory with
        config.yaml and weights (a training exp dir or an unpacked archive).

        An archive is unpacked once into `cache_dir` (default: ~/.cache/espnet_omni_avsr/<name>).
        A file that is not a tar archive is a ValueError naming it.
        """
        model = Path(model)
        if model.is_file():
            from espnet_omni_avsr.utils.model_archive import unpack_model

            name = model.name.split(".")[0]
            dest = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "espnet_omni_avsr" / name
            try:
                config, weights = unpack_model(model, dest)
            except tarfile.TarError as e:
                raise ValueError(
                    f"{model} is not a model archive (a .tar / .tar.gz written by pack_model): {e}"
                ) from None
            return cls._with_record(cls(config, weights, **kwargs), dest, weights)
        config = model / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{model} is neither a model archive nor a directory with config.yaml")
        for name in _MODEL_FILES:
            if (model / name).is_file():
                return cls._with_record(cls(config, model / name, **kwargs), model, model / name)
        raise FileNotFoundError(f"{model} has none of {list(_MODEL_FILES)}")

    @staticmethod
    def _with_record(rec: "AVSRRecognizer", directory: Path, weights: Path) -> "AVSRRecognizer":
        rec._record_at = (Path(directory), Path(weights))
        return rec

    @property
    def meta(self) -> Dict:
        """What the model's folder records about it (read on first use): an archive's meta.yaml, or
        for a training exp dir its validation losses and scored decodings
        (`utils.model_archive.model_record`); {} for a model not loaded by `from_pretrained`."""
        if self._meta is None:
            self._meta = {}
            if self._record_at is not None:
                from espnet_omni_avsr.utils.model_archive import model_record

                self._meta = model_record(*self._record_at)
        return self._meta

    # ---------------------------------------------------------------------------------------------
    @property
    def trained_tasks(self) -> List[str]:
        """The tasks the model was trained for (the first is its default)."""
        return list(self.model.tasks)

    def conditions_of(self, task: Optional[str] = None, rates: Optional[Dict] = None) -> Dict[str, Union[int, str]]:
        """stream -> the condition (rate) `task` decodes at: `rates` (default: the recognizer's),
        else the first trained one. The streams are the task's modalities, or the fused
        `audiovisual` stream of an early-fused model. Integer rates come back as int."""
        rates = self.rates if rates is None else rates
        out = {}
        for m in self.model.task_streams(task or self.task):
            c = self.model.stream_branches[m].check_condition(rates.get(m, self.model.conditions(m)[0]))
            out[m] = int(c) if c.isdigit() else c
        return out

    def check_rates(self) -> None:
        """ValueError naming a modality the model has no branch for or a rate it was not trained at."""
        for m, rate in self.rates.items():
            if m not in self.model.branches:
                raise ValueError(f"rate for {m}: the model has no {m} branch (it has {sorted(self.model.branches)})")
            try:
                self.model.branches[m].check_condition(rate)
            except ValueError as e:
                raise ValueError(f"{m} {e}") from None

    def input_limit_seconds(self) -> Optional[float]:
        """The longest input the model's encoders take, in seconds; None when none states a limit.
        Whisper: its positional table (max_source_positions x conv stride feature frames at the
        front end's hop: 30 s); a front end that pads to 30 s: its window."""
        limits = []
        for branch in self.model.branches.values():
            frontend, encoder = branch.frontend, branch.encoder
            frames = getattr(encoder, "exact_length", None)
            hop, rate = getattr(frontend, "hop_length", None), getattr(frontend, "sampling_rate", None)
            if frames and hop and rate:
                limits.append(frames * hop / rate)
            if getattr(frontend, "pad_to_30s", False) and rate:
                limits.append(frontend.n_samples / rate)
        return min(limits) if limits else None

    def count_tokens(self, text: str) -> int:
        """LLM tokens of a transcript, re-tokenized."""
        return len(self.model.decoder.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def decoding_options(self) -> Dict:
        return {"beam_size": self.beam_size, "length_penalty": self.length_penalty,
                "max_new_tokens": self.max_new_tokens if self.max_new_tokens is not None else "from duration",
                "device": str(self.device)}

    def budget(self, seconds: float) -> int:
        """max_new_tokens for an utterance of `seconds` (module docstring)."""
        return int(math.ceil(max(0.0, seconds) * CHARS_PER_SECOND * self.tokens_per_char - 1e-9)) + TOKEN_MARGIN

    def durations(self, batch: Dict[str, torch.Tensor], task: Optional[str] = None) -> List[float]:
        """Seconds of each utterance of a collated batch: the longest of the streams `task` reads."""
        task = task or self.task
        per_unit = {"audio": self.sample_rate, "video": self.fps}
        seconds = None
        for m in TASK_MODALITIES[task]:
            lengths = batch.get(MODALITIES[m].lengths_name)
            if lengths is None:
                continue
            s = lengths.detach().cpu().double() / per_unit.get(m, 1.0)
            seconds = s if seconds is None else torch.maximum(seconds, s)
        if seconds is None:
            raise ValueError(f"task {task!r} needs {list(TASK_MODALITIES[task])} in the batch")
        return seconds.tolist()

    def recognize_batch(self, batch: Dict[str, torch.Tensor], task: Optional[str] = None,
                        rates: Optional[Dict] = None) -> Dict[str, list]:
        """A collated batch (speech/video with lengths) -> {"text", "llm_tokens" (LLM input tokens
        from the modalities), "max_new_tokens" (each utterance's budget), "generated_tokens"
        (before EOS)}. `rates`: stream -> condition for this batch (default: the recognizer's)."""
        task = task or self.task
        rates = self.rates if rates is None else rates
        kwargs = {}
        if self.max_new_tokens is not None:
            budgets = [self.max_new_tokens] * len(next(iter(batch.values())))
            kwargs["max_new_tokens"] = self.max_new_tokens
        else:
            budgets = [self.budget(s) for s in self.durations(batch, task)]
            from transformers import LogitsProcessorList

            # one step more than the largest budget: every row then ends by the forced EOS, alone as in a batch
            kwargs["max_new_tokens"] = max(budgets) + 1
            kwargs["logits_processor"] = LogitsProcessorList(
                [_EndAtBudget(budgets, self.model.decoder.eos_id, self.beam_size)])
        if self.beam_size > 1:
            kwargs["length_penalty"] = self.length_penalty
        batch = {k: v.to(self.device) for k, v in batch.items() if k in _INPUTS}
        ids, n_tokens = self.model.generate_ids(**batch, task=task, rates=rates, num_beams=self.beam_size,
                                                **kwargs)
        return {"text": self.model.hypotheses(ids), "llm_tokens": n_tokens.tolist(), "max_new_tokens": budgets,
                "generated_tokens": _lengths_before_eos(ids, self.model.decoder.eos_id)}

    def __call__(
        self,
        speech: Optional[Union[np.ndarray, torch.Tensor]] = None,
        video: Optional[Union[np.ndarray, torch.Tensor]] = None,
    ) -> str:
        """One utterance: speech (S,) 16 kHz float waveform and/or video (T, H, W) uint8 mouth frames."""
        return self.transcribe([dict(speech=speech, video=video)])[0]

    def decode(self, utterances: Sequence[Dict[str, np.ndarray]], task: Optional[str] = None,
               rates: Optional[Dict] = None) -> Dict[str, list]:
        """Several utterances ({"speech": (S,), "video": (T, H, W)}, either may be absent) decoded as one
        batch (at `rates`, default the recognizer's) -> recognize_batch's dict."""
        items = []
        for i, utt in enumerate(utterances):
            data = {k: np.asarray(v) for k, v in utt.items() if v is not None}
            if self.preprocess is not None:
                data = self.preprocess(f"utt{i}", data)
            items.append((f"utt{i}", data))
        _, batch = self.collate(items)
        return self.recognize_batch(batch, task, rates)

    def transcribe(self, utterances: Sequence[Dict[str, np.ndarray]], task: Optional[str] = None) -> List[str]:
        """Several utterances decoded as one batch -> their transcripts."""
        return self.decode(utterances, task)["text"]
