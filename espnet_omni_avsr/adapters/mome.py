"""MoME (mixture of matryoshka experts) inside the frozen LLM: `llm_adapter: mome`.

Per LLM layer one `MoMELayer` (adapters/mome_experts.py): N_r routed bottleneck experts with top-k
gating and N_s shared experts. It sits in parallel to the layer's self-attention (`placement: mhsa`),
to its feed-forward block (`ffn`) or to the whole decoder layer (`layer`): it reads the hidden state
entering that block and its output is added to the block's output. A forward hook on the block does
this, and the module is a child of the decoder layer (`...layers.<i>.mome`), so checkpoints hold it
and the LLM's own parameter names do not change. One router and one expert set serve every task and
every compression-rate pair: there are no per-task or per-rate parameters, so all of a step's
sequences share one LLM pass.

Choices (flags, since the paper as summarised does not settle them):
- `renormalize: true` (default): the gate weights of the chosen k experts are their router
  probabilities divided by their sum (= a softmax over the top-k logits, as Mixtral). The routed
  experts then contribute with total weight 1 however flat the router is; without it, a near-uniform
  router at the start (23 experts, top-4) would give them a total weight of about 4/23, a sixth of the
  shared expert's fixed weight 1.
- `tokens: all` (default): every position that is not padding goes through the router and the
  experts, the standard mixture-of-experts setting and what a module "parallel to the layer"
  implies. `modality_text`: audio and video tokens, instruction, transcript and EOS only (BOS and the
  four modality delimiters stay with the frozen LLM). Padding never goes through: its outputs are
  never read, and it would skew the balance statistics. In cached decoding (`generate`) the new
  positions are transcript tokens, so they are selected under either flag.
- The balance loss is the Switch Transformer's, N_r * sum_i f_i * P_i over the selected tokens of a
  pass, with f_i the fraction of the k * T expert slots that went to expert i (the fraction of tokens
  whose top-k holds i, divided by k) and P_i the mean router probability of i; its value under
  perfectly even routing is 1 for every k. It is averaged over layers. The formula MoME uses is not
  verified (shared/ANCHORS.md); this one is stated instead.
- dtype: the experts and the router are float32 whatever the LLM's dtype; the hook casts the hidden
  state to float32, and the module's output back to the LLM's dtype before the addition.

Gradient checkpointing (`decoder_conf.gradient_checkpointing`) works: the recomputation of a layer in
backward runs its hooks again, and the decoder's checkpoint context (`HFCausalLMDecoder.
_checkpoint_contexts`) calls `prepare` with that layer's own pass's prompt first, so the hooks read
the token selection of the pass being recomputed, not of the step's last pass. The balance statistics
recorded again during recomputation are never read (the loss was taken in forward).
"""
import functools
import logging
from typing import Dict, List, Optional, Sequence

import torch

from espnet_omni_avsr.adapters.abs_llm_adapter import AbsLLMAdapter
from espnet_omni_avsr.adapters.mome_experts import MoMELayer
from espnet_omni_avsr.decoders.prompt import TokenType
from espnet_omni_avsr.losses.adapter_loss import AdapterLoss
from espnet_omni_avsr.utils.trainable import set_trainable

PLACEMENTS = {"mhsa": "self_attn", "ffn": "mlp", "layer": None}  # placement -> block of the decoder layer
TOKEN_SELECTIONS = {
    "all": tuple(t for t in TokenType if t != TokenType.PAD),
    "modality_text": (TokenType.AUDIO, TokenType.VIDEO, TokenType.INSTRUCTION, TokenType.TRANSCRIPT, TokenType.EOS),
}
NEW_TOKEN_TYPE = TokenType.TRANSCRIPT  # what the positions of cached decoding steps hold
BALANCE = "balance"


def balance_loss(prob_sum: torch.Tensor, hits: torch.Tensor, n_tokens: int, top_k: int) -> torch.Tensor:
    """The Switch Transformer balance loss N * sum_i f_i * P_i of one layer, from sums over its T tokens:
    `prob_sum` (N,) the router probabilities summed over tokens (P_i = prob_sum_i / T) and `hits` (N,)
    how many tokens have expert i in their top-k (f_i = hits_i / (k * T): the share of the k * T slots,
    so sum_i f_i = 1). 1 when the routing is even (f_i = P_i = 1 / N, or any f with P_i = 1 / N);
    N / k when every token sends all of its probability to the same k experts."""
    n = prob_sum.numel()
    return n * ((hits / (top_k * n_tokens)) * (prob_sum / n_tokens)).sum()


class MoME(AbsLLMAdapter):
    """Args:
        num_experts: N_r routed experts per layer; top_k: k of them per token.
        num_shared_experts: N_s experts every selected token goes through.
        bottleneck: every expert's inner size (can be 1).
        placement: "mhsa", "ffn" or "layer" (see the module docstring).
        renormalize: renormalise the top-k gate weights to sum 1 (default on; see above).
        tokens: which positions pass: "all" (every non-padding one, default) or "modality_text".
        dispatch: "sparse" or "dense" (`MoMELayer`; same result, different cost).
        balance_weight: the weight of the balance loss in the training loss.
        tasks: the model's tasks (MoME has no per-task parameters).
    """

    def __init__(
        self,
        num_experts: int = 23,
        top_k: int = 4,
        num_shared_experts: int = 1,
        bottleneck: int = 12,
        placement: str = "ffn",
        renormalize: bool = True,
        tokens: str = "all",
        dispatch: str = "sparse",
        balance_weight: float = 0.01,
        tasks: Sequence[str] = ("asr", "vsr", "avsr"),
    ):
        super().__init__(tasks)
        if placement not in PLACEMENTS:
            raise ValueError(f"MoME placement must be one of {sorted(PLACEMENTS)}, got {placement!r}")
        if tokens not in TOKEN_SELECTIONS:
            raise ValueError(f"MoME tokens must be one of {sorted(TOKEN_SELECTIONS)}, got {tokens!r}")
        if balance_weight < 0:
            raise ValueError(f"MoME balance_weight must be >= 0, got {balance_weight}")
        self.layer_conf = dict(
            num_experts=num_experts, top_k=top_k, num_shared_experts=num_shared_experts,
            bottleneck=bottleneck, renormalize=renormalize, dispatch=dispatch,
        )
        MoMELayer(8, **self.layer_conf)  # validates the sizes now, before an LLM is loaded
        self.num_experts = num_experts
        self.top_k = top_k
        self.placement = placement
        self.tokens = tokens
        self.balance_weight = balance_weight
        self.layers: List[MoMELayer] = []
        self._allowed = torch.tensor([int(t) for t in TOKEN_SELECTIONS[tokens]])
        self._types: Optional[torch.Tensor] = None
        self._selected: Optional[torch.Tensor] = None
        self._stats: List[list] = []
        self._usage: Optional[Dict[str, torch.Tensor]] = None

    # --------------------------------------------------------------------------------- the interface
    def wrap(self, llm: torch.nn.Module) -> torch.nn.Module:
        layers = getattr(llm.get_decoder(), "layers", None)
        if layers is None:
            raise ValueError(f"MoME: {type(llm).__name__}'s decoder has no `layers` list of decoder layers")
        block = PLACEMENTS[self.placement]
        hidden = llm.config.hidden_size
        for i, layer in enumerate(layers):
            target = layer if block is None else getattr(layer, block, None)
            if target is None:
                raise ValueError(f"MoME placement {self.placement!r}: layer {i} of {type(llm).__name__} has no {block!r}")
            module = set_trainable(MoMELayer(hidden, **self.layer_conf), True)
            layer.mome = module  # a child of the decoder layer: inside the LLM's module tree
            # prepend: run before transformers' own hooks that record hidden states
            target.register_forward_hook(functools.partial(self._hook, i), with_kwargs=True, prepend=True)
            self.layers.append(module)
        self._stats = [[] for _ in self.layers]
        counts = self.parameter_counts()
        logging.info(
            f"MoME ({self.placement}, {self.num_experts} routed experts top-{self.top_k}, "
            f"{self.layer_conf['num_shared_experts']} shared, bottleneck {self.layer_conf['bottleneck']}) in "
            f"{len(self.layers)} layers: {counts['active']:,} active parameters per token (routers, shared experts, "
            f"top-{self.top_k} routed experts), {counts['total']:,} in all"
        )
        return llm

    def prepare(self, prompt) -> None:
        types = prompt.token_types
        self._types = types
        self._selected = prompt.mask.bool() & torch.isin(types, self._allowed.to(types.device))
        self._stats = [[] for _ in self.layers]

    def aux_losses(self) -> Dict[str, torch.Tensor]:
        per_layer = []
        for stats in self._stats:  # one entry per call of the layer in this pass (generate: one per step)
            n_tokens = sum(n for _, _, n in stats)
            if n_tokens:
                per_layer.append(balance_loss(sum(p for p, _, _ in stats), sum(h for _, h, _ in stats),
                                              n_tokens, self.top_k))
        if not per_layer:
            return {BALANCE: self.layers[0].router.weight.new_zeros(())}
        return {BALANCE: torch.stack(per_layer).mean()}

    def loss_terms(self) -> list:
        return [AdapterLoss(BALANCE, weight=self.balance_weight)]

    # ------------------------------------------------------------------------------- parameter counts
    def parameter_counts(self) -> Dict[str, int]:
        """Parameters over all layers: "active" per token (routers, shared experts and k routed
        experts), "total" (every expert), and the parts ("router", "shared", "routed_per_expert")."""
        router = sum(m.router.weight.numel() for m in self.layers)
        shared = sum(sum(p.numel() for p in m.shared.parameters()) for m in self.layers if m.shared is not None)
        per_expert = sum(m.routed.parameters_per_expert for m in self.layers)
        return dict(
            active=router + shared + self.top_k * per_expert,
            total=router + shared + self.num_experts * per_expert,
            router=router, shared=shared, routed_per_expert=per_expert,
        )

    @property
    def active_parameters(self) -> int:
        return self.parameter_counts()["active"]

    @property
    def total_parameters(self) -> int:
        return self.parameter_counts()["total"]

    # ---------------------------------------------------------------------------------- expert usage
    def track_usage(self, on: bool = True) -> None:
        """Count, per layer, token type and routed expert, how often the expert is in a token's top-k
        (`usage()`), over every pass from now on until `reset_usage()`. Off by default."""
        self._usage = {} if on else None

    def reset_usage(self) -> None:
        if self._usage is not None:
            self._usage = {}

    def usage(self) -> Dict[str, torch.Tensor]:
        """{"hits": (L, n_types, N_r), "tokens": (L, n_types)} on the CPU; n_types = len(TokenType),
        indexed by `TokenType` value (positions of cached decoding steps count as TRANSCRIPT)."""
        if self._usage is None:
            raise RuntimeError("MoME.usage(): call track_usage() first")
        n_types = len(TokenType)
        if not self._usage:
            return dict(hits=torch.zeros(len(self.layers), n_types, self.num_experts, dtype=torch.long),
                        tokens=torch.zeros(len(self.layers), n_types, dtype=torch.long))
        return {k: v.cpu() for k, v in self._usage.items()}

    # ------------------------------------------------------------------------------------------ hooks
    def _selection(self, batch: int, length: int, device):
        """(selected (batch, length) bool, token types (batch, length)) for the hidden states of one call."""
        if self._types is None:
            raise RuntimeError("MoME: the LLM ran without prepare(prompt) (HFCausalLMDecoder calls it before each pass)")
        rows, n = self._types.shape
        if batch % rows:
            raise RuntimeError(f"MoME: hidden states of batch {batch} for a prompt of batch {rows}")
        if length == n:  # the prompt (training, or the first step of generate); beams repeat each row
            repeat = batch // rows
            return self._selected.repeat_interleave(repeat, 0), self._types.repeat_interleave(repeat, 0)
        if length < n:  # cached decoding: the new positions are transcript tokens
            types = torch.full((batch, length), int(NEW_TOKEN_TYPE), dtype=torch.long, device=device)
            return torch.isin(types, self._allowed.to(device)), types
        raise RuntimeError(f"MoME: hidden states of length {length} for a prompt of length {n}")

    def _hook(self, index: int, block, args, kwargs, output):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        main = output[0] if isinstance(output, tuple) else output
        batch, length, d = hidden.shape
        selected, types = self._selection(batch, length, hidden.device)
        where = selected.reshape(-1).nonzero().squeeze(1)  # (T,) flat positions
        x = hidden.reshape(-1, d).index_select(0, where).float()
        routing = self.layers[index](x)
        self._record(index, routing, types.reshape(-1).index_select(0, where))
        new = main.reshape(-1, d).index_add(0, where, routing.out.to(main.dtype)).view_as(main)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _record(self, index: int, routing, types: torch.Tensor) -> None:
        hits = torch.bincount(routing.index.reshape(-1), minlength=self.num_experts).to(routing.probs.dtype)
        self._stats[index].append((routing.probs.sum(0), hits, routing.probs.size(0)))
        if self._usage is None:
            return
        n_types = len(TokenType)
        if not self._usage:
            device = routing.index.device
            self._usage = dict(
                hits=torch.zeros(len(self.layers), n_types, self.num_experts, dtype=torch.long, device=device),
                tokens=torch.zeros(len(self.layers), n_types, dtype=torch.long, device=device),
            )
        k = routing.index.size(1)
        flat = types.repeat_interleave(k) * self.num_experts + routing.index.reshape(-1)
        self._usage["hits"][index] += torch.bincount(flat, minlength=n_types * self.num_experts).view(
            n_types, self.num_experts)
        self._usage["tokens"][index] += torch.bincount(types, minlength=n_types)
