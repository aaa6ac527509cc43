"""What one pass of the LLM returns: the record that loss terms and analysis tools read."""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch


@dataclass
class LLMOutput:
    """The outputs of `HFCausalLMDecoder.forward(prompt)`.

    last_hidden_state: (B, N, D), after the LLM's final norm.
    scored: (B, N) bool, the positions whose next token is scored (`Prompt.next_token_targets()`
        != IGNORE_ID); logits: (K, V) float32, the LM head at those positions only, in row-major
        order (the LM head over every position of a 128k vocabulary would dominate memory).
    hidden_states (on request): a tuple of L + 1 tensors (B, N, D), Hugging Face's convention:
        [0] the input embeddings, [l] the output of layer l for l = 1 .. L-1, [L] the final normed
        output (= last_hidden_state). Layers 1 .. L-1 are hidden_states[1:-1].
    attentions (on request, eager attention only): a tuple of L tensors (B, heads, N, N), the
        softmax weights of each layer.
    aux_losses: the LLM adapter's own losses from this pass (e.g. a router's load balance), by name.
    """

    last_hidden_state: torch.Tensor
    scored: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None
    attentions: Optional[Tuple[torch.Tensor, ...]] = None
    aux_losses: Dict[str, torch.Tensor] = field(default_factory=dict)
