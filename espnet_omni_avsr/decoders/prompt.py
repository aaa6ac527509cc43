"""The prompt layout: where modality tokens, instruction and transcript go in the LLM's input.

    [BOS] <audio> A </audio> <video> V </video> {instruction} {transcript} [EOS]

A modality block is present only when the task uses that modality (ASR: audio, VSR: video, AVSR:
both). BOS is left out for tokenizers that have none (Qwen2.5). The loss covers the transcript
and EOS only.

A model may read a task through other *streams* than its modalities (`streams`: an early-fused
AVSR reads one `audiovisual` block, which has no delimiters), and a task may have a *template*
that replaces the layout between BOS and transcript, e.g. MMS-LLaMA's
`Recognize this speech in English. Input : {audiovisual}`: literal text (tokenized piece by piece,
INSTRUCTION positions) around `{stream}` placeholders, each stream of the task exactly once.

`PromptLayout.build` returns a `Prompt`: the embeddings and masks the LLM reads, plus a map of what
each position is (`TokenType`) and, for modality tokens, where it came from (modality, the condition
it was compressed at, its index in the compressed sequence). Adapters and loss terms read spans from
it instead of counting positions.
"""
import enum
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from espnet_omni_avsr.decoders.llm_tokenizer import MODALITY_TOKENS
from espnet_omni_avsr.names import DEFAULT_INSTRUCTIONS, FUSED, TASK_MODALITIES

__all__ = ["DEFAULT_INSTRUCTIONS", "IGNORE_ID", "MODALITY_TOKEN_TYPES", "Prompt", "PromptLayout", "TokenType"]
IGNORE_ID = -100
# Placeholder ids marking the positions that receive a modality's tokens.
_SLOTS = {"audio": -1, "video": -2, FUSED: -3}
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")


class TokenType(enum.IntEnum):
    """What a prompt position holds."""

    PAD = 0
    BOS = 1
    MODALITY_OPEN = 2  # <audio>, <video>
    MODALITY_CLOSE = 3  # </audio>, </video>
    AUDIO = 4
    VIDEO = 5
    INSTRUCTION = 6
    TRANSCRIPT = 7
    EOS = 8
    AUDIOVISUAL = 9  # tokens of the early-fused audio + video stream


MODALITY_TOKEN_TYPES = {"audio": TokenType.AUDIO, "video": TokenType.VIDEO, FUSED: TokenType.AUDIOVISUAL}


@dataclass
class Prompt:
    """A batch of prompts as the LLM reads them, and what each position is.

    embeds (B, N, D), mask (B, N) long, labels (B, N): the token id to predict at each position's
    *own* index (IGNORE_ID outside transcript + EOS), as Hugging Face's `labels`;
    token_types (B, N) long (`TokenType`); source_index (B, N) long: for modality tokens, their
    index in the compressed sequence of their modality, -1 elsewhere;
    tasks[b] and conditions[b] (modality -> condition name): the task and compression conditions of
    row b. `cat` stacks prompts along the batch.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    token_types: torch.Tensor
    source_index: torch.Tensor
    tasks: List[str]
    conditions: List[Dict[str, str]] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.embeds.size(0)

    def next_token_targets(self) -> torch.Tensor:
        """(B, N): the label each position predicts (the label of the next position), IGNORE_ID
        where nothing is scored, last position included."""
        pad = torch.full_like(self.labels[:, :1], IGNORE_ID)
        return torch.cat([self.labels[:, 1:], pad], dim=1)

    def modality_mask(self, modality: Optional[str] = None) -> torch.Tensor:
        """(B, N) bool: positions holding tokens of `modality` (None: of any modality)."""
        types = [MODALITY_TOKEN_TYPES[modality]] if modality else list(MODALITY_TOKEN_TYPES.values())
        return torch.isin(self.token_types, torch.tensor([int(t) for t in types], device=self.token_types.device))

    def rows(self, index: Sequence[int]) -> "Prompt":
        """The prompts of rows `index` (in that order, repeats allowed), as a new Prompt."""
        idx = torch.tensor(list(index), dtype=torch.long, device=self.mask.device)
        return Prompt(
            embeds=self.embeds.index_select(0, idx),
            mask=self.mask.index_select(0, idx),
            labels=self.labels.index_select(0, idx),
            token_types=self.token_types.index_select(0, idx),
            source_index=self.source_index.index_select(0, idx),
            tasks=[self.tasks[i] for i in index],
            conditions=[self.conditions[i] for i in index] if self.conditions else [],
        )

    @staticmethod
    def cat(prompts: Sequence["Prompt"]) -> "Prompt":
        """Stack right-padded prompts along the batch (shorter ones padded at the end)."""
        if len(prompts) == 1:
            return prompts[0]
        n_max = max(p.embeds.size(1) for p in prompts)

        def right(x: torch.Tensor, value) -> torch.Tensor:
            pad = (0, 0, 0, n_max - x.size(1)) if x.dim() == 3 else (0, n_max - x.size(1))
            return torch.nn.functional.pad(x, pad, value=value)

        return Prompt(
            embeds=torch.cat([right(p.embeds, 0.0) for p in prompts]),
            mask=torch.cat([right(p.mask, 0) for p in prompts]),
            labels=torch.cat([right(p.labels, IGNORE_ID) for p in prompts]),
            token_types=torch.cat([right(p.token_types, int(TokenType.PAD)) for p in prompts]),
            source_index=torch.cat([right(p.source_index, -1) for p in prompts]),
            tasks=[t for p in prompts for t in p.tasks],
            conditions=[c for p in prompts for c in p.conditions],
        )


class PromptLayout:
    """Builds padded `inputs_embeds`, attention mask, labels and the token-type map for a batch.

    Args:
        tokenizer: the LLM tokenizer from `load_llm_tokenizer` (with the delimiters added).
        instructions: task -> instruction text; defaults to the papers' instructions.
        streams: task -> the token streams its prompt holds, in order (default: its modalities).
        templates: task -> a template replacing modality blocks and instruction (module docstring).
    """

    def __init__(
        self,
        tokenizer,
        instructions: Optional[Mapping[str, str]] = None,
        streams: Optional[Mapping[str, Sequence[str]]] = None,
        templates: Optional[Mapping[str, str]] = None,
    ):
        self.tokenizer = tokenizer
        self.streams = {t: tuple(m) for t, m in TASK_MODALITIES.items()}
        self.streams.update({t: tuple(m) for t, m in (streams or {}).items()})
        self.instructions = dict(DEFAULT_INSTRUCTIONS)
        self.instructions.update(instructions or {})
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        self.delims = {
            m: tokenizer.convert_tokens_to_ids(list(pair)) for m, pair in MODALITY_TOKENS.items()
        }
        self.instruction_ids = {
            t: tokenizer(text, add_special_tokens=False)["input_ids"] for t, text in self.instructions.items()
        }
        self.templates = {t: self._parse_template(t, text) for t, text in (templates or {}).items()}

    def _parse_template(self, task: str, text: str) -> List[object]:
        """A template -> [token ids of a literal piece | stream name, ...]."""
        if task not in TASK_MODALITIES:
            raise ValueError(f"prompt template for unknown task {task!r}: choose from {sorted(TASK_MODALITIES)}")
        pieces, names = [], []
        for i, part in enumerate(_PLACEHOLDER.split(text)):
            if i % 2:
                names.append(part)
                pieces.append(part)
            elif part:
                pieces.append(self.tokenizer(part, add_special_tokens=False)["input_ids"])
        want = self.streams[task]
        if sorted(names) != sorted(want):
            raise ValueError(f"prompt template for {task} {text!r}: needs each of {{{'}, {'.join(want)}}} exactly "
                             f"once (the streams the task reads), got {['{' + n + '}' for n in names]}")
        return pieces

    def token_ids(
        self,
        task: str,
        modality_lengths: Mapping[str, int],
        text: Sequence[int] = (),
        with_eos: bool = True,
    ) -> Tuple[List[int], List[int], List[int]]:
        """One sequence: (ids with placeholder ids at modality positions, labels, token types)."""
        if task not in TASK_MODALITIES:
            raise ValueError(f"unknown task {task!r}: choose from {sorted(TASK_MODALITIES)}")
        ids = list(self.bos)
        types = [TokenType.BOS] * len(self.bos)
        if task in self.templates:
            for piece in self.templates[task]:
                if isinstance(piece, str):
                    n = int(modality_lengths[piece])
                    ids += [_SLOTS[piece]] * n
                    types += [MODALITY_TOKEN_TYPES[piece]] * n
                else:
                    ids += piece
                    types += [TokenType.INSTRUCTION] * len(piece)
        else:
            for m in self.streams[task]:
                n = int(modality_lengths[m])
                delims = self.delims.get(m)  # the fused stream has none
                ids += [delims[0]] if delims else []
                types += [TokenType.MODALITY_OPEN] if delims else []
                ids += [_SLOTS[m]] * n
                types += [MODALITY_TOKEN_TYPES[m]] * n
                ids += [delims[1]] if delims else []
                types += [TokenType.MODALITY_CLOSE] if delims else []
            ids += self.instruction_ids[task]
            types += [TokenType.INSTRUCTION] * len(self.instruction_ids[task])
        labels = [IGNORE_ID] * len(ids)
        tail = list(text) + ([self.eos] if with_eos else [])
        types += [TokenType.TRANSCRIPT] * len(text) + [TokenType.EOS] * with_eos
        return ids + tail, labels + tail, [int(t) for t in types]

    def build(
        self,
        embed,
        task: str,
        modality_tokens: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        padding_side: str = "right",
        conditions: Optional[Mapping[str, object]] = None,
    ) -> Prompt:
        """Assemble a batch.

        Args:
            embed: callable ids (B, N) -> (B, N, D) (the decoder's `embed`).
            modality_tokens: name -> (tokens (B, T_m, D), lengths (B,)) for the task's modalities.
            text: (B, L) transcript ids padded with anything, with `text_lengths`; None for decoding
                (the prompt then ends after the instruction and has no EOS).
            padding_side: "right" for training, "left" for batched generation.
            conditions: modality -> the condition its tokens were made at (recorded in the Prompt).
        """
        if task not in TASK_MODALITIES:
            raise ValueError(f"unknown task {task!r}: choose from {sorted(TASK_MODALITIES)}")
        needed = self.streams[task]
        missing = [m for m in needed if m not in modality_tokens]
        if missing:
            raise ValueError(f"task {task!r} needs {missing} tokens, got {sorted(modality_tokens)}")
        batch = next(iter(modality_tokens.values()))[0].size(0)
        seqs = []
        for b in range(batch):
            lens = {m: int(modality_tokens[m][1][b]) for m in needed}
            tb = [] if text is None else text[b, : int(text_lengths[b])].tolist()
            seqs.append(self.token_ids(task, lens, tb, with_eos=text is not None))
        n_max = max(len(ids) for ids, _, _ in seqs)
        device = next(iter(modality_tokens.values()))[0].device
        ids_pad = torch.full((batch, n_max), self.pad, dtype=torch.long)
        lab_pad = torch.full((batch, n_max), IGNORE_ID, dtype=torch.long)
        type_pad = torch.full((batch, n_max), int(TokenType.PAD), dtype=torch.long)
        mask = torch.zeros((batch, n_max), dtype=torch.long)
        for b, (ids, labels, types) in enumerate(seqs):
            n = len(ids)
            sl = slice(0, n) if padding_side == "right" else slice(n_max - n, n_max)
            ids_pad[b, sl] = torch.tensor(ids)
            lab_pad[b, sl] = torch.tensor(labels)
            type_pad[b, sl] = torch.tensor(types)
            mask[b, sl] = 1
        ids_pad, lab_pad, mask, type_pad = ids_pad.to(device), lab_pad.to(device), mask.to(device), type_pad.to(device)
        embeds = embed(ids_pad.masked_fill(ids_pad < 0, self.pad))
        source_index = torch.full_like(ids_pad, -1)
        # Slots of a modality and its valid tokens are both taken in row-major order, so
        # masked_scatter puts token t of utterance b in the t-th slot of sequence b.
        for m in needed:
            tokens, lengths = modality_tokens[m]
            slot = ids_pad == _SLOTS[m]
            valid = torch.arange(tokens.size(1), device=device)[None, :] < lengths[:, None]
            embeds = embeds.masked_scatter(slot.unsqueeze(-1), tokens[valid].to(embeds.dtype))
            source_index[slot] = (slot.long().cumsum(1) - 1)[slot]
        conds = {m: str(c) for m, c in (conditions or {}).items() if m in needed}
        return Prompt(
            embeds=embeds,
            mask=mask,
            labels=lab_pad,
            token_types=type_pad,
            source_index=source_index,
            tasks=[task] * batch,
            conditions=[dict(conds) for _ in range(batch)],
        )
