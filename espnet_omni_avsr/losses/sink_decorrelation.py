"""Attention-sink decorrelation: push the LLM's hidden states of the prompt's prefix tokens away
from the direction of its first token (BOS), layer by layer.

Fine-tuned audio-visual LLMs grow attention sinks not only at BOS but at intermediate, low-semantic
prefix tokens, whose hidden states align with BOS's (see ../shared/ANCHORS.md, "Attention sinks and
massive activations"). The loss is, over the chosen layers, the mean over layers of the mean over
prefix positions t other than the anchor of cos^2(h_anchor, h_t).

- Prefix positions: BOS, the modality delimiters, the modality tokens and the instruction, read off
  the prompt's token-type map; transcript, EOS and padding never count. (The official code pads the
  modality tokens inside the prefix and averages over the padded positions too; here they are not
  prefix positions, so an utterance's loss does not depend on the batch it is in.)
- Anchor: BOS; for tokenizers without BOS (Qwen2.5) the first prefix position plays its role.
- Layers: `LLMOutput.hidden_states` indices, 1 = the output of the first layer; the default
  1 .. L-1 leaves out the embedding output (0) and the last, normed output (L).
- The mean over positions pools every (sequence, position) pair of the step's LLM passes.
"""
from typing import Optional, Sequence, Tuple

import torch

from espnet_omni_avsr.decoders.prompt import TokenType
from espnet_omni_avsr.losses.abs_loss_term import AbsLossTerm, LossOutput

PREFIX_TYPES = (
    TokenType.BOS,
    TokenType.MODALITY_OPEN,
    TokenType.MODALITY_CLOSE,
    TokenType.AUDIO,
    TokenType.VIDEO,
    TokenType.INSTRUCTION,
)


def prefix_mask(token_types: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: the prefix positions (everything the model reads before the transcript)."""
    return torch.isin(token_types, torch.tensor([int(t) for t in PREFIX_TYPES], device=token_types.device))


def anchor_positions(token_types: torch.Tensor) -> torch.Tensor:
    """(B,) the index of each row's anchor: its first prefix position (BOS when the tokenizer has one)."""
    prefix = prefix_mask(token_types)
    if not prefix.any(1).all():
        raise ValueError("sink decorrelation: a prompt row has no prefix position")
    return prefix.float().argmax(1)


def compared_positions(token_types: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(anchor index (B,), (B, N) bool of the prefix positions other than the anchor): the same for
    every layer of a pass."""
    prefix = prefix_mask(token_types)
    anchor = anchor_positions(token_types)
    prefix[torch.arange(token_types.size(0), device=token_types.device), anchor] = False
    return anchor, prefix


def cos2_sums(hidden: torch.Tensor, anchor: torch.Tensor, prefix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For one layer's (B, N, D) hidden states: (sum over rows and the `prefix` positions of
    cos^2(h_anchor, h_t), number of such positions)."""
    rows = torch.arange(hidden.size(0), device=hidden.device)
    h = hidden.float()
    cos = torch.nn.functional.cosine_similarity(h, h[rows, anchor][:, None, :], dim=-1, eps=1e-6)  # (B, N)
    return (cos.pow(2) * prefix).sum(), prefix.sum()


class SinkDecorrelation(AbsLossTerm):
    """`type: sink_decorrelation`, conf: `layers: [first, last]` (hidden-state indices, inclusive;
    default 1 .. L-1). The official weight is 1e4 (the cos^2 values are small once trained).

    compute(hidden_states (a tuple of (B, N, D), index 0 the embeddings), token_types (B, N)) -> loss.
    """

    uses_llm = True
    llm_outputs = ("hidden_states",)

    def __init__(self, name: str = "sink_decorrelation", weight: float = 1e4, layers: Optional[Sequence[int]] = None):
        super().__init__(name, weight)
        if layers is not None and (len(layers) != 2 or not 1 <= int(layers[0]) <= int(layers[1])):
            raise ValueError(f"sink_decorrelation: layers must be [first, last] with 1 <= first <= last, got {layers}")
        self.layers = None if layers is None else (int(layers[0]), int(layers[1]))

    @classmethod
    def build(cls, parts, name=None, weight=1e4, layers=None) -> "SinkDecorrelation":
        n = parts.decoder.num_layers
        if layers is not None and int(layers[1]) > n - 1:
            raise ValueError(f"sink_decorrelation: layers {list(layers)} go past the LLM's layer {n - 1} "
                             f"(it has {n} layers; hidden state {n} is the final normed output)")
        return cls(name=name or "sink_decorrelation", weight=weight, layers=layers)

    def layer_range(self, n_hidden: int) -> range:
        first, last = self.layers or (1, n_hidden - 2)
        if last > n_hidden - 2:
            raise ValueError(f"sink_decorrelation: layer {last} is not an intermediate layer of this LLM "
                             f"(hidden states 1 .. {n_hidden - 2})")
        return range(first, last + 1)

    def compute(self, hidden_states: Sequence[torch.Tensor], token_types: torch.Tensor) -> torch.Tensor:
        return self._mean([self._sums(hidden_states, token_types)])

    def _sums(self, hidden_states, token_types):
        anchor, prefix = compared_positions(token_types)
        return [cos2_sums(hidden_states[i], anchor, prefix) for i in self.layer_range(len(hidden_states))]

    @staticmethod
    def _mean(per_pass) -> torch.Tensor:
        """Mean over layers of (sum over passes) / (count over passes)."""
        per_layer = []
        for layer in zip(*per_pass):
            total = sum(s for s, _ in layer)
            count = sum(c for _, c in layer)
            per_layer.append(total / count.clamp_min(1))
        return sum(per_layer) / len(per_layer)

    def forward(self, step) -> LossOutput:
        per_pass = [self._sums(p.output.hidden_states, p.prompt.token_types) for p in step.llm_passes]
        loss = self._mean(per_pass)
        return LossOutput(loss, {self.name: loss.detach()})
