"""The ESPnet model: modality branches feed compressed tokens to a frozen LLM decoder.

It composes parts and owns no objective: the branches make features and tokens (an optional fused
branch joins the audio and video features into one `audiovisual` stream that the AVSR task reads
instead of its two, MMS-LLaMA's early fusion), the task schedule
says which (task, condition) sequences a step trains on, the decoder runs the LLM passes, and the
loss terms of the config (`losses:`) turn the step record into the loss.
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import Prompt, PromptLayout
from espnet_omni_avsr.decoders.sequence_packing import SequencePacker
from espnet_omni_avsr.losses.abs_loss_term import AbsLossTerm
from espnet_omni_avsr.losses.llm_cross_entropy import LLMCrossEntropy
from espnet_omni_avsr.models.fused_branch import FusedBranch
from espnet_omni_avsr.models.modality_branch import ModalityBranch
from espnet_omni_avsr.models.step_record import LLMPass, StepRecord
from espnet_omni_avsr.models.task_schedule import TaskSchedule
from espnet_omni_avsr.names import FUSED, MODALITIES, TASK_MODALITIES, modalities_of
from espnet_omni_avsr.utils.frozen_weights import skip_frozen_pretrained_weights

Tokens = Tuple[torch.Tensor, torch.Tensor]  # (B, T, D_llm), (B,)


class AVSRLLMModel(AbsESPnetModel):
    """ASR / VSR / AVSR with an LLM reading audio and/or video tokens.

    Args:
        decoder: the LLM decoder (with its adapter).
        audio: the audio branch (None when no task of this model hears audio).
        video: the video branch (None when no task of this model sees video).
        fused: the early-fused audio-visual branch (None: late fusion, each modality its own
            block); a task reading exactly the modalities it fuses (AVSR) then reads its stream.
        losses: the loss terms (`losses.abs_loss_term.AbsLossTerm`, built from the config's
            `losses:` list); the total loss is sum(weight * loss). Default: the LLM cross entropy.
        tasks, task_weights, rate_sampling: the multi-task, matryoshka schedule (`TaskSchedule`).
        batched_tasks: put the sequences of all tasks and conditions through the LLM as one batch
            (True; the adapter may still split them, e.g. task-specific LoRA by task) or one pass each.
        pack_sequences: run each LLM pass's sequences packed into rows without padding
            (`decoders.sequence_packing`: which attention implementations allow it, and why) instead
            of padded to the pass's longest; the losses are those of the padded pass. Off by default.
        pack_length: with pack_sequences, the longest packed row for eager / sdpa / flex attention
            (None: twice the pass's longest sequence; `decoders.sequence_packing` says why).
        instructions: task -> instruction text (defaults: the papers' instructions).
        prompt_templates: task -> a template of the prompt between BOS and transcript, with
            `{stream}` placeholders (`decoders.prompt`; MMS-LLaMA's for the fused AVSR).
        save_frozen_pretrained: keep the frozen weights that were loaded from a pretrained folder
            (LLM, Whisper) in checkpoints. Off by default: they reload from their folders, and a
            checkpoint of a 8B-LLM model then holds only what was trained.
    """

    def __init__(
        self,
        decoder: HFCausalLMDecoder,
        audio: Optional[ModalityBranch] = None,
        video: Optional[ModalityBranch] = None,
        fused: Optional[FusedBranch] = None,
        losses: Optional[Sequence[AbsLossTerm]] = None,
        tasks: Sequence[str] = ("avsr",),
        task_weights: Optional[Sequence[float]] = None,
        rate_sampling: str = "one_pair",
        batched_tasks: bool = True,
        pack_sequences: bool = False,
        pack_length: Optional[int] = None,
        instructions: Optional[Mapping[str, str]] = None,
        prompt_templates: Optional[Mapping[str, str]] = None,
        save_frozen_pretrained: bool = False,
    ):
        super().__init__()
        self.decoder = decoder
        self.audio = audio
        self.video = video
        self.fused = fused
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        needed = set(modalities_of(tasks)) | (set(fused.inputs) if fused is not None else set())
        for m in sorted(needed):
            if getattr(self, m) is None:
                raise ValueError(
                    f"task(s) {tasks} need a {m} branch, but the config builds none "
                    f"(set {m}_frontend, {m}_compressor and {m}_projector)"
                )
        unknown = [t for t in tasks if t not in TASK_MODALITIES]
        if unknown:
            raise ValueError(f"model_conf.tasks {tasks}: {unknown} are not tasks; choose from {sorted(TASK_MODALITIES)}")
        streams = {t: self.task_streams(t) for t in tasks}
        if fused is not None and not any(FUSED in s for s in streams.values()):
            raise ValueError(f"a fusion is set, but none of the tasks {tasks} reads both {list(fused.inputs)}")
        for t, names in streams.items():
            for m in names:
                if not self.stream_branches[m].conditions:
                    raise ValueError(
                        f"task {t} reads {m} tokens, but the {m} branch has no compressor (it only feeds the "
                        f"fusion): set {m}_compressor and {m}_projector, or drop {t} from the tasks"
                    )
        self.schedule = TaskSchedule(
            tasks, task_weights, rate_sampling, {m: b.conditions for m, b in self.stream_branches.items()}, streams
        )
        self.batched_tasks = batched_tasks
        if pack_length is not None and not pack_sequences:
            raise ValueError("model_conf.pack_length is the longest packed row: it needs pack_sequences: true")
        # None: padded passes (the default); the packer refuses an attention implementation that cannot pack
        self.packer = SequencePacker(decoder.attn_implementation, pack_length) if pack_sequences else None
        self.prompt = PromptLayout(decoder.tokenizer, instructions, streams, prompt_templates)
        terms = list(losses) if losses is not None else [LLMCrossEntropy("llm")]
        names = [t.name for t in terms]
        if not terms or len(set(names)) != len(names):
            raise ValueError(f"losses: give at least one loss term, each with its own name; got {names}")
        self.losses = torch.nn.ModuleDict({t.name: t for t in terms})
        if not save_frozen_pretrained:
            skip_frozen_pretrained_weights(self)

    @property
    def tasks(self) -> List[str]:
        return self.schedule.tasks

    @property
    def task(self) -> str:
        """The default task for decoding."""
        return self.tasks[0]

    @property
    def branches(self) -> Dict[str, ModalityBranch]:
        """modality -> branch, for the branches this model has."""
        return {m: getattr(self, m) for m in MODALITIES if getattr(self, m, None) is not None}

    @property
    def stream_branches(self) -> Dict[str, torch.nn.Module]:
        """stream -> the branch making its tokens: the modality branches, and the fused one."""
        out: Dict[str, torch.nn.Module] = dict(self.branches)
        if self.fused is not None:
            out[FUSED] = self.fused
        return out

    def task_streams(self, task: str) -> Tuple[str, ...]:
        """The token streams `task`'s prompt holds: its modalities, or the fused stream when this
        model fuses exactly those modalities."""
        if task not in TASK_MODALITIES:
            raise ValueError(f"unknown task {task!r}: choose from {sorted(TASK_MODALITIES)}")
        mods = TASK_MODALITIES[task]
        if self.fused is not None and set(mods) == set(self.fused.inputs):
            return (FUSED,)
        return mods

    def conditions(self, modality: str) -> List[str]:
        """The conditions a branch (or the fused stream) was trained at (the first is the default)."""
        return self.stream_branches[modality].conditions

    # ---------------------------------------------------------------------------------------------
    def encode(self, tasks: Sequence[str], batch: Mapping[str, torch.Tensor]) -> Dict[str, Tokens]:
        """Run the front end and encoder of each modality the tasks need, once, then the fusion
        when a task reads the fused stream."""
        fuse = any(FUSED in self.task_streams(t) for t in tasks)
        out = {}
        for m in sorted(set(modalities_of(tasks)) | (set(self.fused.inputs) if fuse else set())):
            spec = MODALITIES[m]
            if batch.get(spec.data_name) is None:
                raise ValueError(
                    f"task(s) {list(tasks)} need '{spec.data_name}' in the batch: give a {spec.scp} as "
                    f"--*_data_path_and_name_and_type <dir>/{spec.scp},{spec.data_name},{spec.loader}"
                )
            out[m] = getattr(self, m).encode(batch[spec.data_name], batch[spec.lengths_name])
        if fuse:
            out[FUSED] = self.fused.encode(out)
        return out

    def modality_tokens(
        self, tasks: Sequence[str], batch: Mapping[str, torch.Tensor], conditions: Optional[Mapping[str, object]] = None
    ) -> Dict[str, Tokens]:
        """stream -> (tokens (B, T_m, D_llm), lengths (B,)) at `conditions` (default: each first),
        for the streams the tasks read."""
        conditions = conditions or {}
        features = self.encode(tasks, batch)
        streams = sorted({s for t in tasks for s in self.task_streams(t)})
        return {
            m: self.stream_branches[m].tokenize(*features[m], conditions.get(m, self.conditions(m)[0]))
            for m in streams
        }

    def forward(
        self,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        speech: Optional[torch.Tensor] = None,
        speech_lengths: Optional[torch.Tensor] = None,
        video: Optional[torch.Tensor] = None,
        video_lengths: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """sum(weight * loss) over the loss terms, on one step record.

        Args:
            text: (B, L) transcript ids from the LLM tokenizer, padded with -1.
            speech: (B, S) 16 kHz waveform; video: (B, T, H, W) mouth-ROI frames.
        """
        batch = dict(speech=speech, speech_lengths=speech_lengths, video=video, video_lengths=video_lengths)
        step = StepRecord(
            text=text,
            text_lengths=text_lengths,
            features=self.encode(self.tasks, batch),
            branches=self.stream_branches,
            decoder=self.decoder,
            task_weights=self.schedule.task_weights,
        )
        if any(t.uses_llm for t in self.losses.values()):
            self.run_llm(step)
        stats: Dict[str, torch.Tensor] = {}
        loss = None
        for term in self.losses.values():
            out = term(step)
            stats.update(out.stats)
            weighted = term.weight * out.loss
            loss = weighted if loss is None else loss + weighted
        stats["loss"] = loss.detach()
        # 1-dim tensors, as ESPnet's models return: DataParallel gathers them and the distributed
        # trainer's recursive_average weights them by the batch size
        return force_gatherable((loss, stats, text.size(0)), loss.device)

    def run_llm(self, step: StepRecord) -> None:
        """The step's jobs through the LLM: one pass per group (`batched_tasks`, the adapter's
        grouping), prompts of a group stacked along the batch (and packed into rows with
        `pack_sequences`); fills `step.jobs` and `step.llm_passes`."""
        step.jobs = self.schedule.jobs(self.training)
        wanted = {o for t in self.losses.values() for o in t.llm_outputs}
        if self.batched_tasks:
            groups = self.decoder.pass_groups([j.task for j in step.jobs])
        else:
            groups = [[i] for i in range(len(step.jobs))]
        for group in groups:
            jobs = [step.jobs[i] for i in group]
            prompt = Prompt.cat([
                self.prompt.build(
                    self.decoder.embed,
                    job.task,
                    {m: step.tokens(m, c) for m, c in job.conditions},
                    step.text,
                    step.text_lengths,
                    padding_side="right",
                    conditions=job.condition_map,
                )
                for job in jobs
            ])
            output = self.decoder(
                prompt,
                output_hidden_states="hidden_states" in wanted,
                output_attentions="attentions" in wanted,
                packer=self.packer,
            )
            step.llm_passes.append(LLMPass(jobs, prompt, output))

    @torch.no_grad()
    def generate_ids(
        self,
        speech: Optional[torch.Tensor] = None,
        speech_lengths: Optional[torch.Tensor] = None,
        video: Optional[torch.Tensor] = None,
        video_lengths: Optional[torch.Tensor] = None,
        task: Optional[str] = None,
        rates: Optional[Mapping[str, object]] = None,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        **generate_kwargs,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Batched decoding of one task at chosen conditions (`rates`: modality -> rate or condition
        name; elastic inference; default: each branch's first). Returns (the new token ids (B, L),
        LLM input tokens per utterance, counted from the tokens the branches made)."""
        task = task or self.task
        conditions = {
            m: self.stream_branches[m].check_condition((rates or {}).get(m, self.conditions(m)[0]))
            for m in self.task_streams(task)
        }
        batch = dict(speech=speech, speech_lengths=speech_lengths, video=video, video_lengths=video_lengths)
        tokens = self.modality_tokens([task], batch, conditions)
        prompt = self.prompt.build(self.decoder.embed, task, tokens, padding_side="left", conditions=conditions)
        out = self.decoder.generate(prompt, max_new_tokens=max_new_tokens, num_beams=num_beams, **generate_kwargs)
        return out, sum(lengths for _, lengths in tokens.values())

    def hypotheses(self, ids: torch.Tensor) -> List[str]:
        """New token ids (B, L) -> transcripts."""
        return [t.strip() for t in self.decoder.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def recognize(self, *args, **kwargs):
        """`generate_ids`, with the hypotheses as text: (transcripts, LLM input tokens per utterance)."""
        ids, n_modality = self.generate_ids(*args, **kwargs)
        return self.hypotheses(ids), n_modality

    def collect_feats(self, **batch) -> Dict[str, torch.Tensor]:
        # Features are computed inside the model and need no global statistics.
        return {}
