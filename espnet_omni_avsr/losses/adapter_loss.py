"""An LLM adapter's own loss (e.g. MoME's router load balance), weighted into the training loss.

The adapter computes the loss during the LLM pass and the decoder returns it in
`LLMOutput.aux_losses`; this term averages it over the step's passes. The adapter itself supplies
these terms (`AbsLLMAdapter.loss_terms()`), so a config cannot forget them.
"""
from espnet_omni_avsr.losses.abs_loss_term import AbsLossTerm, LossOutput


class AdapterLoss(AbsLossTerm):
    """Args:
        key: the name of the loss in `LLMOutput.aux_losses`.
        name: statistics name (default: the key); weight: its weight in the total loss.
    """

    uses_llm = True

    def __init__(self, key: str, weight: float = 1.0, name: str = None):
        super().__init__(name or key, weight)
        self.key = key

    def forward(self, step) -> LossOutput:
        values = [p.output.aux_losses[self.key] for p in step.llm_passes if self.key in p.output.aux_losses]
        if not values:
            raise RuntimeError(f"loss term {self.name!r}: no LLM pass of this step returned the adapter loss {self.key!r}")
        loss = sum(values) / len(values)
        return LossOutput(loss, {self.name: loss.detach()})
