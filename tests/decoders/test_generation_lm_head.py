"""Generation runs the LM head as one matrix product, in every dtype.

generate() applies the head to a strided slice (the prompt's last position). Left to torch's
matmul, that slice is multiplied against one expanded copy of the (V, D) head per row (a batched
matmul), which with bf16 weights materialises every copy. The decoder makes the head's input
contiguous; these tests watch the operators generate() dispatches.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import PromptLayout


class _BatchedHeadProducts(TorchDispatchMode):
    """Counts batched matmuls whose right operand has the head's (D, V) shape per batch item."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.shape, self.count = (hidden, vocab), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default):
            rhs = args[1] if func is torch.ops.aten.bmm.default else args[2]
            if tuple(rhs.shape[-2:]) == self.shape:
                self.count += 1
        return func(*args, **(kwargs or {}))


def _prompt(dec, batch):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(batch, 5, dec.hidden_size, generator=g)
    layout = PromptLayout(dec.tokenizer)
    return layout.build(dec.embed, "asr", {"audio": (tokens, torch.full((batch,), 5))}, padding_side="left")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_head_is_one_matrix_product(tiny_llm_dir, dtype, num_beams):
    dec = HFCausalLMDecoder(model_dir=tiny_llm_dir, dtype=dtype).eval()
    vocab = dec.output_embeddings().size(0)
    mode = _BatchedHeadProducts(dec.hidden_size, vocab)
    with mode:
        out = dec.generate(_prompt(dec, 2), max_new_tokens=3, num_beams=num_beams)
    assert out.shape[0] == 2
    assert mode.count == 0


def test_the_hook_changes_no_logits(tiny_llm_dir):
    """The contiguous copy is the same numbers: the head on a strided slice and on its copy agree."""
    dec = HFCausalLMDecoder(model_dir=tiny_llm_dir).eval()
    hidden = torch.randn(3, 4, dec.hidden_size)
    head = dec.base_model.get_output_embeddings()
    strided = hidden[:, -1:, :]
    assert not strided.is_contiguous()
    expected = strided.contiguous() @ head.weight.t()
    torch.testing.assert_close(head(strided), expected)
