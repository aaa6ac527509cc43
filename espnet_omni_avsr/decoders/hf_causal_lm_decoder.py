"""The LLM decoder: any Hugging Face causal LM loaded from a local folder, frozen, with an adapter.

One LLM pass is `decoder(prompt) -> LLMOutput`; the model never reaches inside the LLM or its adapter.
The four modality delimiters get their own small trainable embedding table instead of new rows in
the LLM's (frozen) vocabulary; the LM head is never asked to produce them.
"""
import contextlib
import logging
import os
from typing import Optional

import torch

from espnet_omni_avsr.adapters.abs_llm_adapter import AbsLLMAdapter
from espnet_omni_avsr.decoders.llm_output import LLMOutput
from espnet_omni_avsr.decoders.llm_tokenizer import load_llm_tokenizer, special_tokens
from espnet_omni_avsr.decoders.prompt import IGNORE_ID, Prompt
from espnet_omni_avsr.decoders.sequence_packing import SequencePacker
from espnet_omni_avsr.utils.dtypes import resolve_dtype
from espnet_omni_avsr.utils.frozen_weights import mark_pretrained
from espnet_omni_avsr.utils.trainable import set_trainable

# verify_packing's bound on the relative error of a packed sequence's last hidden states against
# its padded run, for an LLM in float32 and in bf16/fp16: summation order alone moves float32 by
# ~1e-6 and bf16/fp16 by ~1e-2; a sequence that attends to the one before it moves by O(1)
PACKING_PROBE_TOLERANCE_FP32 = 1e-4
PACKING_PROBE_TOLERANCE_HALF = 5e-2


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the LM head: its input made contiguous.

    generate() runs the head on the prompt's last position, a strided slice (B, 1, D) of the hidden
    states. torch's matmul does not fold such an input into one (B, D) x (D, V) product: it multiplies
    against B expanded copies of the head, which with bf16 weights materialises B copies of the whole
    (V, D) table (3.4 GB for 60 beams x SmolLM2's 49,152 x 576; seconds per call). Contiguous, it is
    one matrix product.
    """
    return (args[0].contiguous(),) + tuple(args[1:])


class HFCausalLMDecoder(torch.nn.Module):
    """A frozen `AutoModelForCausalLM` (Llama, Qwen2, SmolLM2, ...) that reads `inputs_embeds`.

    Args:
        model_dir: local Hugging Face folder (config.json, weights, tokenizer files). Nothing is
            fetched from a hub and `trust_remote_code` stays off.
        adapter: what to put inside the LLM (`llm_adapter:`: a LoRA strategy; None: nothing).
        frozen: freeze the LLM's own weights (the papers' setting).
        dtype: "float32", "bfloat16", "float16" or "auto" (bf16 where the hardware multiplies it
            natively, else fp32: `utils.dtypes`) for the LLM's frozen weights.
        attn_implementation: passed to transformers ("sdpa", "eager", "flash_attention_2").
        gradient_checkpointing: trade compute for memory on large LLMs.
    """

    def __init__(
        self,
        model_dir: str,
        adapter: Optional[AbsLLMAdapter] = None,
        frozen: bool = True,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        from transformers import AutoModelForCausalLM

        weights_dtype = resolve_dtype(dtype, "decoder_conf.dtype")
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise FileNotFoundError(
                f"LLM folder {model_dir!r} has no config.json: give a local Hugging Face model folder "
                "(for the offline SmolLM2-135M run `python -m espnet_omni_avsr.bin.prepare_pretrained`)"
            )
        self.model_dir = model_dir
        self.tokenizer = load_llm_tokenizer(model_dir)
        llm = AutoModelForCausalLM.from_pretrained(
            model_dir,
            local_files_only=True,
            trust_remote_code=False,
            dtype=weights_dtype,
            attn_implementation=attn_implementation,
        )
        mark_pretrained(llm, source=model_dir)
        if frozen:  # the weights only: the LLM follows train/eval mode, so LoRA dropout trains
            set_trainable(llm, False, eval_parts=())
        if gradient_checkpointing:
            # Non-reentrant: LoRA gets its gradients whatever the inputs need. A layer recomputed in
            # backward runs under its own pass's adapter state (`_checkpoint_contexts`).
            llm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": self._checkpoint_contexts}
            )
            llm.config.use_cache = False
        self._pass_prompt = None  # the Prompt or PackedPrompt of the pass running now (forward)
        self._packing_verified = False  # verify_packing passed (on the first packed pass)
        self.adapter = adapter
        self.llm = adapter.wrap(llm) if adapter is not None else llm
        self.attn_implementation = attn_implementation
        self.frozen = frozen

        base = self.base_model
        base.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
        self.hidden_size = base.config.hidden_size
        embed = base.get_input_embeddings()
        # Trainable embeddings of <audio> </audio> <video> </video>, started at the mean embedding.
        mean = embed.weight.detach().float().mean(0)
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(len(special_tokens()), self.hidden_size, generator=gen) * 0.02
        self.special_embeddings = torch.nn.Parameter(mean + noise * embed.weight.detach().float().std())
        ids = self.tokenizer.convert_tokens_to_ids(special_tokens())
        self.register_buffer("special_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.pad_id = self.tokenizer.pad_token_id
        self.eos_id = self.tokenizer.eos_token_id
        # generate() fills finished rows with the pad id and feeds it back to the LLM as the next input,
        # so that id must be a row of the embedding table. The `<pad>` added to a tokenizer without one
        # (Llama 3 base, the tiny random Llama) lies past it: EOS is used instead (decoding drops both).
        vocab = embed.weight.size(0)
        self.generation_pad_id = self.pad_id if self.pad_id is not None and 0 <= self.pad_id < vocab else self.eos_id
        self.bos_id = self.tokenizer.bos_token_id
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        logging.info(f"LLM {model_dir}: hidden {self.hidden_size}, trainable parameters {n_train}")

    def _checkpoint_contexts(self):
        """torch checkpoint's `context_fn`, called as a layer runs forward: its recompute in backward
        prepares the adapter again with that pass's prompt, because the adapter's state is per pass
        (task LoRA: the task's adapters) and backward recomputes a step's passes after the last
        one has set it."""
        adapter, prompt = self.adapter, self._pass_prompt
        if adapter is None or prompt is None:
            return contextlib.nullcontext(), contextlib.nullcontext()

        @contextlib.contextmanager
        def prepared():
            adapter.prepare(prompt)
            yield

        return contextlib.nullcontext(), prepared()

    @property
    def base_model(self) -> torch.nn.Module:
        """The transformers CausalLM model (inside the peft wrapper when LoRA is on)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def pass_groups(self, tasks) -> list:
        """Indices of sequences (given their tasks) that may share one LLM pass (the adapter decides)."""
        return self.adapter.pass_groups(tasks) if self.adapter is not None else [list(range(len(tasks)))]

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.get_input_embeddings().weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, N) -> embeddings (B, N, D); the delimiters come from the trainable table.

        Ids outside the LLM's vocabulary (an added pad) are clamped: padding is masked anyway.
        """
        table = self.base_model.get_input_embeddings()
        vocab = table.weight.size(0)
        out = table(ids.clamp(0, vocab - 1))
        special = self.special_embeddings.to(out.dtype)
        for k in range(self.special_ids.numel()):
            hit = (ids == self.special_ids[k]).unsqueeze(-1)
            out = torch.where(hit, special[k], out)
        return out

    @property
    def num_layers(self) -> int:
        """The LLM's number of transformer layers."""
        return self.base_model.config.num_hidden_layers

    def output_embeddings(self) -> torch.Tensor:
        """The LM head's weight (V, D): the frozen output embedding table."""
        return self.base_model.get_output_embeddings().weight

    def forward(
        self,
        prompt: Prompt,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        packer: Optional[SequencePacker] = None,
    ) -> LLMOutput:
        """One teacher-forced pass: the adapter is prepared with the prompt, the LM head runs only
        at the scored positions (`LLMOutput`). Attention weights need `attn_implementation: eager`.
        With a `packer` (`model_conf.pack_sequences`) the prompt's sequences run packed into rows
        without padding (`decoders.sequence_packing`); the output is in the prompt's padded layout
        either way (zeros at the padding when packed)."""
        if output_attentions and self.attn_implementation != "eager":
            raise ValueError(
                f"attention weights need decoder_conf.attn_implementation: eager (it is {self.attn_implementation!r})"
            )
        if packer is None:
            out = self._run(prompt, prompt.mask, None, output_hidden_states, output_attentions)
            hidden = out.last_hidden_state
            hidden_states = out.hidden_states if output_hidden_states else None
        else:
            if output_attentions:
                raise ValueError("attention weights come from padded passes only: set model_conf.pack_sequences: false")
            if not self._packing_verified:
                self.verify_packing(prompt, packer)
            packed = packer.pack(prompt)
            out = self._run(packed, None, packed.position_ids, output_hidden_states, False)
            hidden = packed.unpack(out.last_hidden_state)
            hidden_states = tuple(packed.unpack(h) for h in out.hidden_states) if output_hidden_states else None
        scored = prompt.next_token_targets() != IGNORE_ID
        logits = self.base_model.get_output_embeddings()(hidden[scored]).float()  # (K, V)
        return LLMOutput(
            last_hidden_state=hidden,
            scored=scored,
            logits=logits,
            hidden_states=hidden_states,
            attentions=out.attentions if output_attentions else None,
            aux_losses=self.adapter.aux_losses() if self.adapter is not None else {},
        )

    def _run(
        self,
        inputs,
        attention_mask: Optional[torch.Tensor],
        position_ids: Optional[torch.Tensor],
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ):
        """The LLM's layers (no LM head, no cache) on a `Prompt` or a `PackedPrompt`, the adapter
        prepared with it; returns transformers' output."""
        if self.adapter is not None:
            self.adapter.prepare(inputs)
        self._pass_prompt = inputs
        try:
            return self.base_model.get_decoder()(
                inputs_embeds=inputs.embeds.to(self.dtype),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            )
        finally:
            self._pass_prompt = None

    def verify_packing(self, prompt: Prompt, packer: SequencePacker) -> None:
        """The probe of packing, run on the first packed pass: two of the prompt's sequences (one
        twice when it has one), padded, and packed into one row, in eval mode without gradients.
        Where the model's masking does not see the packing, the second sequence attends to the
        first and its last hidden states differ: RuntimeError, before any step trains on that."""
        probe = prompt.rows([0, 1] if prompt.batch_size > 1 else [0, 0])
        modes = [(m, m.training) for m in self.modules()]
        self.eval()  # no dropout: the two runs must be comparable
        try:
            with torch.no_grad():
                want = self._run(probe, probe.mask, None).last_hidden_state[1]
                packed = packer.pack(probe, one_row=True)
                got = packed.unpack(self._run(packed, None, packed.position_ids).last_hidden_state)[1]
        finally:
            for m, training in modes:
                m.training = training
        real = probe.mask[1].bool()
        want, got = want[real].float(), got[real].float()
        error = float((got - want).norm() / want.norm().clamp_min(1e-12))
        tolerance = PACKING_PROBE_TOLERANCE_FP32 if self.dtype == torch.float32 else PACKING_PROBE_TOLERANCE_HALF
        if not error <= tolerance:
            raise RuntimeError(
                f"model_conf.pack_sequences: {type(self.base_model).__name__} with {self.attn_implementation!r} attention "
                f"does not keep packed sequences apart (a sequence packed after another differs from its padded run "
                f"by {error:.3g} relative, tolerance {tolerance:g}): its masking does not detect packing from "
                "position_ids; set pack_sequences: false"
            )
        self._packing_verified = True

    @torch.no_grad()
    def generate(self, prompt: Prompt, max_new_tokens: int = 32, num_beams: int = 1, **kwargs) -> torch.Tensor:
        """Batched decoding with the KV cache from a left-padded prompt; returns new token ids (rows
        that end early are filled with `generation_pad_id`)."""
        if self.adapter is not None:
            self.adapter.prepare(prompt)
        return self.llm.generate(
            inputs_embeds=prompt.embeds.to(self.dtype),
            attention_mask=prompt.mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=self.eos_id,
            pad_token_id=self.generation_pad_id,
            **kwargs,
        )
