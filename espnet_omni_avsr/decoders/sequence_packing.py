"""Packed LLM passes: the sequences of a pass laid end to end in rows, with no padding between them.

A right-padded `Prompt` of S sequences padded to N positions becomes R rows holding every sequence
whole, `position_ids` restarting at 0 at the start of each sequence and `attention_mask=None`. The
LLM then computes nothing for the padding of short prompts (an ASR or VSR prompt padded to the
AVSR prompt's length, a high compression rate padded to a low one's), except the tail of a row.

Which attention implementations see the packing (transformers 5.23, read in its source):

- `eager`, `sdpa`, `flex_attention`: the model builds its mask with `masking_utils.create_causal_mask`
  (or its sliding-window / chunked variants). Given `position_ids`, no `attention_mask` and no
  cache (`past_key_values` None), `_preprocess_mask_arguments` finds where the position ids do not
  increase by one (`find_packed_sequence_indices`) and the mask function becomes block-diagonal
  causal (`packed_sequence_compatibility_function`): an additive float mask for eager, a boolean
  mask for sdpa (which then cannot take its `is_causal` fast path), a BlockMask for flex. The
  attention still spans all L x L pairs of a row, masked, so rows are kept short: by default at
  most twice the pass's longest sequence (`DEFAULT_ROW_FACTOR`). A row then costs at most four
  padded sequences' attention and there are about half as many rows, while what packing is for
  fits: an utterance's ASR and VSR prompts are together about one AVSR prompt plus an instruction
  and transcript, too long to share a row of one AVSR prompt's length. The saving is in the
  projections and MLPs, which dominate at these lengths (per token, attention is ~4 L D flops
  against ~24 D^2). Measured with SmolLM2-135M (D 576) in float32 on one busy CPU thread, forward
  and backward of one eager pass of 8 utterances x 3 tasks (1400 tokens, padded 24 x 80), CPU
  seconds: padded 13.5; rows up to 1x the longest 12.1, up to 2x 11.1; all in one row 20 to 27.
  `model_conf.pack_length` sets the row length instead.
- `flash_attention_2`, `flash_attention_3`: their mask is None whatever the position ids; the
  attention call (`modeling_flash_attention_utils._flash_attention_forward`) detects packing from
  the position ids (`_is_packed_sequence`) only for a batch of one row, and then runs the varlen
  kernel, which computes nothing across sequences. Packing for them puts the whole pass in one row.
- any other implementation (paged attention, kernels from the hub, ...): refused here. One the
  mask functions do not know gets no mask at all (`_preprocess_mask_arguments` returns early), and
  a packed row would attend across its sequences.

Conditions besides the implementation: the model passes `position_ids` to its mask creation
(Llama, Qwen2, Mistral, SmolLM2 in transformers 5 do), no KV cache (training-style passes only;
decoding with `generate` stays padded), and no attention weights (`output_attentions`: they would
be in the packed layout). Because a model's own code decides the first condition, the decoder runs
a probe (`HFCausalLMDecoder.verify_packing`) on its first packed pass and refuses to go on if a
packed sequence does not give its padded result.

Equivalence: in float32 the packed pass gives the padded pass's hidden states, losses and
gradients up to summation order (tests/decoders/test_sequence_packing.py, eager and sdpa).
Dropout inside the LLM (LoRA dropout) draws its masks over the packed layout, so with dropout > 0
a training step is equivalent in distribution, not number for number.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from espnet_omni_avsr.decoders.prompt import TokenType

# transformers' mask functions build a block-diagonal causal mask from the position ids
MASKED_PACKING = ("eager", "sdpa", "flex_attention")
# flash attention detects packing from the position ids of a single row (varlen kernel)
VARLEN_PACKING = ("flash_attention_2", "flash_attention_3")
# MASKED_PACKING's default row length, in longest sequences of the pass
DEFAULT_ROW_FACTOR = 2


@dataclass
class PackedPrompt:
    """The sequences of a padded `Prompt` packed into rows, as the LLM reads them.

    embeds (R, L, D); position_ids (R, L) long: the index within its sequence (a row's tail, past
    its last sequence, is a filler sequence of its own, 0, 1, ...); mask (R, L) long: 1 at sequence
    tokens, 0 at a row's tail; token_types (R, L) long (`TokenType`, PAD at a tail), in the layout
    of the LLM's hidden states (what MoME's token selection reads); tasks: the task of each packed
    sequence, as the padded prompt's (what LoRA's adapter choice reads); packed_index and
    padded_index (T,): the flat positions of the T sequence tokens in (R * L) and in the padded
    prompt's (S * N), in the same order; padded_shape: (S, N).
    """

    embeds: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    token_types: torch.Tensor
    tasks: List[str]
    packed_index: torch.Tensor
    padded_index: torch.Tensor
    padded_shape: tuple

    @property
    def num_rows(self) -> int:
        return self.embeds.size(0)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(R, L, ...) in the packed layout -> (S, N, ...) in the padded prompt's, zeros at its padding."""
        s, n = self.padded_shape
        flat = x.reshape(-1, *x.shape[2:])
        out = flat.new_zeros((s * n, *x.shape[2:]))
        return out.index_copy(0, self.padded_index, flat.index_select(0, self.packed_index)).view(s, n, *x.shape[2:])


def assign_rows(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """First-fit decreasing: the sequence indices of each row, every row's total length at most
    `capacity` (a sequence longer than that gets a row of its own). Deterministic: ties in length
    keep the sequences' order."""
    rows: List[List[int]] = []
    room: List[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


class SequencePacker:
    """Lays the sequences of an LLM pass out in packed rows (`model_conf.pack_sequences`).

    Args:
        attn_implementation: the LLM's (`decoder_conf.attn_implementation`); one of
            MASKED_PACKING or VARLEN_PACKING (module docstring), else a ValueError.
        max_length: the longest row for MASKED_PACKING (`model_conf.pack_length`); None:
            DEFAULT_ROW_FACTOR x the pass's longest sequence (module docstring). Not for
            VARLEN_PACKING, which packs a pass into one row.
    """

    def __init__(self, attn_implementation: str, max_length: Optional[int] = None):
        if attn_implementation not in MASKED_PACKING + VARLEN_PACKING:
            raise ValueError(
                f"model_conf.pack_sequences: the LLM's attention {attn_implementation!r} does not detect packed "
                f"sequences (transformers does for {list(MASKED_PACKING + VARLEN_PACKING)}; "
                "espnet_omni_avsr/decoders/sequence_packing.py says why): set decoder_conf.attn_implementation "
                "to one of those, or pack_sequences: false"
            )
        if max_length is not None and attn_implementation in VARLEN_PACKING:
            raise ValueError(f"model_conf.pack_length applies to {list(MASKED_PACKING)}; with {attn_implementation} "
                             "a pass is packed into one row (flash attention detects packing only there)")
        if max_length is not None and max_length < 1:
            raise ValueError(f"model_conf.pack_length must be >= 1 (or null), got {max_length}")
        self.attn_implementation = attn_implementation
        self.max_length = max_length
        self.one_row = attn_implementation in VARLEN_PACKING

    def pack(self, prompt, one_row: bool = False) -> PackedPrompt:
        """A right-padded `Prompt` (S, N) -> `PackedPrompt` (R, L); `one_row`: every sequence in one
        row whatever the implementation (the decoder's probe)."""
        s, n = prompt.mask.shape
        lengths = prompt.mask.sum(1)
        device = prompt.mask.device
        if not torch.equal(prompt.mask.bool(), torch.arange(n, device=device)[None, :] < lengths[:, None]):
            raise ValueError("sequence packing needs right-padded prompts (training passes), not left-padded ones")
        lens = [int(x) for x in lengths.tolist()]
        if one_row or self.one_row:
            rows = [list(range(s))]
        else:
            rows = assign_rows(lens, self.max_length or DEFAULT_ROW_FACTOR * max(lens))
        width = max(sum(lens[i] for i in row) for row in rows)
        packed_index, padded_index, positions = [], [], torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):
            offset = 0
            for i in row:
                packed_index.append(torch.arange(r * width + offset, r * width + offset + lens[i]))
                padded_index.append(torch.arange(i * n, i * n + lens[i]))
                positions[r, offset:offset + lens[i]] = torch.arange(lens[i])
                offset += lens[i]
            positions[r, offset:] = torch.arange(width - offset)  # the tail: a filler sequence of its own
        packed_index = torch.cat(packed_index).to(device)
        padded_index = torch.cat(padded_index).to(device)
        d = prompt.embeds.size(-1)
        flat = prompt.embeds.reshape(s * n, d)
        # index_copy and index_select carry the gradient back to the padded prompt's embeddings
        embeds = flat.new_zeros(len(rows) * width, d).index_copy(0, packed_index, flat.index_select(0, padded_index))
        mask = torch.zeros(len(rows) * width, dtype=torch.long, device=device).index_fill(0, packed_index, 1)
        types = torch.full((len(rows) * width,), int(TokenType.PAD), dtype=torch.long, device=device)
        types = types.index_copy(0, packed_index, prompt.token_types.reshape(-1).index_select(0, padded_index))
        return PackedPrompt(
            embeds=embeds.view(len(rows), width, d),
            position_ids=positions.to(device),
            mask=mask.view(len(rows), width),
            token_types=types.view(len(rows), width),
            tasks=list(prompt.tasks),
            packed_index=packed_index,
            padded_index=padded_index,
            padded_shape=(s, n),
        )
