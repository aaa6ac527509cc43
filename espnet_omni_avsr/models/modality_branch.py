"""One modality's path from raw input to LLM-sized tokens: front end -> encoder -> compressor -> projector."""
from typing import Optional, Tuple

import torch

from espnet_omni_avsr.compression.abs_compressor import AbsCompressor
from espnet_omni_avsr.projectors.abs_projector import AbsProjector


def _trainable(module: Optional[torch.nn.Module]) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())


class ModalityBranch(torch.nn.Module):
    """Audio or video tokens for the LLM.

    `encode` runs the (usually frozen) front end and encoder; `tokenize` compresses and projects.
    They are separate so that one encoding can feed several compression rates (matryoshka
    training). Frozen parts run under no_grad.

    Args:
        frontend: raw input (B, S, ...) + lengths -> features (B, T, F) + lengths.
        encoder: ESPnet AbsEncoder, (B, T, F) -> (B, T', D) (None: the front end's features).
        compressor: (B, T', D) -> (B, ceil(T'/rate), D').
        projector: (B, T'', D') -> (B, T'', llm_hidden).
    """

    def __init__(
        self,
        frontend: torch.nn.Module,
        encoder: Optional[torch.nn.Module],
        compressor: AbsCompressor,
        projector: AbsProjector,
    ):
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder
        self.compressor = compressor
        self.projector = projector

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and _trainable(self.frontend)):
            feats, lengths = self.frontend(x, lengths)
        if self.encoder is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and _trainable(self.encoder)):
                feats, lengths, _ = self.encoder(feats, lengths)
        return feats, lengths

    def tokenize(self, feats: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        tokens, lengths = self.compressor(feats, lengths)
        return self.projector(tokens), lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.tokenize(*self.encode(x, lengths))
