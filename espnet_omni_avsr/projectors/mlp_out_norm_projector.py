"""Two-layer MLP projector followed by a LayerNorm on its output (`audio_projector: mlp_out_norm`).

Llama-AVSR's `--layernorm-projector True` (the "pre-fusion LayerNorm" of its attention-sink
checkpoints) and Omni-AVSR's single-projector configurations put `nn.LayerNorm(llm_hidden)` after
the second linear layer: Linear -> ReLU -> Linear -> LayerNorm. `MLPProjector`'s optional
LayerNorm normalises the *input* instead, so those checkpoints need this order to be imported
exactly (utils/official_checkpoints.py).
"""
import torch

from espnet_omni_avsr.projectors.mlp_projector import MLPProjector


class MLPOutNormProjector(MLPProjector):
    """Linear(input_size, hidden_size) -> ReLU -> Linear(hidden_size, output_size) -> LayerNorm(output_size).

    xs: (B, T, input_size) -> (B, T, output_size); works on any leading shape.

    Args:
        input_size, output_size, hidden_size: as MLPProjector.
        eps: the LayerNorm's epsilon (torch's default, 1e-5, as the official code).
    """

    def __init__(self, input_size: int = 1024, output_size: int = 2048, hidden_size: int = 2048, eps: float = 1e-5):
        super().__init__(input_size=input_size, output_size=output_size, hidden_size=hidden_size, layer_norm=False)
        self.out_norm = torch.nn.LayerNorm(output_size, eps=eps)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return self.out_norm(super().forward(xs))  # (B, T, output_size)
