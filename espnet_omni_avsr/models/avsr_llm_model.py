"""The ESPnet model: modality branches feed compressed tokens to a frozen LLM decoder."""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import IGNORE_ID, TASK_MODALITIES, PromptLayout
from espnet_omni_avsr.models.modality_branch import ModalityBranch
from espnet_omni_avsr.utils.frozen_weights import skip_frozen_pretrained_weights

_INPUT_NAMES = {"audio": "speech", "video": "video"}


class AVSRLLMModel(AbsESPnetModel):
    """ASR / VSR / AVSR with an LLM reading audio and/or video tokens (Llama-AVSR).

    With several tasks the model is trained on all of them at once (Omni-AVSR's multi-task
    step): the encoders run once per batch, every task's prompts go through the LLM together as
    one batch, and the loss is sum_t(weight_t * loss_t) / number_of_tasks.

    Args:
        decoder: the LLM decoder.
        audio: the audio branch (None when no task of this model hears audio).
        video: the video branch (None when no task of this model sees video).
        tasks: any of "asr", "vsr", "avsr"; the first is the default for decoding.
        task_weights: one weight per task (default 1 each; Omni-AVSR: asr 1, vsr 1.5, avsr 1).
        batched_tasks: one LLM pass for all tasks (True) or one pass per task.
        instructions: task -> instruction text (defaults: the papers' instructions).
        save_frozen_pretrained: keep the frozen weights that were loaded from a pretrained folder
            (LLM, Whisper) in checkpoints. Off by default: they reload from their folders, and a
            checkpoint of a 8B-LLM model then holds only what was trained.
    """

    def __init__(
        self,
        decoder: HFCausalLMDecoder,
        audio: Optional[ModalityBranch] = None,
        video: Optional[ModalityBranch] = None,
        tasks: Sequence[str] = ("avsr",),
        task_weights: Optional[Sequence[float]] = None,
        batched_tasks: bool = True,
        instructions: Optional[Mapping[str, str]] = None,
        save_frozen_pretrained: bool = False,
    ):
        super().__init__()
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [t for t in tasks if t not in TASK_MODALITIES]
        if not tasks or unknown or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be distinct names from {sorted(TASK_MODALITIES)}, got {tasks}")
        weights = [1.0] * len(tasks) if task_weights is None else [float(w) for w in task_weights]
        if len(weights) != len(tasks):
            raise ValueError(f"task_weights {weights} must give one weight per task {tasks}")
        self.decoder = decoder
        self.audio = audio
        self.video = video
        self.tasks = tasks
        self.task_weights = dict(zip(tasks, weights))
        self.batched_tasks = batched_tasks
        for m in sorted({m for t in tasks for m in TASK_MODALITIES[t]}):
            if getattr(self, m) is None:
                raise ValueError(
                    f"task(s) {tasks} need a {m} branch, but the config builds none "
                    f"(set {m}_frontend, {m}_compressor and {m}_projector)"
                )
        self.prompt = PromptLayout(decoder.tokenizer, instructions)
        if not save_frozen_pretrained:
            skip_frozen_pretrained_weights(self)

    @property
    def task(self) -> str:
        """The default task for decoding."""
        return self.tasks[0]

    # ---------------------------------------------------------------------------------------------
    def modality_tokens(
        self, tasks: Sequence[str], batch: Mapping[str, torch.Tensor]
    ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Run each branch the tasks need once: name -> (tokens (B, T_m, D_llm), lengths (B,))."""
        out = {}
        for m in sorted({m for t in tasks for m in TASK_MODALITIES[t]}):
            name = _INPUT_NAMES[m]
            if batch.get(name) is None:
                raise ValueError(
                    f"task(s) {list(tasks)} need '{name}' in the batch: give a {name}.scp as "
                    f"--*_data_path_and_name_and_type <dir>/{name}.scp,{name},"
                    f"{'sound' if name == 'speech' else 'video'}"
                )
            out[m] = getattr(self, m)(batch[name], batch[name + "_lengths"])
        return out

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
        """Teacher-forced cross entropy on the transcript tokens and EOS, weighted over tasks.

        Args:
            text: (B, L) transcript ids from the LLM tokenizer, padded with -1.
            speech: (B, S) 16 kHz waveform; video: (B, T, H, W) mouth-ROI frames.
        """
        batch = dict(speech=speech, speech_lengths=speech_lengths, video=video, video_lengths=video_lengths)
        tokens = self.modality_tokens(self.tasks, batch)
        if self.batched_tasks:
            per_task = self.task_losses(self.tasks, tokens, text, text_lengths)
        else:
            per_task = {}
            for t in self.tasks:
                per_task.update(self.task_losses([t], tokens, text, text_lengths))
        loss = sum(self.task_weights[t] * per_task[t][0] for t in self.tasks) / len(self.tasks)
        n_tok = sum(per_task[t][2] for t in self.tasks)
        acc = sum(per_task[t][1] * per_task[t][2] for t in self.tasks) / n_tok
        stats = dict(loss=loss.detach(), acc=acc)
        if len(self.tasks) > 1:
            for t in self.tasks:
                stats[f"loss_{t}"], stats[f"acc_{t}"] = per_task[t][0].detach(), per_task[t][1]
        weight = torch.tensor(float(text.size(0)), device=loss.device)
        return loss, stats, weight

    def task_losses(
        self,
        tasks: Sequence[str],
        tokens: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
        text: torch.Tensor,
        text_lengths: torch.Tensor,
    ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Task -> (mean token cross entropy on transcript+EOS, token accuracy, token count).

        The prompts of all `tasks` are stacked along the batch and go through the LLM as one pass.
        """
        parts = [
            self.prompt.build(self.decoder.embed, t, tokens, text, text_lengths, padding_side="right")
            for t in tasks
        ]
        n_max = max(p[0].size(1) for p in parts)
        right = lambda x, value: torch.nn.functional.pad(  # noqa: E731
            x, (0, 0, 0, n_max - x.size(1)) if x.dim() == 3 else (0, n_max - x.size(1)), value=value
        )
        embeds = torch.cat([right(e, 0.0) for e, _, _ in parts])
        mask = torch.cat([right(m, 0) for _, m, _ in parts])
        labels = torch.cat([right(lab, IGNORE_ID) for _, _, lab in parts])
        hidden = self.decoder.hidden_states(embeds, mask)
        targets = labels[:, 1:]
        keep = targets != IGNORE_ID
        logits = self.decoder.logits(hidden[:, :-1][keep])  # (K, V): only the scored positions
        gold = targets[keep]
        ce = torch.nn.functional.cross_entropy(logits, gold, reduction="none")
        hit = (logits.argmax(-1) == gold).float()
        row = torch.arange(keep.size(0), device=keep.device)[:, None].expand_as(keep)[keep]
        batch = text.size(0)
        out = {}
        for i, t in enumerate(tasks):
            sel = (row >= i * batch) & (row < (i + 1) * batch)
            out[t] = (ce[sel].mean(), hit[sel].mean().detach(), sel.sum().detach())
        return out

    @torch.no_grad()
    def recognize(
        self,
        speech: Optional[torch.Tensor] = None,
        speech_lengths: Optional[torch.Tensor] = None,
        video: Optional[torch.Tensor] = None,
        video_lengths: Optional[torch.Tensor] = None,
        task: Optional[str] = None,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        **generate_kwargs,
    ):
        """Batched decoding; returns (list of hypothesis strings, number of LLM input tokens per utt)."""
        task = task or self.task
        batch = dict(speech=speech, speech_lengths=speech_lengths, video=video, video_lengths=video_lengths)
        tokens = self.modality_tokens([task], batch)
        embeds, mask, _ = self.prompt.build(self.decoder.embed, task, tokens, padding_side="left")
        out = self.decoder.generate(embeds, mask, max_new_tokens=max_new_tokens, num_beams=num_beams, **generate_kwargs)
        texts = self.decoder.tokenizer.batch_decode(out, skip_special_tokens=True)
        n_modality = sum(lengths for _, lengths in tokens.values())
        return [t.strip() for t in texts], n_modality

    def collect_feats(self, **batch) -> Dict[str, torch.Tensor]:
        # Features are computed inside the model and need no global statistics.
        return {}
