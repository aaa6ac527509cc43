"""The ESPnet model: modality branches feed compressed tokens to a frozen LLM decoder."""
import itertools
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.decoders.prompt import IGNORE_ID, TASK_MODALITIES, PromptLayout
from espnet_omni_avsr.models.aux_ctc import CharCTC
from espnet_omni_avsr.models.av_distill import AudioToVideoDistill
from espnet_omni_avsr.models.modality_branch import ModalityBranch
from espnet_omni_avsr.models.token_ctc import TokenCTC, transcript_token_ids
from espnet_omni_avsr.utils.frozen_weights import skip_frozen_pretrained_weights
from espnet_omni_avsr.utils.rates import condition_label

_INPUT_NAMES = {"audio": "speech", "video": "video"}
RATE_SAMPLING = ("one_pair", "all_pairs")
Tokens = Tuple[torch.Tensor, torch.Tensor]  # (B, T, D_llm), (B,)


def _modality_weights(
    name: str, weights: Optional[Mapping[str, float]], tasks: Sequence[str], used: Sequence[str]
) -> Dict[str, float]:
    """modality -> weight of an auxiliary loss, zero weights dropped; a modality that no task uses, or
    a negative weight, is refused."""
    out = {m: float(w) for m, w in (weights or {}).items() if float(w) != 0.0}
    for m, w in out.items():
        if m not in used or w < 0:
            raise ValueError(f"{name}: {m!r}: {w} needs a weight >= 0 and a modality that the tasks {tasks} use: {used}")
    return out


class AVSRLLMModel(AbsESPnetModel):
    """ASR / VSR / AVSR with an LLM reading audio and/or video tokens.

    One task at one rate per modality is Llama-AVSR. Several tasks make Omni-AVSR's multi-task
    step: the encoders run once per batch and the loss is sum_t(weight_t * loss_t) / n_tasks.
    Branches with several compression rates make matryoshka training: each training step uses one
    randomly drawn audio rate and one video rate (`one_pair`, Omni-AVSR) or every combination,
    averaged (`all_pairs`, Llama-MTSK); validation always uses every combination.

    Args:
        decoder: the LLM decoder (with its LoRA strategy).
        audio: the audio branch (None when no task of this model hears audio).
        video: the video branch (None when no task of this model sees video).
        tasks: any of "asr", "vsr", "avsr"; the first is the default for decoding.
        task_weights: one weight per task (default 1 each; Omni-AVSR: asr 1, vsr 1.5, avsr 1).
        rate_sampling: "one_pair" or "all_pairs" (see above).
        batched_tasks: put the prompts of all tasks and rates through the LLM as one batch (True)
            or one pass each. With task-specific LoRA adapters, passes are grouped by task.
        instructions: task -> instruction text (defaults: the papers' instructions).
        ctc_weights: modality -> weight of an auxiliary character CTC loss on that branch's
            encoder features (`aux_ctc.CharCTC`), added to the LLM loss; e.g. {video: 0.5} for a
            lip encoder trained from scratch. Off by default (the papers' setting).
        distill_weight: weight of audio-guided lip distillation (`av_distill.AudioToVideoDistill`:
            video features predict the frozen audio encoder's features); needs a task that uses
            both modalities' encoders. 0 (default): off. distill_conf: its arguments.
        token_ctc_weights: modality -> weight of an auxiliary CTC over the LLM's vocabulary on that
            branch's projected tokens (`token_ctc.TokenCTC`: the projector learns to place the
            words near their LLM embeddings). Off by default (the papers' setting).
        token_ctc_vocab: a Kaldi `text` file (e.g. the training set's): token CTC's softmax then runs
            over the LLM tokens of its transcripts (and each batch's targets) instead of the whole
            vocabulary, several times cheaper. None (default): the whole vocabulary.
        llm_weight: weight of the LLM loss. 0 trains only the auxiliary losses and skips the LLM
            entirely: a cheap warm-up of a lip encoder trained from scratch, whose weights the main
            run then loads (`--init_param`).
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
        rate_sampling: str = "one_pair",
        batched_tasks: bool = True,
        instructions: Optional[Mapping[str, str]] = None,
        ctc_weights: Optional[Mapping[str, float]] = None,
        distill_weight: float = 0.0,
        distill_conf: Optional[Mapping] = None,
        token_ctc_weights: Optional[Mapping[str, float]] = None,
        token_ctc_vocab: Optional[str] = None,
        llm_weight: float = 1.0,
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
        if rate_sampling not in RATE_SAMPLING:
            raise ValueError(f"rate_sampling must be one of {RATE_SAMPLING}, got {rate_sampling!r}")
        self.decoder = decoder
        self.audio = audio
        self.video = video
        self.tasks = tasks
        self.task_weights = dict(zip(tasks, weights))
        self.rate_sampling = rate_sampling
        self.batched_tasks = batched_tasks
        used = sorted({m for t in tasks for m in TASK_MODALITIES[t]})
        for m in used:
            if getattr(self, m) is None:
                raise ValueError(
                    f"task(s) {tasks} need a {m} branch, but the config builds none "
                    f"(set {m}_frontend, {m}_compressor and {m}_projector)"
                )
        self.prompt = PromptLayout(decoder.tokenizer, instructions)
        self.ctc_weights = _modality_weights("ctc_weights", ctc_weights, tasks, used)
        self.ctc = torch.nn.ModuleDict({m: CharCTC(getattr(self, m).feature_size) for m in sorted(self.ctc_weights)})
        self.token_ctc_weights = _modality_weights("token_ctc_weights", token_ctc_weights, tasks, used)
        vocab_ids = None
        if token_ctc_vocab and self.token_ctc_weights:
            vocab_ids = transcript_token_ids(token_ctc_vocab, decoder.tokenizer)
        self.token_ctc = torch.nn.ModuleDict(
            {m: TokenCTC(decoder.hidden_size, vocab_ids=vocab_ids) for m in sorted(self.token_ctc_weights)}
        )
        self.distill_weight = float(distill_weight)
        self.distill = None
        if self.distill_weight:
            if self.distill_weight < 0 or used != ["audio", "video"]:
                raise ValueError(
                    f"distill_weight {distill_weight} needs a weight >= 0 and tasks {tasks} that use both "
                    f"audio and video (they use {used})"
                )
            self.distill = AudioToVideoDistill(video.feature_size, audio.feature_size, **(distill_conf or {}))
        self.llm_weight = float(llm_weight)
        if self.llm_weight < 0 or (
            self.llm_weight == 0 and not (self.ctc_weights or self.distill_weight or self.token_ctc_weights)
        ):
            raise ValueError(
                f"llm_weight {llm_weight}: must be > 0, or 0 with ctc_weights, token_ctc_weights or distill_weight set"
            )
        if not save_frozen_pretrained:
            skip_frozen_pretrained_weights(self)

    @property
    def task(self) -> str:
        """The default task for decoding."""
        return self.tasks[0]

    def rates(self, modality: str) -> List[int]:
        return getattr(self, modality).rates

    # ---------------------------------------------------------------------------------------------
    def encode(self, tasks: Sequence[str], batch: Mapping[str, torch.Tensor]) -> Dict[str, Tokens]:
        """Run the front end and encoder of each modality the tasks need, once."""
        out = {}
        for m in sorted({m for t in tasks for m in TASK_MODALITIES[t]}):
            name = _INPUT_NAMES[m]
            if batch.get(name) is None:
                raise ValueError(
                    f"task(s) {list(tasks)} need '{name}' in the batch: give a {name}.scp as "
                    f"--*_data_path_and_name_and_type <dir>/{name}.scp,{name},"
                    f"{'sound' if name == 'speech' else 'video'}"
                )
            out[m] = getattr(self, m).encode(batch[name], batch[name + "_lengths"])
        return out

    def modality_tokens(
        self, tasks: Sequence[str], batch: Mapping[str, torch.Tensor], rates: Optional[Mapping[str, int]] = None
    ) -> Dict[str, Tokens]:
        """name -> (tokens (B, T_m, D_llm), lengths (B,)) at `rates` (default: each first rate)."""
        feats = self.encode(tasks, batch)
        rates = rates or {}
        return {m: getattr(self, m).tokenize(*f, rates.get(m, self.rates(m)[0])) for m, f in feats.items()}

    def rate_conditions(self, task: str, drawn: Optional[Mapping[str, int]] = None) -> List[Dict[str, int]]:
        """The rate combinations a task trains on in this step."""
        mods = TASK_MODALITIES[task]
        if drawn is not None:
            return [{m: drawn[m] for m in mods}]
        return [dict(zip(mods, c)) for c in itertools.product(*(self.rates(m) for m in mods))]

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
        """Teacher-forced cross entropy on the transcript tokens and EOS, over tasks and rates
        (times `llm_weight`), plus the weighted auxiliary losses (`aux_losses`).

        Args:
            text: (B, L) transcript ids from the LLM tokenizer, padded with -1.
            speech: (B, S) 16 kHz waveform; video: (B, T, H, W) mouth-ROI frames.
        """
        batch = dict(speech=speech, speech_lengths=speech_lengths, video=video, video_lengths=video_lengths)
        feats = self.encode(self.tasks, batch)
        stats: Dict[str, torch.Tensor] = {}
        loss = self.llm_weight * self.llm_loss(feats, text, text_lengths, stats) if self.llm_weight else None
        for name, aux in self.aux_losses(feats, text, text_lengths).items():
            stats[name] = aux.detach()
            weighted = self.aux_weight(name) * aux
            loss = weighted if loss is None else loss + weighted
        stats["loss"] = loss.detach()
        weight = torch.tensor(float(text.size(0)), device=loss.device)
        return loss, stats, weight

    def llm_loss(
        self, feats: Dict[str, Tokens], text: torch.Tensor, text_lengths: torch.Tensor, stats: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """sum_t(weight_t * loss_t) / n_tasks over this step's task x rate sequences; fills `stats`."""
        drawn = None
        if self.training and self.rate_sampling == "one_pair":
            drawn = {m: self.rates(m)[int(torch.randint(len(self.rates(m)), ()))] for m in feats}
        cache: Dict[Tuple[str, int], Tokens] = {}

        def tokens(m: str, rate: int) -> Tokens:
            if (m, rate) not in cache:
                cache[m, rate] = getattr(self, m).tokenize(*feats[m], rate)
            return cache[m, rate]

        jobs = [(t, r) for t in self.tasks for r in self.rate_conditions(t, drawn)]
        results = self.sequence_losses(
            [(t, {m: tokens(m, rate) for m, rate in r.items()}) for t, r in jobs], text, text_lengths
        )
        task_loss = {}
        for t in self.tasks:
            mine = [res for (tj, _), res in zip(jobs, results) if tj == t]
            task_loss[t] = sum(res[0] for res in mine) / len(mine)
            if len(self.tasks) > 1:
                n = sum(res[2] for res in mine)
                stats[f"loss_{t}"] = task_loss[t].detach()
                stats[f"acc_{t}"] = sum(res[1] * res[2] for res in mine) / n
        if len(jobs) > len(self.tasks):
            for (t, r), res in zip(jobs, results):
                stats[f"loss_{condition_label(t, r)}"] = res[0].detach()
        n_tok = sum(res[2] for res in results)
        stats["acc"] = sum(res[1] * res[2] for res in results) / n_tok
        return sum(self.task_weights[t] * task_loss[t] for t in self.tasks) / len(self.tasks)

    def aux_losses(self, feats: Dict[str, Tokens], text: torch.Tensor, text_lengths: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The auxiliary losses, unweighted: ctc_<modality> and distill on the encoders' features,
        token_ctc_<modality> on the projected tokens (averaged over the branch's rates)."""
        out = {}
        if self.ctc_weights:
            texts = self.transcripts(text, text_lengths)
            for m, head in self.ctc.items():
                out[f"ctc_{m}"] = head(*feats[m], texts)
        if self.distill is not None:
            out["distill"] = self.distill(*feats["video"], *feats["audio"])
        if self.token_ctc_weights:
            table = self.decoder.base_model.get_output_embeddings().weight
            for m, head in self.token_ctc.items():
                branch = getattr(self, m)
                losses = [head(*branch.tokenize(*feats[m], r), text, text_lengths, table) for r in branch.rates]
                out[f"token_ctc_{m}"] = sum(losses) / len(losses)
        return out

    def aux_weight(self, name: str) -> float:
        if name == "distill":
            return self.distill_weight
        if name.startswith("token_ctc_"):
            return self.token_ctc_weights[name[len("token_ctc_"):]]
        return self.ctc_weights[name[len("ctc_"):]]

    def transcripts(self, text: torch.Tensor, text_lengths: torch.Tensor) -> List[str]:
        """The batch's transcripts as strings (decoded from the LLM token ids)."""
        return [
            self.decoder.tokenizer.decode(row[: int(n)].tolist(), skip_special_tokens=True)
            for row, n in zip(text, text_lengths)
        ]

    def sequence_losses(
        self,
        jobs: Sequence[Tuple[str, Dict[str, Tokens]]],
        text: torch.Tensor,
        text_lengths: torch.Tensor,
    ) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For each (task, tokens) job: (mean token cross entropy on transcript+EOS, accuracy, count).

        Jobs go through the LLM together (batched_tasks) or one by one; with task-specific LoRA
        adapters, the jobs of one task form a pass with that task's adapters active.
        """
        if not self.batched_tasks:
            groups = [[i] for i in range(len(jobs))]
        elif self.decoder.lora is not None and self.decoder.lora.per_task:
            groups = [[i for i, (t, _) in enumerate(jobs) if t == task] for task in dict.fromkeys(t for t, _ in jobs)]
        else:
            groups = [list(range(len(jobs)))]
        results: List = [None] * len(jobs)
        for group in groups:
            self.decoder.activate(jobs[group[0]][0])
            for i, res in zip(group, self._pass([jobs[i] for i in group], text, text_lengths)):
                results[i] = res
        return results

    def _pass(self, jobs, text, text_lengths):
        """One LLM pass over the prompts of several jobs stacked along the batch."""
        parts = [
            self.prompt.build(self.decoder.embed, t, tok, text, text_lengths, padding_side="right") for t, tok in jobs
        ]
        n_max = max(p[0].size(1) for p in parts)

        def right(x: torch.Tensor, value) -> torch.Tensor:
            pad = (0, 0, 0, n_max - x.size(1)) if x.dim() == 3 else (0, n_max - x.size(1))
            return torch.nn.functional.pad(x, pad, value=value)

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
        out = []
        for i in range(len(jobs)):
            sel = (row >= i * batch) & (row < (i + 1) * batch)
            out.append((ce[sel].mean(), hit[sel].mean().detach(), sel.sum().detach()))
        return out

    @torch.no_grad()
    def recognize(
        self,
        speech: Optional[torch.Tensor] = None,
        speech_lengths: Optional[torch.Tensor] = None,
        video: Optional[torch.Tensor] = None,
        video_lengths: Optional[torch.Tensor] = None,
        task: Optional[str] = None,
        rates: Optional[Mapping[str, int]] = None,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        **generate_kwargs,
    ):
        """Batched decoding of one task at chosen rates (elastic inference; default: the first
        trained rate of each modality). Returns (hypotheses, LLM input tokens per utterance)."""
        task = task or self.task
        if task not in TASK_MODALITIES:
            raise ValueError(f"unknown task {task!r}: choose from {sorted(TASK_MODALITIES)}")
        for m, r in (rates or {}).items():
            if m in TASK_MODALITIES[task]:
                getattr(self, m).check_rate(r)
        batch = dict(speech=speech, speech_lengths=speech_lengths, video=video, video_lengths=video_lengths)
        tokens = self.modality_tokens([task], batch, rates)
        self.decoder.activate(task)
        embeds, mask, _ = self.prompt.build(self.decoder.embed, task, tokens, padding_side="left")
        out = self.decoder.generate(embeds, mask, max_new_tokens=max_new_tokens, num_beams=num_beams, **generate_kwargs)
        texts = self.decoder.tokenizer.batch_decode(out, skip_special_tokens=True)
        n_modality = sum(lengths for _, lengths in tokens.values())
        return [t.strip() for t in texts], n_modality

    def collect_feats(self, **batch) -> Dict[str, torch.Tensor]:
        # Features are computed inside the model and need no global statistics.
        return {}
