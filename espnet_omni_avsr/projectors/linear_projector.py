"""Single linear projector into the LLM's embedding space."""
import torch

from espnet_omni_avsr.projectors.abs_projector import AbsProjector


class LinearProjector(AbsProjector):
    """[LayerNorm] -> Linear(input_size, output_size).

    xs: (B, T, input_size) -> (B, T, output_size); works on any leading shape.
    """

    def __init__(self, input_size: int = 1024, output_size: int = 2048, layer_norm: bool = False):
        super().__init__()
        for name, value in (("input_size", input_size), ("output_size", output_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LinearProjector: {name} must be an integer >= 1, got {value!r}")
        self.input_size = input_size
        self._output_size = output_size
        self.norm = torch.nn.LayerNorm(input_size) if layer_norm else torch.nn.Identity()
        self.linear = torch.nn.Linear(input_size, output_size)

    def output_size(self) -> int:
        return self._output_size

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        if xs.size(-1) != self.input_size:
            raise ValueError(f"LinearProjector: expected last dim {self.input_size}, got shape {tuple(xs.shape)}")
        return self.linear(self.norm(xs))  # (B, T, output_size)
