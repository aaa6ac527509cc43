"""One modality's path from raw input to LLM-sized tokens: front end -> encoder -> compressor -> projector.

A branch may compress at several *conditions* (matryoshka training, elastic inference): one
compressor per condition, and one projector per condition or one shared by all. A condition is named
by a string: today a compression rate ("4": T -> ceil(T / 4) tokens); a compressor whose token count
follows something else (a query budget) is one more name. A compressor returns tokens and their
lengths, and nothing downstream derives a count from the name.
"""
from typing import List, Mapping, Optional, Tuple, Union

import torch

from espnet_omni_avsr.compression.abs_compressor import AbsCompressor
from espnet_omni_avsr.projectors.abs_projector import AbsProjector
from espnet_omni_avsr.utils.trainable import is_trainable


class ModalityBranch(torch.nn.Module):
    """Audio or video tokens for the LLM.

    `encode` runs the (usually frozen) front end and encoder once; `tokenize` compresses and
    projects at one rate, so one encoding can feed several rates. Frozen parts run under no_grad.

    Args:
        frontend: raw input (B, S, ...) + lengths -> features (B, T, F) + lengths.
        encoder: ESPnet AbsEncoder, (B, T, F) -> (B, T', D) (None: the front end's features).
        compressors: condition -> compressor, (B, T', D) -> (B, T'', D_c) tokens + lengths (B,);
            conditions are strings or integer rates (kept as strings, in the given order). None
            or empty: the branch only encodes (its features feed an early fusion, `FusedBranch`).
        projectors: condition -> projector into the LLM's hidden size, or one projector for all.
    """

    def __init__(
        self,
        frontend: torch.nn.Module,
        encoder: Optional[torch.nn.Module],
        compressors: Optional[Mapping[int, AbsCompressor]] = None,
        projectors: Union[Mapping[int, AbsProjector], AbsProjector, None] = None,
    ):
        super().__init__()
        compressors = compressors or {}
        if projectors is None:
            projectors = {}
        self.frontend = frontend
        self.encoder = encoder
        self.compressors = torch.nn.ModuleDict({str(r): c for r, c in compressors.items()})
        if isinstance(projectors, torch.nn.Module):
            sizes = {c.output_size() for c in compressors.values()}
            if len(sizes) > 1:
                raise ValueError(f"one shared projector needs one compressor output size, got {sorted(sizes)}")
            self.projectors = torch.nn.ModuleDict({"shared": projectors})
        else:
            if set(projectors) != set(compressors):
                raise ValueError(f"projector rates {sorted(projectors)} differ from compressor rates {sorted(compressors)}")
            self.projectors = torch.nn.ModuleDict({str(r): p for r, p in projectors.items()})

    def train(self, mode: bool = True) -> "ModalityBranch":
        """An encoder with nothing to train stays in eval mode (no dropout, fixed BatchNorm
        statistics), also one without a `frozen` flag of its own (ESPnet's). Front ends keep their
        mode: their data augmentation follows training even when their weights are frozen."""
        super().train(mode)
        if self.encoder is not None and not is_trainable(self.encoder):
            self.encoder.eval()
        return self

    @property
    def conditions(self) -> List[str]:
        """The trained conditions, in configuration order (the first is the default)."""
        return list(self.compressors)

    @property
    def rates(self) -> List[int]:
        """The trained compression rates (for a branch whose conditions are integer rates)."""
        return [int(c) for c in self.compressors]

    @property
    def feature_size(self) -> int:
        """Dimension of `encode`'s features (the encoder's output, else the front end's)."""
        return (self.encoder if self.encoder is not None else self.frontend).output_size()

    def check_condition(self, condition) -> str:
        """The condition's name, or a clear error for one the branch was not trained at."""
        if not self.compressors:
            raise ValueError("this branch makes no tokens of its own (no compressor: its features feed the fusion)")
        if str(condition) not in self.compressors:
            trained = [int(c) if c.isdigit() else c for c in self.compressors]
            kind = "rate" if str(condition).isdigit() else "condition"
            raise ValueError(f"{kind} {condition} is not one this branch was trained at: {trained}")
        return str(condition)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and is_trainable(self.frontend)):
            feats, lengths = self.frontend(x, lengths)
        if self.encoder is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and is_trainable(self.encoder)):
                feats, lengths, _ = self.encoder(feats, lengths)
        return feats, lengths

    def tokenize(self, feats: torch.Tensor, lengths: torch.Tensor, condition) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encoder features -> (LLM-sized tokens (B, T'', D_llm), lengths (B,)) at a condition."""
        name = self.check_condition(condition)
        tokens, lengths = self.compressors[name](feats, lengths)
        projector = self.projectors["shared"] if "shared" in self.projectors else self.projectors[name]
        return projector(tokens), lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, condition=None) -> Tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = self.encode(x, lengths)
        return self.tokenize(feats, lengths, self.conditions[0] if condition is None else condition)
