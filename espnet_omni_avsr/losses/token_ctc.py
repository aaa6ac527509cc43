"""Auxiliary CTC over the LLM's vocabulary on a branch's projected tokens (training aid).

The LLM reads the projector's output as if it were token embeddings. This loss scores each
projected token against the LLM's own frozen output embedding table (cosine similarity times a
learned scale, plus one learned blank vector) and asks, through CTC, that the sequence of projected
tokens spell the transcript's LLM tokens. The projector then learns to put the words it hears (or
sees) near the embeddings of those words, which the pretrained LLM already knows how to read;
the LLM's LoRA has far less to learn. It needs no LLM pass (one matrix product with the embedding
table), so it also fits the cheap warm-up of egs2/avgrid/avsr1 (a `losses:` list without the LLM term).

Not in the papers (their projectors learn from the LLM loss alone, on hundreds of hours); off by
default. Each rate of the branch gets the loss (averaged); a rate with fewer tokens than the
alignment needs adds zero.

A stream with about one token per word (MMS-LLaMA's Q-Former at 3 queries per second) is too
short for CTC to spell a transcript that also needs blanks between repeated tokens; `repeat: k`
scores each projected token k times in a row (no new parameters), so a query can say its word
and a blank and the alignment fits in k times the token count.

The softmax over a big vocabulary dominates the step (49k tokens for SmolLM2, 128k for Llama 3):
with `vocab_ids` (for example every LLM token of the training transcripts, `transcript_token_ids`)
the softmax runs over those tokens and the batch's own target tokens only, a restricted-vocabulary
CTC that still asks each projected token to be nearer the spoken word's embedding than any other
word of the task's vocabulary (`conf: {vocab: <Kaldi text file>}`), several times cheaper.
"""
import math
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from espnet_omni_avsr.losses.abs_loss_term import AbsLossTerm, LossOutput


class TokenCTC(AbsLossTerm):
    """CTC of projected tokens against LLM token ids; `type: token_ctc`, conf: `modality`, `vocab`
    (a Kaldi text file whose transcripts' tokens the softmax runs over), `init_scale`, `repeat`.

    Args:
        hidden_size: the LLM's hidden size (the projector's output size).
        init_scale: initial value of the learned cosine-logit scale.
        vocab_ids: LLM token ids the softmax runs over (with each batch's target ids added);
            None (default): the whole vocabulary.
        modality: the branch whose projected tokens it reads (every condition of the branch,
            averaged), or `audiovisual` for the early-fused stream.
        repeat: each projected token is scored this many times in a row (1: as it is).
        name: statistics name (default `token_ctc_<modality>`); weight: its weight in the total loss.

    compute(tokens (B, T, D), lengths (B,), targets (B, L) LLM ids padded with anything,
    target_lengths (B,), table (V, D) the LLM's output embeddings) -> the mean over utterances
    of the CTC loss divided by the target length.
    """

    def __init__(
        self,
        hidden_size: int,
        init_scale: float = 20.0,
        vocab_ids: Optional[Iterable[int]] = None,
        modality: str = "audio",
        name: Optional[str] = None,
        weight: float = 1.0,
        repeat: int = 1,
    ):
        super().__init__(name or f"token_ctc_{modality}", weight)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"token_ctc: repeat must be an integer >= 1, got {repeat!r}")
        self.modality = modality
        self.repeat = repeat
        gen = torch.Generator().manual_seed(0)
        self.blank = torch.nn.Parameter(torch.randn(hidden_size, generator=gen) / math.sqrt(hidden_size))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(init_scale)))
        vocab = None if vocab_ids is None else torch.tensor(sorted(set(int(i) for i in vocab_ids)), dtype=torch.long)
        if vocab is not None and (vocab.numel() == 0 or vocab[0] < 0):
            raise ValueError("vocab_ids must be a non-empty set of token ids >= 0")
        self.register_buffer("vocab_ids", vocab, persistent=False)

    @classmethod
    def build(cls, parts, name=None, weight=1.0, modality: str = "audio", vocab: Optional[str] = None, **conf):
        parts.require("token_ctc", modality)
        vocab_ids = transcript_token_ids(vocab, parts.decoder.tokenizer) if vocab else None
        return cls(parts.decoder.hidden_size, vocab_ids=vocab_ids, modality=modality, name=name, weight=weight, **conf)

    def forward(self, step) -> LossOutput:
        table = step.decoder.output_embeddings()
        branch = step.branches[self.modality]
        losses = [
            self.compute(*step.tokens(self.modality, c), step.text, step.text_lengths, table) for c in branch.conditions
        ]
        loss = sum(losses) / len(losses)
        return LossOutput(loss, {self.name: loss.detach()})

    def logits(self, tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, 1 + V): class 0 is blank, class 1 + v is LLM token v."""
        return self._logits(tokens, self._unit_table(table))

    def _logits(self, tokens: torch.Tensor, unit_table: torch.Tensor) -> torch.Tensor:
        """Scaled cosines against rows that already have unit norm; blank first."""
        unit = tokens.float()
        unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        blank = self.blank / self.blank.norm().clamp_min(1e-6)
        vocab = torch.matmul(unit.to(unit_table.dtype), unit_table.t()).float()
        cos = torch.cat([(unit @ blank)[..., None], vocab], dim=-1)
        return cos * self.log_scale.exp()

    def _unit_table(self, table: torch.Tensor) -> torch.Tensor:
        """The frozen table with unit-norm rows, computed once (the table never changes)."""
        key = (table.data_ptr(), table.device, table.dtype, tuple(table.shape))
        if getattr(self, "_cache_key", None) != key:
            t = table.detach().float()
            self._cache = (t / t.norm(dim=-1, keepdim=True).clamp_min(1e-6)).to(table.dtype)
            self._cache_key = key
        return self._cache

    def compute(
        self,
        tokens: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        table: torch.Tensor,
    ) -> torch.Tensor:
        device = tokens.device
        targets = targets.to(device).clamp_min(0)
        if self.repeat > 1:
            tokens = tokens.repeat_interleave(self.repeat, dim=1)
            lengths = lengths * self.repeat
        if self.vocab_ids is not None:  # softmax over the candidates only; targets become their indices
            valid = torch.arange(targets.size(1), device=device)[None, :] < target_lengths.to(device)[:, None]
            candidates = torch.unique(torch.cat([self.vocab_ids.to(device), targets[valid]]))
            table = self._unit_table(table)[candidates]
            targets = torch.searchsorted(candidates, targets)
            log_probs = self._logits(tokens, table).log_softmax(-1).transpose(0, 1)
        else:
            log_probs = self.logits(tokens, table).log_softmax(-1).transpose(0, 1)  # (T, B, 1 + V)
        return torch.nn.functional.ctc_loss(
            log_probs,
            targets + 1,
            lengths.to(device),
            target_lengths.to(device),
            blank=0,
            reduction="mean",
            zero_infinity=True,
        )

    @staticmethod
    def greedy(log_probs_or_logits: torch.Tensor, lengths: torch.Tensor) -> Sequence[Tuple[int, ...]]:
        """Best-path decoding of (B, T, 1 + V) scores into LLM token ids (for inspection)."""
        best = log_probs_or_logits.argmax(-1)
        out = []
        for row, n in zip(best, lengths):
            ids, prev = [], 0
            for c in row[: int(n)].tolist():
                if c != prev and c != 0:
                    ids.append(c - 1)
                prev = c
            out.append(tuple(ids))
        return out


def transcript_token_ids(path: str, tokenizer) -> List[int]:
    """Every LLM token id of the transcripts in a Kaldi `text` file (`<utt-id> <words>` lines),
    each transcript tokenized as written, lower-cased and upper-cased (the preprocessor's
    `text_case` options), as `TokenCTC(vocab_ids=...)` wants them."""
    ids = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split(maxsplit=1)
                if len(parts) < 2:
                    continue
                for text in {parts[1], parts[1].lower(), parts[1].upper()}:
                    ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    except OSError as e:
        raise ValueError(f"token CTC vocabulary: cannot read transcripts from {path}: {e}") from e
    if not ids:
        raise ValueError(f"token CTC vocabulary: no transcript in {path} (expected '<utt-id> <words>' lines)")
    return sorted(ids)
