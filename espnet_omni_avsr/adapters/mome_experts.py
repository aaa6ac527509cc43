"""One MoME module: a top-k router over routed bottleneck experts, plus shared experts every token uses.

`adapters/mome.py` puts one `MoMELayer` beside a sub-layer of every LLM layer. The module sees the
selected positions flattened to (T, D) and returns what is added to the sub-layer's output there:

    out(x) = sum_s S_s(x) + sum_{n in topk(p(x))} g_n(x) E_n(x),    p(x) = softmax(W_r x)

with each expert Linear(D -> b) -> GELU -> Linear(b -> D). g_n is p_n, renormalised over the top k
when `renormalize` is on. Every up-projection (weight and bias) starts at zero, so the module
first adds exactly zero.
"""
import math
from dataclasses import dataclass

import torch

DISPATCH = ("sparse", "dense")


class BottleneckExperts(torch.nn.Module):
    """`num_experts` experts D -> b -> D, their weights stacked along a leading expert axis.

    down (n, D, b), down_bias (n, b): nn.Linear's default initialisation; up (n, b, D), up_bias (n, D): zero.
    """

    def __init__(self, num_experts: int, hidden_size: int, bottleneck: int):
        super().__init__()
        n, d, b = num_experts, hidden_size, bottleneck
        bound = 1.0 / math.sqrt(d)  # nn.Linear(d, b)'s uniform bound for weight and bias
        self.down = torch.nn.Parameter(torch.empty(n, d, b).uniform_(-bound, bound))
        self.down_bias = torch.nn.Parameter(torch.empty(n, b).uniform_(-bound, bound))
        self.up = torch.nn.Parameter(torch.zeros(n, b, d))
        self.up_bias = torch.nn.Parameter(torch.zeros(n, d))

    @property
    def num_experts(self) -> int:
        return self.down.size(0)

    @property
    def parameters_per_expert(self) -> int:
        return sum(p[0].numel() for p in (self.down, self.down_bias, self.up, self.up_bias))

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert `e` on x (T, D) -> (T, D)."""
        h = torch.nn.functional.gelu(x @ self.down[e] + self.down_bias[e])
        return h @ self.up[e] + self.up_bias[e]

    def mixture(self, x: torch.Tensor, gates: torch.Tensor = None) -> torch.Tensor:
        """sum_e gates[:, e] * E_e(x) for x (T, D), gates (T, n) (None: every weight 1), as one wide
        bottleneck of n * b units: the experts' down-projections side by side, then their up-projections."""
        n, d, b = self.down.shape
        h = torch.nn.functional.gelu(x @ self.down.transpose(0, 1).reshape(d, n * b) + self.down_bias.reshape(n * b))
        if gates is None:
            return h @ self.up.reshape(n * b, d) + self.up_bias.sum(0)
        h = (h.view(-1, n, b) * gates.unsqueeze(-1)).view(-1, n * b)
        return h @ self.up.reshape(n * b, d) + gates @ self.up_bias


@dataclass
class Routing:
    """What a `MoMELayer` did to T tokens: `out` (T, D), the router's probabilities `probs` (T, N_r)
    and the chosen experts `index` (T, k), with their gate weights `weights` (T, k)."""

    out: torch.Tensor
    probs: torch.Tensor
    index: torch.Tensor
    weights: torch.Tensor


class MoMELayer(torch.nn.Module):
    """Router + routed experts + shared experts of one LLM layer (float32, whatever the LLM's dtype).

    Args:
        hidden_size: D, the LLM's hidden size.
        num_experts: N_r routed experts; top_k: k of them per token.
        num_shared_experts: N_s experts every token goes through (0: none).
        bottleneck: b, every expert's inner size.
        renormalize: gate weights = the top-k probabilities divided by their sum (True) or the
            softmax probabilities themselves (False).
        dispatch: "sparse": each routed expert runs on its own tokens only (tokens sorted by
            expert, one index_select and one index_add per layer); "dense": every routed expert runs
            on every token and the unchosen ones get weight 0 (one wide bottleneck of N_r * b units:
            faster when N_r * b is small, identical result).
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        num_shared_experts: int,
        bottleneck: int,
        renormalize: bool = True,
        dispatch: str = "sparse",
    ):
        super().__init__()
        if num_experts < 1 or not 1 <= top_k <= num_experts:
            raise ValueError(f"MoME: need 1 <= top_k <= num_experts, got top_k={top_k}, num_experts={num_experts}")
        if num_shared_experts < 0 or bottleneck < 1:
            raise ValueError(f"MoME: num_shared_experts >= 0 and bottleneck >= 1, got {num_shared_experts}, {bottleneck}")
        if dispatch not in DISPATCH:
            raise ValueError(f"MoME dispatch must be one of {DISPATCH}, got {dispatch!r}")
        self.top_k = top_k
        self.renormalize = renormalize
        self.dispatch = dispatch
        self.router = torch.nn.Linear(hidden_size, num_experts, bias=False)
        self.routed = BottleneckExperts(num_experts, hidden_size, bottleneck)
        self.shared = BottleneckExperts(num_shared_experts, hidden_size, bottleneck) if num_shared_experts else None

    @property
    def num_experts(self) -> int:
        return self.routed.num_experts

    def route(self, x: torch.Tensor):
        """x (T, D) -> probabilities (T, N_r), gate weights (T, k), expert indices (T, k)."""
        probs = torch.softmax(self.router(x), dim=-1)
        weights, index = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return probs, weights, index

    def forward(self, x: torch.Tensor) -> Routing:
        """x (T, D) float32 -> `Routing` (out (T, D): what to add at these positions)."""
        probs, weights, index = self.route(x)
        out = self.shared.mixture(x) if self.shared is not None else x.new_zeros(x.shape)
        if x.size(0) == 0:
            return Routing(out, probs, index, weights)
        if self.dispatch == "dense":
            gates = torch.zeros_like(probs).scatter(1, index, weights)
            return Routing(out + self.routed.mixture(x, gates), probs, index, weights)
        k = self.top_k
        expert_of = index.reshape(-1)  # (T * k,): slot t * k + j holds token t's j-th expert
        order = torch.argsort(expert_of, stable=True)
        token = order // k
        counts = torch.bincount(expert_of, minlength=self.num_experts).tolist()
        chunks = x.index_select(0, token).split(counts)
        y = torch.cat([self.routed.expert(e, c) for e, c in enumerate(chunks) if counts[e]])
        y = y * weights.reshape(-1)[order].unsqueeze(1)
        return Routing(out.index_add(0, token, y), probs, index, weights)
