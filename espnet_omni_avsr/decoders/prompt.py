"""The prompt layout: where modality tokens, instruction and transcript go in the LLM's input.

    [BOS] <audio> A </audio> <video> V </video> {instruction} {transcript} [EOS]

A modality block is present only when the task uses that modality (ASR: audio, VSR: video, AVSR:
both). BOS is left out for tokenizers that have none (Qwen2.5). The loss covers the transcript
and EOS only.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from espnet_omni_avsr.decoders.llm_tokenizer import MODALITY_TOKENS
from espnet_omni_avsr.utils.rates import TASK_MODALITIES

DEFAULT_INSTRUCTIONS = {
    "asr": "Transcribe speech to text.",
    "vsr": "Transcribe video to text.",
    "avsr": "Transcribe speech and video to text.",
}
IGNORE_ID = -100
# Placeholder ids marking the positions that receive a modality's tokens.
_SLOTS = {"audio": -1, "video": -2}


class PromptLayout:
    """Builds padded `inputs_embeds`, attention mask and labels for a batch.

    Args:
        tokenizer: the LLM tokenizer from `load_llm_tokenizer` (with the delimiters added).
        instructions: task -> instruction text; defaults to the papers' instructions.
    """

    def __init__(self, tokenizer, instructions: Optional[Mapping[str, str]] = None):
        self.tokenizer = tokenizer
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

    def token_ids(
        self,
        task: str,
        modality_lengths: Mapping[str, int],
        text: Sequence[int] = (),
        with_eos: bool = True,
    ) -> Tuple[List[int], List[int]]:
        """One sequence: (ids with placeholder ids at modality positions, labels)."""
        if task not in TASK_MODALITIES:
            raise ValueError(f"unknown task {task!r}: choose from {sorted(TASK_MODALITIES)}")
        ids = list(self.bos)
        for m in TASK_MODALITIES[task]:
            open_id, close_id = self.delims[m]
            ids += [open_id] + [_SLOTS[m]] * int(modality_lengths[m]) + [close_id]
        ids += self.instruction_ids[task]
        labels = [IGNORE_ID] * len(ids)
        tail = list(text) + ([self.eos] if with_eos else [])
        return ids + tail, labels + tail

    def build(
        self,
        embed,
        task: str,
        modality_tokens: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        padding_side: str = "right",
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Assemble a batch.

        Args:
            embed: callable ids (B, N) -> (B, N, D) (the decoder's `embed`).
            modality_tokens: name -> (tokens (B, T_m, D), lengths (B,)) for the task's modalities.
            text: (B, L) transcript ids padded with anything, with `text_lengths`; None for decoding
                (the prompt then ends after the instruction and has no EOS).
            padding_side: "right" for training, "left" for batched generation.
        Returns:
            inputs_embeds (B, N, D), attention_mask (B, N) long, labels (B, N) with IGNORE_ID
            outside transcript + EOS.
        """
        needed = TASK_MODALITIES[task]
        missing = [m for m in needed if m not in modality_tokens]
        if missing:
            raise ValueError(f"task {task!r} needs {missing} tokens, got {sorted(modality_tokens)}")
        batch = next(iter(modality_tokens.values()))[0].size(0)
        seqs = []
        for b in range(batch):
            lens = {m: int(modality_tokens[m][1][b]) for m in needed}
            tb = [] if text is None else text[b, : int(text_lengths[b])].tolist()
            seqs.append(self.token_ids(task, lens, tb, with_eos=text is not None))
        n_max = max(len(ids) for ids, _ in seqs)
        device = next(iter(modality_tokens.values()))[0].device
        ids_pad = torch.full((batch, n_max), self.pad, dtype=torch.long)
        lab_pad = torch.full((batch, n_max), IGNORE_ID, dtype=torch.long)
        mask = torch.zeros((batch, n_max), dtype=torch.long)
        for b, (ids, labels) in enumerate(seqs):
            n = len(ids)
            sl = slice(0, n) if padding_side == "right" else slice(n_max - n, n_max)
            ids_pad[b, sl] = torch.tensor(ids)
            lab_pad[b, sl] = torch.tensor(labels)
            mask[b, sl] = 1
        ids_pad, lab_pad, mask = ids_pad.to(device), lab_pad.to(device), mask.to(device)
        embeds = embed(ids_pad.masked_fill(ids_pad < 0, self.pad))
        # Slots of a modality and its valid tokens are both taken in row-major order, so
        # masked_scatter puts token t of utterance b in the t-th slot of sequence b.
        for m in needed:
            tokens, lengths = modality_tokens[m]
            valid = torch.arange(tokens.size(1), device=device)[None, :] < lengths[:, None]
            slot = (ids_pad == _SLOTS[m]).unsqueeze(-1)
            embeds = embeds.masked_scatter(slot, tokens[valid].to(embeds.dtype))
        return embeds, mask, lab_pad
