"""Auxiliary character CTC on a modality encoder's frame features (training aid, not used to decode).

A lip encoder trained from scratch gets its only gradient through the frozen LLM when the loss is
the LLM's cross entropy alone, and on small data it may never start to read lips: the LLM learns
the grammar's prior instead. A CTC loss on the encoder's 25 fps features against the transcript's
characters trains the encoder directly, as hybrid CTC/attention recipes (ESPnet, auto_avsr) do.
The papers' systems use a pretrained visual encoder (AV-HuBERT) and need none of this: their
configs leave it off.

The transcript arrives as LLM token ids; they are decoded back to text and mapped to a fixed
character set (letters, digits, apostrophe, space; anything else counts as `<unk>`).
"""
import string
from typing import List, Optional, Sequence, Tuple

import torch

from espnet_omni_avsr.losses.abs_loss_term import AbsLossTerm, LossOutput

BLANK = 0
CHARS = ["<blank>", "<unk>", " ", "'"] + list(string.ascii_lowercase) + list(string.digits)


class CharCTC(AbsLossTerm):
    """A linear CTC head over characters; `type: char_ctc`, conf: `modality` (default video), `dropout`.

    Args:
        input_size: feature dimension of the encoder output (the branch's, when built from a config).
        dropout: dropout on the features before the head.
        modality: the branch whose encoder features it reads.
        name: statistics name (default `ctc_<modality>`); weight: its weight in the total loss.

    compute(feats (B, T, D), lengths (B,), texts (B strings)) -> loss: the mean over utterances of
    the CTC loss divided by the target length (per-character nats, on the scale of the LLM's
    per-token cross entropy). Utterances with more characters than frames (CTC impossible) add
    zero instead of infinity.
    """

    def __init__(
        self,
        input_size: int,
        dropout: float = 0.1,
        modality: str = "video",
        name: Optional[str] = None,
        weight: float = 1.0,
    ):
        super().__init__(name or f"ctc_{modality}", weight)
        self.modality = modality
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(input_size, len(CHARS))
        self._index = {c: i for i, c in enumerate(CHARS)}

    @classmethod
    def build(cls, parts, name=None, weight=1.0, modality: str = "video", **conf) -> "CharCTC":
        parts.require("char_ctc", modality)
        return cls(parts.branches[modality].feature_size, modality=modality, name=name, weight=weight, **conf)

    def forward(self, step) -> LossOutput:
        loss = self.compute(*step.features[self.modality], step.transcripts())
        return LossOutput(loss, {self.name: loss.detach()})

    def encode_texts(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, L) character ids padded with blank, and their lengths (at least 1)."""
        unk = self._index["<unk>"]
        ids: List[List[int]] = []
        for text in texts:
            chars = " ".join(text.lower().split())
            ids.append([self._index.get(c, unk) for c in chars] or [unk])
        lengths = torch.tensor([len(x) for x in ids])
        padded = torch.full((len(ids), int(lengths.max())), BLANK, dtype=torch.long)
        for i, x in enumerate(ids):
            padded[i, : len(x)] = torch.tensor(x)
        return padded, lengths

    def compute(self, feats: torch.Tensor, lengths: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        targets, target_lengths = self.encode_texts(texts)
        log_probs = self.head(self.dropout(feats)).float().log_softmax(-1).transpose(0, 1)  # (T, B, C)
        return torch.nn.functional.ctc_loss(
            log_probs,
            targets.to(feats.device),
            lengths.to(feats.device),
            target_lengths.to(feats.device),
            blank=BLANK,
            reduction="mean",
            zero_infinity=True,
        )

    @torch.no_grad()
    def greedy(self, feats: torch.Tensor, lengths: torch.Tensor) -> List[str]:
        """Best-path reading of (B, T, D) features as text (for inspection and benchmarks)."""
        best = self.head(feats).argmax(-1)
        return [
            "".join(CHARS[c] for c in torch.unique_consecutive(row[: int(n)]).tolist() if c != BLANK).strip()
            for row, n in zip(best, lengths)
        ]
