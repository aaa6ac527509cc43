"""The inference library class: load a trained model and transcribe audio, video or both."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from espnet_omni_avsr.names import MODALITIES
from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

_INPUTS = tuple(k for m in MODALITIES.values() for k in (m.data_name, m.lengths_name))
_MODEL_FILES = ("model.pth", "valid.acc.ave.pth", "valid.acc.best.pth", "valid.loss.best.pth", "latest.pth")


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
        max_new_tokens: longest transcript in LLM tokens.

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
        max_new_tokens: int = 32,
    ):
        model, args = AVSRLLMTask.build_model_from_file(train_config, None, device)
        if model_file is not None:
            state = torch.load(model_file, map_location=device, weights_only=True)
            model.load_state_dict(state, strict=True)  # frozen pretrained weights may be absent
        model.eval()
        self.model = model
        self.args = args
        self.device = device
        self.task = task or model.task
        self.rates = dict(rates or {})
        self.beam_size = beam_size
        self.max_new_tokens = max_new_tokens
        self.preprocess = AVSRLLMTask.build_preprocess_fn(args, train=False)
        self.collate = AVSRLLMTask.build_collate_fn(args, train=False)

    @classmethod
    def from_pretrained(
        cls, model: Union[str, Path], cache_dir: Optional[Union[str, Path]] = None, **kwargs
    ) -> "AVSRRecognizer":
        """Load from a packed archive (.tar / .tar.gz from the recipe's stage 12) or a directory with
        config.yaml and weights (a training exp dir or an unpacked archive).

        An archive is unpacked once into `cache_dir` (default: ~/.cache/espnet_omni_avsr/<name>).
        """
        model = Path(model)
        if model.is_file():
            from espnet_omni_avsr.utils.model_archive import unpack_model

            name = model.name.split(".")[0]
            dest = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "espnet_omni_avsr" / name
            config, weights = unpack_model(model, dest)
            return cls(config, weights, **kwargs)
        config = model / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{model} is neither a model archive nor a directory with config.yaml")
        for name in _MODEL_FILES:
            if (model / name).is_file():
                return cls(config, model / name, **kwargs)
        raise FileNotFoundError(f"{model} has none of {list(_MODEL_FILES)}")

    def recognize_batch(self, batch: Dict[str, torch.Tensor]) -> Dict[str, list]:
        """A collated batch (speech/video with lengths) -> {"text": [...], "llm_tokens": [...]}."""
        batch = {k: v.to(self.device) for k, v in batch.items() if k in _INPUTS}
        texts, n_tokens = self.model.recognize(
            **batch, task=self.task, rates=self.rates, max_new_tokens=self.max_new_tokens, num_beams=self.beam_size
        )
        return {"text": texts, "llm_tokens": n_tokens.tolist()}

    def __call__(
        self,
        speech: Optional[Union[np.ndarray, torch.Tensor]] = None,
        video: Optional[Union[np.ndarray, torch.Tensor]] = None,
    ) -> str:
        """One utterance: speech (S,) 16 kHz float waveform and/or video (T, H, W) uint8 mouth frames."""
        return self.transcribe([dict(speech=speech, video=video)])[0]

    def transcribe(self, utterances: Sequence[Dict[str, np.ndarray]]) -> List[str]:
        """Several utterances decoded as one batch."""
        items = []
        for i, utt in enumerate(utterances):
            data = {k: np.asarray(v) for k, v in utt.items() if v is not None}
            if self.preprocess is not None:
                data = self.preprocess(f"utt{i}", data)
            items.append((f"utt{i}", data))
        _, batch = self.collate(items)
        return self.recognize_batch(batch)["text"]

