"""A new LLM adapter fits through the interface alone: its modules inside the LLM, the prompt's
token-type map before each pass, its own loss weighted into the total. Nothing in the model changes."""
import torch

from espnet_omni_avsr.adapters.abs_llm_adapter import AbsLLMAdapter
from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import TokenType
from espnet_omni_avsr.losses.adapter_loss import AdapterLoss
from espnet_omni_avsr.losses.llm_cross_entropy import LLMCrossEntropy
from espnet_omni_avsr.models.avsr_llm_model import AVSRLLMModel
from tests.models.conftest import build, tiny_config
from tests.models.test_avsr_llm_model import make_batch


class GatedMLPAdapter(AbsLLMAdapter):
    """A toy stand-in for MoME: a trainable gate on each layer's MLP output, applied only at
    modality positions, and a penalty on the gates as its own loss."""

    def wrap(self, llm):
        self.gates = []
        self.prompts = []
        for layer in llm.model.layers:
            layer.mlp.gate_scale = torch.nn.Parameter(torch.zeros(()))  # lives inside the LLM's module tree
            self.gates.append(layer.mlp.gate_scale)
            layer.mlp.register_forward_hook(self._hook)
        return llm

    def _hook(self, module, inputs, output):
        where = self.where.to(output.dtype)[..., None]
        return output * (1 + module.gate_scale * where)

    def prepare(self, prompt):
        self.prompts.append(prompt)
        self.where = prompt.modality_mask()

    def aux_losses(self):
        return {"gate_penalty": sum(g ** 2 for g in self.gates) + 1.0}

    def loss_terms(self):
        return [AdapterLoss("gate_penalty", weight=0.5)]


def test_a_new_adapter_fits_without_touching_the_model(tiny_llm_dir, tiny_whisper_dir):
    torch.manual_seed(0)
    reference, _ = build(tiny_config(tiny_llm_dir, tiny_whisper_dir))
    adapter = GatedMLPAdapter(tasks=["avsr"])
    decoder = HFCausalLMDecoder(model_dir=tiny_llm_dir, adapter=adapter)
    model = AVSRLLMModel(decoder, reference.audio, reference.video, losses=[LLMCrossEntropy("llm"), *adapter.loss_terms()])
    batch = make_batch(decoder.tokenizer)
    loss, stats, _ = model(**batch)
    assert set(stats) == {"acc", "gate_penalty", "loss"}
    assert stats["gate_penalty"] == 1.0
    assert torch.allclose(loss, stats["loss"]) and stats["loss"] > 0.5  # the LLM loss + 0.5 * penalty
    (prompt,) = adapter.prompts[:1]
    assert prompt.tasks == ["avsr", "avsr"] and (prompt.token_types == TokenType.AUDIO).any()
    loss.backward()
    assert all(g.grad is not None and g.requires_grad for g in adapter.gates)
    # the adapter's parameters sit inside the LLM and are saved with the model
    assert sum("gate_scale" in k for k in model.state_dict()) == len(adapter.gates)
