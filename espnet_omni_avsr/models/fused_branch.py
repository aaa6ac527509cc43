"""The early-fused audio-visual stream (MMS-LLaMA): fusion -> compressor -> projector.

The audio and video branches run their front ends and encoders as usual; this branch joins their
features at the video rate (`fusion/`), compresses the joined stream (e.g. the AV Q-Former, whose
query count follows duration and speech rate) and projects it into the LLM. The prompt then holds
one `audiovisual` block where a late-fusion AVSR prompt holds an audio and a video block.

An optional speech-rate predictor (`speech_rate/predictor.py`, trained on its own and frozen here)
reads the audio encoder's frames and gives the compressor each utterance's rate; without one the
rate is 1.

`encode(features)` takes the modality branches' features and returns `FusedFeatures`;
`tokenize(*fused_features, condition)` makes the tokens, as a modality branch's `tokenize` does
with its own `encode`'s output.
"""
import inspect
from typing import List, Mapping, NamedTuple, Optional, Tuple

import torch

from espnet_omni_avsr.compression.abs_compressor import AbsCompressor
from espnet_omni_avsr.fusion.abs_fusion import AbsFusion
from espnet_omni_avsr.projectors.abs_projector import AbsProjector
from espnet_omni_avsr.utils.trainable import is_trainable


class FusedFeatures(NamedTuple):
    feats: torch.Tensor  # (B, T_video, D_fused)
    lengths: torch.Tensor  # (B,)
    speech_rate: Optional[torch.Tensor]  # (B,) words/s over the training mean, or None


class FusedBranch(torch.nn.Module):
    """Args:
        fusion: the audio + video -> one stream module (`fusion.abs_fusion.AbsFusion`).
        condition: the name of the one condition this stream is compressed at (a Q-Former's
            "q3": 3 queries per second; a fixed-rate compressor's rate). One only: a task read
            through the fused stream is labelled by its bare name (`names.condition_label`).
        compressor: the fused stream's compressor; projector: into the LLM's hidden size.
        speech_rate_predictor: a frozen `SpeechRatePredictor` reading the audio encoder's frames
            cut to 2 x the video frames (None: rate 1 for every utterance).
    """

    def __init__(
        self,
        fusion: AbsFusion,
        condition: str,
        compressor: AbsCompressor,
        projector: AbsProjector,
        speech_rate_predictor: Optional[torch.nn.Module] = None,
    ):
        super().__init__()
        self.fusion = fusion
        self.compressors = torch.nn.ModuleDict({str(condition): compressor})
        self.projectors = torch.nn.ModuleDict({str(condition): projector})
        self._takes_rate = "speech_rate" in inspect.signature(compressor.forward).parameters
        if speech_rate_predictor is not None:
            if not self._takes_rate:
                raise ValueError(
                    f"a speech-rate predictor is set, but the fused compressor ({type(compressor).__name__}) takes no "
                    "speech rate (use fused_compressor: qformer, or leave speech_rate_predictor out)"
                )
            if is_trainable(speech_rate_predictor):
                raise ValueError("the speech-rate predictor must be frozen inside the model (train it on its own)")
        self.speech_rate_predictor = speech_rate_predictor

    @property
    def inputs(self) -> Tuple[str, ...]:
        """The modalities fused, in the fusion's argument order."""
        return tuple(self.fusion.inputs)

    @property
    def conditions(self) -> List[str]:
        return list(self.compressors)

    def check_condition(self, condition) -> str:
        if str(condition) not in self.compressors:
            raise ValueError(f"condition {condition} is not one the fused audio-visual branch was trained at: "
                             f"{self.conditions}")
        return str(condition)

    def train(self, mode: bool = True) -> "FusedBranch":
        super().train(mode)
        if self.speech_rate_predictor is not None:
            self.speech_rate_predictor.eval()
        return self

    def predict_rate(self, audio: torch.Tensor, audio_lengths: torch.Tensor, video_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) speech rates from the audio encoder's frames, cut to 2 frames per video frame."""
        from espnet_omni_avsr.speech_rate.predictor import cut_to_video

        with torch.no_grad():
            feats, lengths = cut_to_video(audio, audio_lengths, video_lengths)
            return self.speech_rate_predictor(feats, lengths).float()

    def encode(self, features: Mapping[str, Tuple[torch.Tensor, torch.Tensor]]) -> FusedFeatures:
        """features: modality -> (features (B, T, D), lengths) of the audio and video branches (their
        encoders', or their front ends' for a branch without an encoder)."""
        missing = [m for m in self.inputs if m not in features]
        if missing:
            raise ValueError(f"the fused audio-visual branch needs {missing} features, got {sorted(features)}")
        (audio, audio_lengths), (video, video_lengths) = (features[m] for m in self.inputs)
        feats, lengths = self.fusion(audio, audio_lengths, video, video_lengths)
        rate = None
        if self.speech_rate_predictor is not None:
            rate = self.predict_rate(audio, audio_lengths, video_lengths)
        return FusedFeatures(feats, lengths, rate)

    def tokenize(self, feats, lengths, speech_rate, condition) -> Tuple[torch.Tensor, torch.Tensor]:
        """Fused features -> (LLM-sized tokens (B, N, D_llm), token counts (B,)) at a condition."""
        name = self.check_condition(condition)
        compressor = self.compressors[name]
        if self._takes_rate:
            tokens, counts = compressor(feats, lengths, speech_rate=speech_rate)
        else:
            tokens, counts = compressor(feats, lengths)
        return self.projectors[name](tokens), counts
