"""The official Llama-AVSR / Omni-AVSR checkpoints: their key layout, and how it maps onto this project.

`bin/import_checkpoint.py` is the command; everything it knows about the two code bases is here.
Facts below were read from the public code (umbertocappellazzo/Llama-AVSR: models/modeling_AVSRLLM.py,
models/Llama_LoRA.py, models/lightning.py, train.py; umbertocappellazzo/Omni-AVSR:
Omni_AVSR/modeling_OmniAVSR.py, modeling_LlamaAVSR.py, Llama_LoRA.py, Qwen_LoRA.py,
lightning_OmniAVSR.py, train_OmniAVSR.py, utils/avg_checkpoints.py, and both READMEs); no code of theirs
is used here.

Files. A released checkpoint is the state dict of their `AVSR_LLMs` module: `utils/avg_checkpoints`
averages Lightning checkpoints and keeps the `state_dict` entries under "model." with that prefix
removed (`model_avg_*.pth`, the released `.pth` files). A Lightning `.ckpt` (`state_dict` with the
"model." prefix, and `hyper_parameters`, their command-line arguments) is read too; its
hyper-parameters then fill in what the weights do not record (LoRA alpha and rank, compression
rates, prompts). Their Lightning modules train with `precision='bf16-true'`, so tensors are bf16.
The state dict holds everything, frozen parts included: the whole LLM, the Whisper encoder and
AV-HuBERT.

Key layout (after the "model." prefix) and what each maps to here, one table per format
(`RULES`; the first rule that matches a key decides):

* LLM LoRA, their own module, not peft (Llama_LoRA.py / Qwen_LoRA.py): in every layer,
  ``llm.model.layers.<i>.self_attn.lora_down_{Q,V}.weight`` (r x hidden) and ``lora_up_Q`` (hidden x r),
  ``lora_up_V`` (kv x r; kv = the v_proj output, hidden // 4 for Llama 3.x-8B / 3.2-1B, // 3 for
  3.2-3B, // 8 for TinyLlama, hidden for Llama 2, // 7, 6, 8, 7, 5 for Qwen2.5 0.5B .. 32B), where
  r = round(hidden / RANK): their `--rank` / `--reduction_lora` is a *reduction factor*. Equation:
  ``q = q_proj(h) + s * up_Q(down_Q(h))``, ``v = v_proj(h) + s * up_V(down_V(h))`` with h the
  attention input (after input_layernorm) and ``s = ALPHA / RANK`` (their `--alpha` over the
  reduction factor, not over r); no dropout; the *down*-projection is zero-initialised (up:
  Kaiming). Omni-AVSR task-specific LoRA (`--is-task-specific`) makes these ModuleDicts keyed
  audio / video / audiovisual (``lora_down_Q.audio.weight``), and `--use-shared-lora-task-specific`
  adds ``lora_{down,up}_{Q,V}_shared``; the forward pass adds ``s * (task + shared)``.
  Here: peft's LoRA (adapters/lora.py) computes ``q_proj(h) + (alpha / r) * B(A(dropout(h)))`` on
  the same q_proj / v_proj inputs, so the mapping is exact: A <- down, B <- up, peft r = their LoRA
  dimension r, peft alpha = s * r, dropout 0. Only the initialisation differs (peft zero-initialises B,
  theirs the down-projection A), which matters for training from scratch, not for these weights.
  No new adapter is needed. Strategies: one set -> `shared_lora` (Llama-AVSR, Omni-AVSR-S,
  Llama-MT); audio / video / audiovisual -> `task_lora` adapters asr / vsr / avsr (Omni-AVSR-T);
  plus shared -> `shared_task_lora` (Omni-AVSR-ST; peft sums the active adapters, each scaled
  by s, which is their ``s * (task + shared)``).
* Projectors: ``{audio,video}_proj.{0,2}.{weight,bias}`` = nn.Sequential(Linear, ReLU, Linear[,
  LayerNorm]) -> `mlp` (fc1 <- 0, fc2 <- 2); with ``.3.{weight,bias}`` (a LayerNorm on the projector
  *output*: Llama-AVSR `--layernorm-projector`, Omni-AVSR single projectors without
  `--no-layernorm-projector`) -> `mlp_out_norm` (out_norm <- 3). Per-rate projectors (matryoshka:
  Llama-MTSK, Omni-AVSR) are ModuleLists ``{audio,video}_proj.<k>.{0,2[,3]}.*``, index k = position of
  the rate in their `--downsample-ratio-*` list -> ``<m>.projectors.<rate>``. (Omni-AVSR's per-rate
  avg-pooling projectors pass the LayerNorm as Linear's `bias` argument, so they have a biased
  Linear and no LayerNorm: keys 0 and 2 only, imported as `mlp`.) A single projector used for several
  rates (`--is-single-matry-projector`) -> `share_projector: true`.
* Compression: `avg-pooling` is nn.AvgPool1d(k) (no weights; rate not recorded: give --*_rates or
  a Lightning .ckpt); `stack` concatenates k frames, visible in the projector's input size (k x
  encoder dim), so its rate is read from the shapes.
* Embeddings: their tokenizer adds ``<pad>`` (Llama family) and ``<audio> </audio> <video> </video>``
  (in that order, after the base vocabulary) and `resize_token_embeddings(len(tokenizer))`; the
  embedding table stays frozen, so the added rows keep transformers' resize initialisation and the
  delimiters are embedded as table rows. Here the delimiters have their own table,
  `decoder.special_embeddings`, filled from those rows by token (this project's ids differ: it adds
  the delimiters first, then `<pad>`); their ``<pad>`` row is not needed (padding is masked).
  ``llm.model.embed_tokens.weight`` / ``llm.lm_head.weight`` base rows are checked against --llm_dir.
* Frozen parts: ``llm.*`` (the rest of the LLM), ``audio_encoder.*`` (HF WhisperEncoder names) and
  ``video_encoder.*`` (fairseq AV-HuBERT names) are compared with --llm_dir, --whisper_dir and
  --avhubert (in the coarser of the two dtypes). The LLM and Whisper must match (a mismatch means
  the wrong folder). AV-HuBERT may differ: their encoder is frozen but in train mode during
  training, so its BatchNorm running statistics drift; the checkpoint's AV-HuBERT tensors are then
  written into a new AV-HuBERT checkpoint file (the official layout, `official_checkpoint`) that
  the imported config names. Its pre-training heads (mask_emb, final_proj, label_embs_concat) are
  unused, as in their `extract_finetune`.
* AV-HuBERT LoRA: ``video_encoder.encoder.layers.<i>.self_attn.lora_{down,up}_{Q,V}.weight``,
  dimension round(dim / 16), scaling 2 (set by their modeling code), added to q_proj / v_proj
  before the head scaling -> the encoder's peft LoRA (`lora_r` = that dimension, `lora_alpha` = 2 r).
* Omni-AVSR prompt buffers ``prompt_{audio,video,audiovisual}``: the embedded instruction tokens
  (1, n, hidden). They are matched back to token ids through the embedding table and decoded;
  the text becomes ``model_conf.instructions`` of the task.

Prompt layout. Theirs is ``[BOS] <audio> A </audio> <video> V </video> instruction transcript EOS``
(Qwen: no BOS), the instruction ids being `tokenizer(prompt)` without the BOS/EOS their template
adds: the same layout and ids as decoders/prompt.py, so only the instruction texts are set. What
remains different is listed in `REMAINING_DIFFERENCES`.

Not importable (an error names the keys): AV-HuBERT or WavLM as the *audio* encoder (this project's
audio branch is Whisper), Llama-AVSR's `audiovisual_avhubert` modality (one AV-HuBERT for both
streams, ``audiovisual_encoder.*`` / ``audiovisual_proj.*``), and keys of neither layout.
"""
import logging
import math
import os
import pickle
import re
import types
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from espnet_omni_avsr.decoders.llm_tokenizer import PAD_TOKEN, special_tokens

FORMATS = ("llama_avsr", "omni_avsr")
#: their modality names (ModuleDict keys, prompts) -> this project's tasks
THEIR_TASKS = {"audio": "asr", "video": "vsr", "audiovisual": "avsr"}
#: their LoRA sets -> this project's peft adapter names ("" = their single, non-task LoRA)
ADAPTER_NAMES = {"": "shared", "shared": "shared", "audio": "asr", "video": "vsr", "audiovisual": "avsr"}
DELIMITERS = ("<audio>", "</audio>", "<video>", "</video>")
AVHUBERT_LORA_REDUCTION = 16  # their AV-HuBERT LoRA: dim round(D / 16)
AVHUBERT_LORA_SCALING = 2.0  # their modeling code sets self_attn.scaling_lora = 2
DEFAULT_LORA_SCALING = 0.125  # ALPHA / RANK of every released checkpoint (8 / 64, 4 / 32)
DEFAULT_TASK_WEIGHTS = {"asr": 1.0, "vsr": 1.5, "avsr": 1.0}  # their README's --matry-weights 1 1.5 1

#: LLMs their code supports: name -> (hidden, layers, v_proj output). Hidden sizes from their
#: llm_size tables, v_proj outputs from their LoRA's GQA factors, layer counts from the models' configs.
KNOWN_LLMS = {
    "TinyLlama_v1.1": (2048, 22, 256),
    "Llama-2-7b-hf": (4096, 32, 4096),
    "Llama-2-13b-hf": (5120, 40, 5120),
    "Meta-Llama-3-8B / Meta-Llama-3.1-8B": (4096, 32, 1024),
    "Llama-3.2-1B": (2048, 16, 512),
    "Llama-3.2-3B": (3072, 28, 1024),
    "Qwen2.5-0.5B": (896, 24, 128),
    "Qwen2.5-1.5B": (1536, 28, 256),
    "Qwen2.5-3B": (2048, 36, 256),
    "Qwen2.5-7B": (3584, 28, 512),
    "Qwen2.5-14B": (5120, 48, 1024),
    "Qwen2.5-32B": (5120, 64, 1024),
}
KNOWN_WHISPERS = {384: "whisper-tiny(.en)", 512: "whisper-base(.en)", 768: "whisper-small(.en)",
                  1024: "whisper-medium(.en)", 1280: "whisper-large(-v2/-v3)"}
KNOWN_AVHUBERTS = {768: "AV-HuBERT Base (base_vox_iter5.pt)", 1024: "AV-HuBERT Large (large_vox_iter5.pt)"}

REMAINING_DIFFERENCES = (
    "LM head: theirs was resized with the tokenizer and also scores the added tokens (<pad> and the four "
    "delimiters, or only the delimiters for Qwen); this project's scores the base vocabulary only. Logits of "
    "the base vocabulary are the same; their softmax normaliser has those extra terms, and their decoder can "
    "emit an added token where this one cannot.",
    "Qwen2.5: their resize shrinks the table to len(tokenizer) rows; this project keeps the checkpoint's "
    "padded vocabulary, so it also scores the unused padding rows.",
    "Compression of a partial last window: their AvgPool1d and audio stacking drop it (floor(T / k) tokens); "
    "this project's compressors average / zero-pad it (ceil(T / k)); equal when T is a multiple of k.",
    "Whisper frames kept: theirs max(int(max_len / 16000 * 50), 25) of the batch's longest utterance after 30-s "
    "padding; this project's ceil(frames / 2) per utterance (pad_to_30s: true keeps the 30-s padding itself).",
    "Decoding: their generate() follows the LLM's generation_config (the Llama 3 base models sample, "
    "temperature 0.6, as their README notes); this project decodes deterministically (greedy / beam).",
    "Numerics: they run every part in bf16 (precision 'bf16-true'); here projectors and encoders run in "
    "float32 and the LLM in decoder_conf.dtype.",
)


class CheckpointImportError(ValueError):
    """A checkpoint that does not fit the chosen format, the given folders or this project."""


# =============================================================================================== reading
_LIGHTNING_MODULES = ("pytorch_lightning", "lightning", "lightning_fabric")


def _lightning_pickle_module(source: str) -> types.ModuleType:
    """safe_checkpoint's restricted unpickler, plus Lightning's dict classes (AttributeDict, which
    holds `hyper_parameters`) read as plain dicts. Nothing of Lightning is imported."""
    from espnet_omni_avsr.utils import safe_checkpoint

    class Unpickler(safe_checkpoint._RestrictedUnpickler):
        def find_class(self, module, name):
            if module.split(".")[0] in _LIGHTNING_MODULES:
                return types.new_class(name, (dict,))  # a dict subclass: pickle fills it with SETITEMS
            return super().find_class(module, name)

    Unpickler.source = source
    module = types.ModuleType("restricted_pickle")
    module.Unpickler = Unpickler
    module.load = lambda f, **kwargs: Unpickler(f, **kwargs).load()
    module.__name__ = "restricted_pickle"
    return module


def load_official_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict, str]:
    """(state dict with the "model." prefix removed, hyper-parameters (may be empty), kind) of a
    released `.pth` (a plain state dict) or a Lightning `.ckpt` (kind "lightning")."""
    from espnet_omni_avsr.utils.safe_checkpoint import UnsafeCheckpointError, to_plain

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            contents = to_plain(torch.load(path, map_location="cpu", weights_only=False,
                                           pickle_module=_lightning_pickle_module(path)))
        except UnsafeCheckpointError as e:
            raise CheckpointImportError(str(e)) from e
    except Exception as e:
        raise CheckpointImportError(f"{path} is not a torch checkpoint file: {type(e).__name__}: {e}") from e
    if not isinstance(contents, dict):
        raise CheckpointImportError(f"{path}: expected a state dict or a Lightning checkpoint, got {type(contents).__name__}")
    hints, kind = {}, "state_dict"
    if isinstance(contents.get("state_dict"), dict):
        kind = "lightning"
        hints = dict(contents.get("hyper_parameters") or {})
        contents = contents["state_dict"]
    bad = sorted(k for k, v in contents.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointImportError(f"{path}: entries that are not tensors: {bad[:10]} (not a model state dict)")
    if kind == "lightning" or (contents and all(k.startswith("model.") for k in contents)):
        outside = sorted(k for k in contents if not k.startswith("model."))
        if outside:
            raise CheckpointImportError(f"{path}: state_dict keys outside their 'model.' module: {outside[:10]}")
        contents = {k[len("model."):]: v for k, v in contents.items()}
    return dict(contents), hints, kind


# =============================================================================================== key tables
@dataclass(frozen=True)
class KeyRule:
    """One row of a format's mapping table: a key pattern, its kind, and what it becomes here."""

    pattern: str
    kind: str
    maps_to: str

    def match(self, key: str):
        return re.fullmatch(self.pattern, key)


_LAYER = r"llm\.model\.layers\.(?P<layer>\d+)\.self_attn\.lora_(?P<side>down|up)_(?P<proj>[QV])"
_PEFT = "decoder.llm.base_model.model.model.layers.<i>.self_attn.{q,v}_proj.lora_{A<-down,B<-up}"
_COMMON_HEAD = (
    KeyRule(r"(?P<modality>audio|video)_proj\.(?P<seq>\d)\.(?P<param>weight|bias)", "projector",
            "<m>.projectors.<rate|shared>.{fc1<-0, fc2<-2, out_norm<-3 (mlp_out_norm)}.<param>"),
    KeyRule(r"(?P<modality>audio|video)_proj\.(?P<index>\d+)\.(?P<seq>\d)\.(?P<param>weight|bias)", "projector",
            "<m>.projectors.<rates[index]>.{fc1<-0, fc2<-2, out_norm<-3}.<param>"),
    KeyRule(r"llm\.model\.embed_tokens\.weight", "llm_embeddings",
            "base rows: checked equal to --llm_dir's table; <audio> </audio> <video> </video> rows -> "
            "decoder.special_embeddings; the <pad> row: unused"),
    KeyRule(r"llm\.lm_head\.weight", "llm_head", "base rows: checked equal to --llm_dir's LM head; added rows: unused"),
    KeyRule(r"video_encoder\.encoder\.layers\.(?P<layer>\d+)\.self_attn\.lora_(?P<side>down|up)_(?P<proj>[QV])\.weight",
            "avhubert_lora", "video.encoder.model.encoder.layers.<i>.self_attn.{q,v}_proj.lora_{A,B}.default.weight "
            "(lora_r = dim, lora_alpha = 2 dim)"),
    KeyRule(r"audiovisual_(encoder|proj)\..+", "unsupported",
            "AV-HuBERT over both streams with its own projector (Llama-AVSR modality audiovisual_avhubert): "
            "this project has no such branch"),
)
_COMMON_TAIL = (
    KeyRule(r".*lora.*|prompt_.*", "unknown", "LoRA or prompt keys of another layout"),
    KeyRule(r"llm\.(?P<name>.+)", "llm_frozen", "the frozen LLM of --llm_dir (checked equal)"),
    KeyRule(r"audio_encoder\.(?P<name>.+)", "whisper", "audio.encoder.encoder.<name>, the frozen Whisper of --whisper_dir (checked equal)"),
    KeyRule(r"video_encoder\.(?P<name>.+)", "avhubert",
            "video.encoder.model.<name>: from --avhubert, or, where the checkpoint's differ (BatchNorm statistics), "
            "from a new AV-HuBERT file of the checkpoint's tensors"),
)
RULES: Dict[str, Tuple[KeyRule, ...]] = {
    "llama_avsr": _COMMON_HEAD + (
        KeyRule(_LAYER + r"\.weight", "llm_lora", _PEFT + ".shared.weight (shared_lora)"),
    ) + _COMMON_TAIL,
    "omni_avsr": _COMMON_HEAD + (
        KeyRule(_LAYER + r"\.weight", "llm_lora", _PEFT + ".shared.weight (Omni-AVSR-S, Llama-MT: shared_lora)"),
        KeyRule(_LAYER + r"\.(?P<set>audio|video|audiovisual)\.weight", "llm_lora",
                _PEFT + ".{asr,vsr,avsr}.weight (Omni-AVSR-T/ST: task_lora / shared_task_lora)"),
        KeyRule(_LAYER + r"_(?P<set>shared)\.weight", "llm_lora", _PEFT + ".shared.weight (Omni-AVSR-ST)"),
        KeyRule(r"prompt_(?P<modality>audio|video|audiovisual)", "prompt",
                "model_conf.instructions.<task> (the embedded instruction, decoded back to text)"),
    ) + _COMMON_TAIL,
}


def classify(state: Mapping[str, torch.Tensor], fmt: str) -> Dict[str, List[Tuple[str, dict]]]:
    """kind -> [(key, named groups)], by the format's table (first matching rule)."""
    if fmt not in RULES:
        raise CheckpointImportError(f"unknown format {fmt!r}: choose from {list(RULES)}")
    out: Dict[str, List[Tuple[str, dict]]] = {}
    for key in state:
        for rule in RULES[fmt]:
            m = rule.match(key)
            if m:
                out.setdefault(rule.kind, []).append((key, {k: v for k, v in m.groupdict().items() if v is not None}))
                break
        else:
            out.setdefault("unknown", []).append((key, {}))
    return out


def _other_format_hint(keys: Sequence[str], fmt: str) -> str:
    others = [f for f in RULES if f != fmt]
    for other in others:
        known = [k for k in keys if any(r.match(k) and r.kind not in ("unknown",) for r in RULES[other])]
        if known:
            return f" These keys follow the {other} layout: use --format {other}."
    return ""


# =============================================================================================== layout
@dataclass
class ProjectorLayout:
    modality: str
    count: int  # 0: one nn.Sequential; n: a ModuleList of n (one per rate)
    in_dims: List[int]
    hidden: int
    out_dim: int
    out_norm: bool


@dataclass
class OfficialLayout:
    """What a checkpoint holds, read from its keys and shapes."""

    fmt: str
    lora_sets: List[str] = field(default_factory=list)  # their names ("" = single)
    lora_dim: int = 0
    lora_layers: int = 0
    hidden: Optional[int] = None
    kv_dim: Optional[int] = None
    embed_rows: Optional[int] = None
    projectors: Dict[str, ProjectorLayout] = field(default_factory=dict)
    avhubert_lora_dim: int = 0
    has_whisper: bool = False
    has_avhubert: bool = False
    prompts: Dict[str, torch.Tensor] = field(default_factory=dict)
    hidden_keys: List[str] = field(default_factory=list)  # keys that tell the LLM's size

    @property
    def modalities(self) -> List[str]:
        return [m for m in ("audio", "video") if m in self.projectors]


def _shape(state, key) -> Tuple[int, ...]:
    return tuple(state[key].shape)


def read_layout(state: Mapping[str, torch.Tensor], kinds: Dict[str, List[Tuple[str, dict]]], fmt: str) -> OfficialLayout:
    """The checkpoint's structure; errors name the keys that are missing or disagree."""
    lay = OfficialLayout(fmt=fmt)
    problems: List[str] = []
    # ---- LLM LoRA
    lora: Dict[Tuple[str, int], Dict[str, str]] = {}
    for key, g in kinds.get("llm_lora", []):
        lora.setdefault((g.get("set", ""), int(g["layer"])), {})[f"{g['side']}_{g['proj']}"] = key
    if lora:
        sets = sorted({s for s, _ in lora})
        layers = sorted({i for _, i in lora})
        if layers != list(range(len(layers))):
            problems.append(f"LoRA layers {layers} are not 0..{len(layers) - 1}")
        for s in sets:
            for i in layers:
                have = lora.get((s, i), {})
                for part in ("down_Q", "up_Q", "down_V", "up_V"):
                    if part not in have:
                        name = f"llm.model.layers.{i}.self_attn.lora_{part}" + (f"_{s}" if s == "shared" else f".{s}" if s else "")
                        problems.append(f"missing {name}.weight")
        first = lora[(sets[0], layers[0])]
        if "down_Q" in first and "up_V" in first:
            r, hidden = _shape(state, first["down_Q"])
            kv = _shape(state, first["up_V"])[0]
            for (s, i), parts in lora.items():
                want = {"down_Q": (r, hidden), "down_V": (r, hidden), "up_Q": (hidden, r), "up_V": (kv, r)}
                for part, key in parts.items():
                    if _shape(state, key) != want[part]:
                        problems.append(f"{key}: shape {_shape(state, key)}, expected {want[part]} like the other layers")
            lay.lora_dim, lay.hidden, lay.kv_dim = r, hidden, kv
            lay.hidden_keys.append(f"{first['down_Q']} {tuple((r, hidden))}")
            lay.hidden_keys.append(f"{first['up_V']} {tuple((kv, r))}")
        lay.lora_sets, lay.lora_layers = sets, len(layers)
        if fmt == "omni_avsr":
            task_sets = [s for s in sets if s in THEIR_TASKS]
            if task_sets and sorted(task_sets) != sorted(THEIR_TASKS):
                problems.append(f"task-specific LoRA for {task_sets} only; Omni-AVSR makes one per task {list(THEIR_TASKS)}")
            if "" in sets and len(sets) > 1:
                problems.append(f"both a single LoRA and task/shared LoRA sets {sets}")
            if sets == ["shared"]:
                problems.append("a shared LoRA (lora_*_shared) without the task-specific ones it is added to")
    # ---- projectors
    proj: Dict[Tuple[str, Optional[int]], Dict[str, torch.Size]] = {}
    for key, g in kinds.get("projector", []):
        index = int(g["index"]) if "index" in g else None
        proj.setdefault((g["modality"], index), {})[f"{g['seq']}.{g['param']}"] = key
    for m in ("audio", "video"):
        entries = {i: parts for (mm, i), parts in proj.items() if mm == m}
        if not entries:
            continue
        if None in entries and len(entries) > 1:
            problems.append(f"{m}_proj is both one projector and a list ({sorted(k for k in entries if k is not None)})")
            continue
        indices = sorted(entries) if None not in entries else [None]
        if None not in entries and indices != list(range(len(indices))):
            problems.append(f"{m}_proj list indices {indices} are not 0..{len(indices) - 1}")
            continue
        in_dims, hidden, out_dim, norm = [], None, None, None
        for i in indices:
            parts = entries[i]
            prefix = f"{m}_proj." + ("" if i is None else f"{i}.")
            extra = sorted(prefix + p for p in parts if p.split(".")[0] not in ("0", "2", "3"))
            problems += [f"{k}: not a Linear / LayerNorm of their projector (Sequential 0, 2, 3)" for k in extra]
            need = ["0.weight", "0.bias", "2.weight", "2.bias"]
            problems += [f"missing {prefix}{p}" for p in need if p not in parts]
            if any(p not in parts for p in need):
                continue
            w0, w2 = _shape(state, parts["0.weight"]), _shape(state, parts["2.weight"])
            has_norm = "3.weight" in parts
            if has_norm != ("3.bias" in parts):
                problems.append(f"{prefix}3: LayerNorm weight and bias must both be present")
            if w2[1] != w0[0]:
                problems.append(f"{parts['2.weight']}: {w2} does not follow {parts['0.weight']}: {w0}")
            if hidden is not None and (w0[0] != hidden or w2[0] != out_dim or has_norm != norm):
                problems.append(f"{prefix}*: the per-rate projectors differ in hidden/output size or LayerNorm")
            hidden, out_dim, norm = w0[0], w2[0], has_norm
            in_dims.append(w0[1])
            if len(lay.hidden_keys) < 3:
                lay.hidden_keys.append(f"{parts['2.weight']} {w2}")
        if hidden is not None:
            lay.projectors[m] = ProjectorLayout(m, 0 if indices == [None] else len(indices), in_dims, hidden, out_dim, norm)
    outs = {p.out_dim for p in lay.projectors.values()}
    if lay.hidden is None and outs:
        lay.hidden = next(iter(outs))
    if lay.hidden is not None and any(o != lay.hidden for o in outs):
        problems.append(f"projector outputs {sorted(outs)} differ from the LLM hidden size {lay.hidden} of the LoRA keys")
    # ---- embeddings, encoders, prompts
    for key, _ in kinds.get("llm_embeddings", []):
        rows, dim = _shape(state, key)
        lay.embed_rows = rows
        if lay.hidden is None:
            lay.hidden = dim
        elif dim != lay.hidden:
            problems.append(f"{key}: {(rows, dim)}, but the LoRA / projector keys say hidden {lay.hidden}")
        lay.hidden_keys.append(f"{key} {(rows, dim)}")
    lay.has_whisper = bool(kinds.get("whisper"))
    if lay.has_whisper and "audio_encoder.conv1.weight" not in state:
        raise CheckpointImportError(
            "the checkpoint's audio encoder is not Whisper (no audio_encoder.conv1.weight; keys such as "
            f"{[k for k, _ in kinds['whisper'][:3]]}): AV-HuBERT or WavLM audio encoders have no counterpart in "
            "this project's audio branch (Whisper only)"
        )
    lay.has_avhubert = bool(kinds.get("avhubert"))
    avl = {(int(g["layer"]), g["side"], g["proj"]): key for key, g in kinds.get("avhubert_lora", [])}
    if avl:
        lay.avhubert_lora_dim = min(_shape(state, k)[0] if side == "down" else _shape(state, k)[1]
                                    for (_, side, _), k in avl.items())
        n = max(i for i, _, _ in avl) + 1
        missing = [f"video_encoder.encoder.layers.{i}.self_attn.lora_{s}_{p}.weight"
                   for i in range(n) for s in ("down", "up") for p in "QV" if (i, s, p) not in avl]
        problems += [f"missing {k}" for k in missing]
    for key, g in kinds.get("prompt", []):
        lay.prompts[g["modality"]] = state[key]
    if not lay.projectors:
        problems.append("no audio_proj / video_proj keys: not a Llama-AVSR / Omni-AVSR model state dict")
    if lay.hidden is None:
        problems.append("neither LoRA, projector nor embedding keys give the LLM's hidden size")
    if problems:
        raise CheckpointImportError("the checkpoint does not have the expected layout:\n  " + "\n  ".join(problems))
    if fmt == "omni_avsr" and sorted(lay.projectors) != ["audio", "video"]:
        raise CheckpointImportError(
            f"an Omni-AVSR model reads audio and video, but the checkpoint has projectors for {sorted(lay.projectors)} "
            "only (a single-task model: use --format llama_avsr)"
        )
    return lay


# =============================================================================================== sizes
def likely_llms(hidden: Optional[int], layers: Optional[int] = None, kv: Optional[int] = None) -> List[str]:
    """KNOWN_LLMS names that agree with every size given (hidden 2048, 16 layers -> Llama-3.2-1B)."""
    out = []
    for name, (h, n, v) in KNOWN_LLMS.items():
        if (hidden is None or h == hidden) and (layers in (None, 0) or n == layers) and (kv is None or v == kv):
            out.append(name)
    return out


def _llm_guess(lay: OfficialLayout) -> str:
    names = likely_llms(lay.hidden, lay.lora_layers, lay.kv_dim) or likely_llms(lay.hidden)
    sizes = f"hidden {lay.hidden}" + (f", {lay.lora_layers} layers" if lay.lora_layers else "") + (
        f", v_proj output {lay.kv_dim}" if lay.kv_dim else "")
    if names:
        return f"The checkpoint's LLM ({sizes}) is likely {' or '.join(names)}: give that model's local folder as --llm_dir."
    return f"The checkpoint's LLM has {sizes}, which matches none of {list(KNOWN_LLMS)}: give the LLM it was trained with as --llm_dir."


def check_llm(lay: OfficialLayout, config, n_tokens: int, llm_dir: str) -> List[str]:
    """Raise naming the mismatching keys when --llm_dir is not the checkpoint's LLM; returns the
    added tokens in their id order (their ids are n_tokens + position)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim if getattr(config, "num_key_value_heads", None) else config.hidden_size
    theirs = f"--llm_dir {llm_dir} (hidden {config.hidden_size}, {config.num_hidden_layers} layers, v_proj output {kv})"
    wrong = []
    if lay.hidden != config.hidden_size:
        wrong += [f"{k}: hidden {lay.hidden}, but {theirs}" for k in lay.hidden_keys]
    if lay.lora_layers and lay.lora_layers != config.num_hidden_layers:
        wrong.append(f"llm.model.layers.0..{lay.lora_layers - 1}.self_attn.lora_*: {lay.lora_layers} layers, but {theirs}")
    if lay.kv_dim and lay.hidden == config.hidden_size and lay.kv_dim != kv:
        wrong.append(f"llm.model.layers.*.self_attn.lora_up_V.weight: v_proj output {lay.kv_dim}, but {theirs}")
    if wrong:
        raise CheckpointImportError("the checkpoint was trained with another LLM:\n  " + "\n  ".join(wrong) + "\n" + _llm_guess(lay))
    if lay.embed_rows is None:
        added = [PAD_TOKEN, *DELIMITERS] if "qwen" not in config.model_type else list(DELIMITERS)
        logging.warning("the checkpoint has no llm.model.embed_tokens.weight: delimiter embeddings cannot be imported")
        return added
    extra = lay.embed_rows - n_tokens
    if extra == 5:
        return [PAD_TOKEN, *DELIMITERS]
    if extra == 4:
        return list(DELIMITERS)
    raise CheckpointImportError(
        f"llm.model.embed_tokens.weight has {lay.embed_rows} rows, the tokenizer of --llm_dir {llm_dir} {n_tokens} tokens: "
        "their code adds <pad> + 4 delimiters (Llama) or 4 delimiters (Qwen), so 5 or 4 more rows were expected. "
        "A different tokenizer or LLM? " + _llm_guess(lay)
    )


def resolve_rates(m: str, p: ProjectorLayout, enc_dim: int, given: Optional[Sequence[int]], hints: Mapping,
                  enc_name: str) -> Tuple[str, List[int], bool]:
    """(compressor, rates, share_projector) of a branch, from the projector shapes (stack), the
    given rates or the Lightning hyper-parameters (avg-pooling)."""
    key = f"{m}_proj.0.weight" if p.count == 0 else f"{m}_proj.<k>.0.weight"
    bad = [d for d in p.in_dims if d % enc_dim]
    if bad:
        guesses = sorted({KNOWN_WHISPERS.get(d, "") if m == "audio" else KNOWN_AVHUBERTS.get(d, "") for d in bad} - {""})
        raise CheckpointImportError(
            f"{key}: input size {bad[0]} is not a multiple of the {m} encoder's output size {enc_dim} ({enc_name})"
            + (f"; the checkpoint's {m} encoder is likely {' or '.join(guesses)}" if guesses else "")
        )
    ks = [d // enc_dim for d in p.in_dims]
    hint = hints.get(f"downsample_ratio_{m}")
    hint = [int(h) for h in (hint if isinstance(hint, (list, tuple)) else [hint])] if hint is not None else None
    mode_hint = hints.get("compression_mode")
    rates = [int(r) for r in given] if given else hint
    if any(k > 1 for k in ks) or mode_hint == "stack":
        if rates is not None and list(rates) != ks:
            raise CheckpointImportError(f"{key}: the stacked projector inputs say {m} rates {ks}, given {list(rates)}")
        return "stack", ks, False
    if not rates:
        raise CheckpointImportError(
            f"{key}: average pooling does not record its rate; give --{m}_rates (their --downsample-ratio-{m}, "
            f"in the same order{'' if p.count == 0 else f', {p.count} rates'})"
        )
    if p.count and len(rates) != p.count:
        raise CheckpointImportError(f"{m}_proj holds {p.count} per-rate projectors, but {len(rates)} {m} rates were given: {rates}")
    if len(set(rates)) != len(rates):
        raise CheckpointImportError(f"{m} rates {rates} repeat a rate")
    return "avg_pool", list(rates), p.count == 0 and len(rates) > 1


# =============================================================================================== instructions
def decode_prompt(embeds: torch.Tensor, table: torch.Tensor, tokenizer, name: str) -> Tuple[str, List[int]]:
    """An Omni-AVSR prompt buffer (1, n, D) -> (instruction text, token ids), by finding each row in
    the embedding table (compared in the coarser of the two dtypes)."""
    low = embeds.dtype if torch.finfo(embeds.dtype).eps >= torch.finfo(table.dtype).eps else table.dtype
    rows, table = embeds.reshape(-1, embeds.size(-1)).to(low), table.detach().to(low)
    if rows.size(1) != table.size(1):
        raise CheckpointImportError(f"{name}: rows of size {rows.size(1)}, the embedding table's are {table.size(1)}")
    ids = []
    for i, row in enumerate(rows):
        hit = (table == row).all(dim=1).nonzero()
        if hit.numel() == 0:
            j = int((table.float() - row.float()).abs().amax(dim=1).argmin())
            raise CheckpointImportError(f"{name}: row {i} is not the embedding of any token of --llm_dir (closest id {j})")
        ids.append(int(hit[0, 0]))
    text = tokenizer.decode(ids)
    if tokenizer(text, add_special_tokens=False)["input_ids"] != ids:
        logging.warning("%s: the decoded instruction %r tokenizes differently from the stored ids %s", name, text, ids)
    return text, ids


# =============================================================================================== comparing
def same_values(theirs: torch.Tensor, ours: torch.Tensor) -> Tuple[bool, float]:
    """Equal after casting both to the coarser of the two dtypes (their bf16 copies of fp32 weights
    compare equal); returns (equal, max abs difference)."""
    if tuple(theirs.shape) != tuple(ours.shape):
        return False, math.inf
    a, b = theirs.detach(), ours.detach()
    if a.is_floating_point() and b.is_floating_point():
        low = a.dtype if torch.finfo(a.dtype).eps >= torch.finfo(b.dtype).eps else b.dtype
        a, b = a.to(low), b.to(low)
    if torch.equal(a, b):
        return True, 0.0
    return False, float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _hf_names(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Parameters and buffers by the names of the module without peft (".base_layer" dropped, LoRA left out)."""
    out = {}
    for n, t in list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False)):
        if ".lora_" in n or n.startswith("lora_"):
            continue
        out[n.replace(".base_layer", "")] = t
    return out


# =============================================================================================== importing
@dataclass
class ImportOptions:
    """What `import_official_checkpoint` needs (the command-line options of bin/import_checkpoint.py)."""

    fmt: str
    checkpoint: str
    llm_dir: str
    out: str
    whisper_dir: Optional[str] = None
    avhubert: Optional[str] = None
    task: Optional[str] = None
    audio_rates: Optional[List[int]] = None
    video_rates: Optional[List[int]] = None
    lora_alpha: Optional[float] = None
    lora_reduction: Optional[float] = None
    instructions: Dict[str, str] = field(default_factory=dict)
    dtype: str = "bfloat16"
    crop_size: int = 88
    whisper_pad_to_30s: bool = True
    allow_unknown_keys: bool = False
    allow_frozen_mismatch: bool = False
    include_pretrained: bool = True
    work_dir: Optional[str] = None


class _Ledger:
    """Where every checkpoint key went: mapped / checked / unused / unknown, with a reason."""

    def __init__(self, keys: Sequence[str]):
        self.keys = list(keys)
        self.entries: Dict[str, Tuple[str, str]] = {}

    def put(self, key: str, category: str, detail: str) -> None:
        self.entries[key] = (category, detail)

    def of(self, category: str) -> Dict[str, str]:
        return {k: d for k, (c, d) in self.entries.items() if c == category}

    def unaccounted(self) -> List[str]:
        return [k for k in self.keys if k not in self.entries]


def _tasks(lay: OfficialLayout, opts: ImportOptions, hints: Mapping) -> List[str]:
    if opts.fmt == "omni_avsr":
        tasks = ["avsr", "asr", "vsr"]
        if opts.task:
            tasks.remove(opts.task)
            tasks.insert(0, opts.task)
        return tasks
    task = {("audio",): "asr", ("video",): "vsr", ("audio", "video"): "avsr"}[tuple(lay.modalities)]
    hinted = THEIR_TASKS.get(hints.get("modality"))
    for source, value in (("--task", opts.task), ("the checkpoint's hyper-parameter modality", hinted)):
        if value and value != task:
            raise CheckpointImportError(f"{source} says {value}, but the checkpoint has projectors for {lay.modalities} "
                                        f"only, i.e. a {task} model")
    return [task]


def _lora_scaling(lay: OfficialLayout, opts: ImportOptions, hints: Mapping) -> Tuple[float, dict]:
    reduction = opts.lora_reduction or hints.get("rank") or hints.get("reduction_lora")
    alpha = opts.lora_alpha if opts.lora_alpha is not None else hints.get("alpha")
    key = lay.hidden_keys[0].split(" ")[0]  # a lora_down_Q key
    if reduction:
        if round(lay.hidden / float(reduction)) != lay.lora_dim:
            raise CheckpointImportError(f"{key}: LoRA dimension {lay.lora_dim}, but their rank (reduction) {reduction} "
                                        f"gives round({lay.hidden} / {reduction}) = {round(lay.hidden / float(reduction))}")
        source = "given" if opts.lora_reduction else "hyper-parameters"
    else:
        reduction, source = lay.hidden / lay.lora_dim, "shapes (hidden / LoRA dimension)"
    if alpha is None:
        scaling = DEFAULT_LORA_SCALING
        logging.warning("LoRA alpha is not stored in a state dict: assuming scaling ALPHA / RANK = %g, the value of every "
                        "released checkpoint; give --lora_alpha (their --alpha) otherwise", scaling)
        alpha_source = "assumed (released checkpoints)"
    else:
        scaling, alpha_source = float(alpha) / float(reduction), "given" if opts.lora_alpha is not None else "hyper-parameters"
    info = dict(their_reduction=float(reduction), reduction_from=source, their_alpha=None if alpha is None else float(alpha),
                alpha_from=alpha_source, scaling=scaling, peft_r=lay.lora_dim, peft_alpha=scaling * lay.lora_dim)
    return scaling, info


def _instruction_hints(hints: Mapping) -> Dict[str, str]:
    out = {}
    for theirs, task in THEIR_TASKS.items():
        if isinstance(hints.get(f"prompt_{theirs}"), str):
            out[task] = hints[f"prompt_{theirs}"]
    if isinstance(hints.get("prompt"), str) and THEIR_TASKS.get(hints.get("modality")):
        out[THEIR_TASKS[hints["modality"]]] = hints["prompt"]
    return out


def _avhubert_source(state, kinds, opts: ImportOptions, ledger: _Ledger, work_dir: str):
    """(checkpoint path for the config, arch, keys whose values came from the checkpoint)."""
    from espnet_omni_avsr.encoders.avhubert_checkpoint import (PRETRAINING_ONLY, _RENAMED, official_checkpoint,
                                                                read_avhubert_checkpoint)

    if not opts.avhubert:
        raise CheckpointImportError("the checkpoint has video_proj: give --avhubert, the AV-HuBERT checkpoint its video "
                                    "encoder was loaded from (e.g. large_vox_iter5.pt)")
    ckpt = read_avhubert_checkpoint(opts.avhubert)
    differing, wrong, unknown = [], [], []
    for key, g in kinds.get("avhubert", []):
        name = _RENAMED.get(g["name"], g["name"])
        if name.startswith(PRETRAINING_ONLY):
            ledger.put(key, "unused", "AV-HuBERT pre-training head (their extract_finetune does not use it either)")
        elif name not in ckpt.state:
            unknown.append(key)
        elif tuple(ckpt.state[name].shape) != tuple(state[key].shape):
            wrong.append(f"{key}: {tuple(state[key].shape)} in the checkpoint, {tuple(ckpt.state[name].shape)} in --avhubert")
        else:
            equal, diff = same_values(state[key], ckpt.state[name])
            if equal:
                ledger.put(key, "checked", f"equal to --avhubert's {name}")
            else:
                differing.append((key, name, diff))
    if wrong:
        dims = {int(state[k].shape[0]) for k, _ in kinds["avhubert"] if k.endswith("self_attn.q_proj.weight")}
        guess = [KNOWN_AVHUBERTS[d] for d in dims if d in KNOWN_AVHUBERTS]
        raise CheckpointImportError(f"--avhubert {opts.avhubert} ({ckpt.arch.encoder_layers} layers, {ckpt.arch.encoder_embed_dim} "
                                    "dim) is not the checkpoint's video encoder:\n  " + "\n  ".join(wrong[:10])
                                    + (f"\nThe checkpoint's is likely {' or '.join(guess)}." if guess else ""))
    if unknown and not opts.allow_unknown_keys:
        raise CheckpointImportError(f"video_encoder keys that AV-HuBERT ({opts.avhubert}) does not have: {unknown[:20]}")
    for key in unknown:
        ledger.put(key, "unknown", "not an AV-HuBERT tensor")
    path = opts.avhubert
    if differing:
        new_state = dict(ckpt.state)
        for key, name, _ in differing:
            new_state[name] = state[key].to(ckpt.state[name].dtype)
        stem = os.path.splitext(os.path.basename(opts.checkpoint))[0]
        path = os.path.join(work_dir, f"avhubert_{stem}.pt")
        torch.save(official_checkpoint(new_state, ckpt.arch), path)
        for key, name, diff in differing:
            ledger.put(key, "mapped", f"video.encoder.model.{name} (differs from --avhubert by up to {diff:.3g}; "
                                      f"written to {os.path.basename(path)})")
        logging.info("AV-HuBERT: %d tensors differ from %s (e.g. %s): the encoder is read from %s", len(differing),
                     opts.avhubert, [n for _, n, _ in differing[:3]], path)
    return os.path.abspath(path), ckpt.arch, [name for _, name, _ in differing]


def project_config(opts: ImportOptions, lay: OfficialLayout, tasks: List[str], branches: Dict[str, dict],
                   share: bool, lora: Optional[dict], instructions: Dict[str, str], hints: Mapping) -> dict:
    """This project's config (the keys a YAML under conf/ sets) for the checkpoint."""
    weights = hints.get("matry_weights")
    weights = dict(zip(("asr", "vsr", "avsr"), weights)) if isinstance(weights, (list, tuple)) and len(weights) == 3 else DEFAULT_TASK_WEIGHTS
    multi_rate = any(len(b["rates"]) > 1 for b in branches.values())
    conf = {
        "model": "avsr_llm",
        "model_conf": {"tasks": tasks, "instructions": {t: instructions[t] for t in tasks}},
        "losses": [{"type": "llm_cross_entropy"}],
        "share_projector": share,
        "decoder": "hf_causal_lm",
        "decoder_conf": {"model_dir": os.path.abspath(opts.llm_dir), "dtype": opts.dtype},
        "llm_adapter": None,
        "llm_adapter_conf": {},
        "preprocessor": "avsr",
        "preprocessor_conf": {"text_case": "lower"},
    }
    if len(tasks) > 1:
        conf["model_conf"].update(task_weights=[float(weights[t]) for t in tasks], rate_sampling="one_pair")
    elif multi_rate:
        conf["model_conf"]["rate_sampling"] = "all_pairs"  # Llama-MTSK
    if lora is not None:
        conf["llm_adapter"] = {"": "shared_lora", "task": "task_lora", "shared_task": "shared_task_lora"}[lora["strategy"]]
        conf["llm_adapter_conf"] = {"r": lora["peft_r"], "alpha": lora["peft_alpha"], "dropout": 0.0,
                                    "target_modules": ["q_proj", "v_proj"]}
    for m, b in branches.items():
        if m == "audio":
            conf["audio_frontend"] = "whisper_logmel"
            conf["audio_frontend_conf"] = {"n_mels": b["n_mels"], "pad_to_30s": opts.whisper_pad_to_30s,
                                           "model_dir": os.path.abspath(opts.whisper_dir)}
            conf["audio_encoder"] = "whisper"
            conf["audio_encoder_conf"] = {"model_dir": os.path.abspath(opts.whisper_dir), "frozen": True}
        else:
            conf["video_frontend"] = "mouth_roi"
            conf["video_frontend_conf"] = {"crop_size": opts.crop_size, "time_mask": True}
            conf["video_encoder"] = "avhubert"
            conf["video_encoder_conf"] = {"checkpoint": b["checkpoint"], "modality": "video", "frozen": True}
            if lay.avhubert_lora_dim:
                conf["video_encoder_conf"].update(lora_r=lay.avhubert_lora_dim,
                                                  lora_alpha=AVHUBERT_LORA_SCALING * lay.avhubert_lora_dim, lora_dropout=0.0)
        conf[f"{m}_compressor"] = b["compressor"]
        if len(b["rates"]) == 1:
            conf[f"{m}_compressor_conf"] = {"rate": b["rates"][0]}
        else:
            conf[f"{m}_compressor_conf"] = {}
            conf[f"{m}_rates"] = list(b["rates"])
        conf[f"{m}_projector"] = "mlp_out_norm" if b["projector"].out_norm else "mlp"
        conf[f"{m}_projector_conf"] = {"hidden_size": b["projector"].hidden}
    return conf


def _assign(params: Mapping[str, torch.Tensor], name: str, value: torch.Tensor, key: str) -> None:
    if name not in params:
        raise CheckpointImportError(f"{key}: this project's model has no parameter {name}")
    target = params[name]
    if tuple(target.shape) != tuple(value.shape):
        raise CheckpointImportError(f"{key} {tuple(value.shape)} -> {name} {tuple(target.shape)}: the shapes differ")
    with torch.no_grad():
        target.copy_(value.to(target.dtype))


def _verify_frozen(state, items, ours: Mapping[str, torch.Tensor], what: str, source: str, ledger: _Ledger,
                   mismatches: List[Tuple[str, str]], unknown: List[str]) -> None:
    for key, name in items:
        if name not in ours:
            if name.endswith("rotary_emb.inv_freq"):
                ledger.put(key, "unused", "RoPE frequencies (recomputed from the LLM's config)")
            else:
                unknown.append(key)
            continue
        equal, diff = same_values(state[key], ours[name])
        if equal:
            ledger.put(key, "checked", f"equal to {source}'s {name}")
        else:
            mismatches.append((key, f"shape {tuple(state[key].shape)} vs {tuple(ours[name].shape)}" if diff == math.inf
                               else f"differs from {source}'s {name} by up to {diff:.3g}"))


def import_official_checkpoint(opts: ImportOptions) -> dict:
    """Map a released checkpoint onto this project's model, write config.yaml, model.pth and the
    packed archive `opts.out`; returns the report (also written as import_report.json)."""
    import argparse
    import json

    import yaml
    from transformers import AutoConfig, AutoTokenizer

    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
    from espnet_omni_avsr.utils.model_archive import pack_model

    if opts.fmt not in FORMATS:
        raise CheckpointImportError(f"unknown format {opts.fmt!r}: choose from {list(FORMATS)}")
    state, hints, kind = load_official_checkpoint(opts.checkpoint)
    ledger = _Ledger(state)
    kinds = classify(state, opts.fmt)
    if kinds.get("unsupported"):
        keys = [k for k, _ in kinds["unsupported"]]
        raise CheckpointImportError(f"{len(keys)} keys of a part this project cannot import: {keys[:10]} "
                                    f"({next(r.maps_to for r in RULES[opts.fmt] if r.kind == 'unsupported')})")
    unknown = [k for k, _ in kinds.get("unknown", [])]
    if unknown and not opts.allow_unknown_keys:
        raise CheckpointImportError(f"{len(unknown)} checkpoint keys are not part of the {opts.fmt} layout: {unknown[:20]}"
                                    + _other_format_hint(unknown, opts.fmt) + " (--allow_unknown_keys imports the rest)")
    for k in unknown:
        ledger.put(k, "unknown", "not part of the layout")
    lay = read_layout(state, kinds, opts.fmt)
    tasks = _tasks(lay, opts, hints)

    # ---- the LLM: sizes and added tokens, before anything is built
    llm_config = AutoConfig.from_pretrained(opts.llm_dir, local_files_only=True)
    n_tokens = len(AutoTokenizer.from_pretrained(opts.llm_dir, local_files_only=True))
    added = check_llm(lay, llm_config, n_tokens, opts.llm_dir)
    lora = None
    if lay.lora_sets:
        _, lora = _lora_scaling(lay, opts, hints)
        lora["strategy"] = "shared_task" if "shared" in lay.lora_sets else "task" if "audio" in lay.lora_sets else ""

    work_dir = opts.work_dir or re.sub(r"(\.tar\.gz|\.tgz|\.tar)$", "", opts.out) + "_import"
    os.makedirs(work_dir, exist_ok=True)

    # ---- encoders and compression rates
    branches: Dict[str, dict] = {}
    for m in lay.modalities:
        p = lay.projectors[m]
        if m == "audio":
            if not opts.whisper_dir:
                raise CheckpointImportError("the checkpoint has audio_proj: give --whisper_dir, the Whisper its audio encoder "
                                            "was (e.g. a local openai/whisper-medium.en folder)")
            wconf = AutoConfig.from_pretrained(opts.whisper_dir, local_files_only=True)
            enc_dim, enc_name, extra = wconf.d_model, f"--whisper_dir {opts.whisper_dir}", {"n_mels": wconf.num_mel_bins}
        else:
            path, arch, _ = _avhubert_source(state, kinds, opts, ledger, work_dir)
            enc_dim, enc_name, extra = arch.encoder_embed_dim, f"--avhubert {opts.avhubert}", {"checkpoint": path}
        compressor, rates, share = resolve_rates(m, p, enc_dim, getattr(opts, f"{m}_rates"), hints, enc_name)
        branches[m] = dict(compressor=compressor, rates=rates, share=share, projector=p, **extra)
    shared = [m for m, b in branches.items() if b["share"]]
    if shared and any(branches[m]["projector"].count for m in branches):
        raise CheckpointImportError(f"{shared} use one projector for several rates and another branch one per rate: "
                                    "this project's share_projector applies to both branches")

    # ---- instructions: Omni-AVSR's stored prompts > --instruction > hyper-parameters > defaults
    from espnet_omni_avsr.decoders.llm_tokenizer import load_llm_tokenizer
    from espnet_omni_avsr.names import DEFAULT_INSTRUCTIONS

    tokenizer = load_llm_tokenizer(opts.llm_dir)
    instructions = {t: (DEFAULT_INSTRUCTIONS[t], "default (= their default)") for t in tasks}
    instructions.update({t: (v, "hyper-parameters") for t, v in _instruction_hints(hints).items() if t in tasks})
    instructions.update({t: (v, "--instruction") for t, v in opts.instructions.items()})
    table = state.get("llm.model.embed_tokens.weight")
    for key, g in kinds.get("prompt", []):
        task = THEIR_TASKS[g["modality"]]
        if table is None:
            raise CheckpointImportError(f"{key}: decoding it needs llm.model.embed_tokens.weight, which the checkpoint lacks")
        text, ids = decode_prompt(state[key], table, tokenizer, key)
        if task in opts.instructions and opts.instructions[task] != text:
            logging.warning("--instruction %s=%r differs from the checkpoint's %s %r: the checkpoint's is used",
                            task, opts.instructions[task], key, text)
        instructions[task] = (text, f"{key} (token ids {ids})")
        ledger.put(key, "mapped", f"model_conf.instructions.{task} = {text!r}")

    # ---- build this project's model through its task
    conf = project_config(opts, lay, tasks, branches, bool(shared), lora, {t: v for t, (v, _) in instructions.items()}, hints)
    args = AVSRLLMTask.get_parser().parse_args([])
    for k, v in conf.items():
        setattr(args, k, v)
    torch.manual_seed(0)
    model = AVSRLLMTask.build_model(argparse.Namespace(**vars(args)))
    params = dict(model.named_parameters())
    assigned = set()

    # ---- trainable weights: LoRA, projectors, delimiter embeddings
    peft_re = re.compile(r"^decoder\.llm\..*?layers\.(\d+)\.self_attn\.([qv])_proj\.lora_([AB])\.([^.]+)\.weight$")
    ours_lora = {(int(m.group(1)), m.group(2), m.group(3), m.group(4)): n for n in params if (m := peft_re.match(n))}
    for key, g in kinds.get("llm_lora", []):
        where = (int(g["layer"]), g["proj"].lower(), "A" if g["side"] == "down" else "B", ADAPTER_NAMES[g.get("set", "")])
        if where not in ours_lora:
            raise CheckpointImportError(f"{key}: no peft LoRA {where} in the built model")
        _assign(params, ours_lora[where], state[key], key)
        assigned.add(ours_lora[where])
        ledger.put(key, "mapped", ours_lora[where])
    avh_re = re.compile(r"^video\.encoder\.model\.encoder\.layers\.(\d+)\.self_attn\.([qv])_proj\.lora_([AB])\.default\.weight$")
    ours_avh = {(int(m.group(1)), m.group(2), m.group(3)): n for n in params if (m := avh_re.match(n))}
    for key, g in kinds.get("avhubert_lora", []):
        where = (int(g["layer"]), g["proj"].lower(), "A" if g["side"] == "down" else "B")
        if where not in ours_avh:
            raise CheckpointImportError(f"{key}: no AV-HuBERT LoRA {where} in the built model")
        _assign(params, ours_avh[where], state[key], key)
        assigned.add(ours_avh[where])
        ledger.put(key, "mapped", ours_avh[where])
    seq = {"0": "fc1", "2": "fc2", "3": "out_norm"}
    for key, g in kinds.get("projector", []):
        b = branches[g["modality"]]
        slot = "shared" if shared else str(b["rates"][int(g.get("index", 0))])
        name = f"{g['modality']}.projectors.{slot}.{seq[g['seq']]}.{g['param']}"
        _assign(params, name, state[key], key)
        assigned.add(name)
        ledger.put(key, "mapped", name)

    decoder = model.decoder
    tokens_report = {}
    if table is not None:
        their_ids = {tok: n_tokens + i for i, tok in enumerate(added)}
        with torch.no_grad():
            for k, tok in enumerate(special_tokens()):
                decoder.special_embeddings[k] = table[their_ids[tok]].to(decoder.special_embeddings.dtype)
        assigned.add("decoder.special_embeddings")
        for tok in added:
            tokens_report[tok] = {"their_id": their_ids[tok], "our_id": decoder.tokenizer.convert_tokens_to_ids(tok),
                                  "use": "decoder.special_embeddings" if tok in DELIMITERS else "unused (padding is masked)"}

    # ---- frozen weights: the LLM and Whisper must be the given folders'
    mismatches: List[Tuple[str, str]] = []
    late_unknown: List[str] = []
    base = decoder.base_model
    ours_llm = _hf_names(base)
    emb, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    for key, rows in (("llm.model.embed_tokens.weight", emb), ("llm.lm_head.weight", head)):
        if key in state:
            equal, diff = same_values(state[key][:n_tokens], rows[:n_tokens])
            if equal:
                ledger.put(key, "checked", f"rows 0..{n_tokens - 1} equal to --llm_dir's; rows of {added}: "
                           + ("-> decoder.special_embeddings / unused" if "embed" in key else "unused (not scored here)"))
            else:
                mismatches.append((key, f"rows 0..{n_tokens - 1} differ from --llm_dir's by up to {diff:.3g}"))
    items = [(k, g["name"]) for k, g in kinds.get("llm_frozen", [])]
    _verify_frozen(state, items, ours_llm, "LLM", f"--llm_dir {opts.llm_dir}", ledger, mismatches, late_unknown)
    if "audio" in branches:
        ours_whisper = _hf_names(model.audio.encoder.encoder)
        items = [(k, g["name"]) for k, g in kinds.get("whisper", [])]
        _verify_frozen(state, items, ours_whisper, "Whisper", f"--whisper_dir {opts.whisper_dir}", ledger, mismatches,
                       late_unknown)
    elif kinds.get("whisper"):
        late_unknown += [k for k, _ in kinds["whisper"]]
    if "video" not in branches and kinds.get("avhubert"):
        late_unknown += [k for k, _ in kinds["avhubert"]]
    if mismatches and not opts.allow_frozen_mismatch:
        raise CheckpointImportError(
            f"{len(mismatches)} frozen tensors of the checkpoint differ from the given folders (the wrong LLM or Whisper, "
            "e.g. an Instruct variant or another size?):\n  " + "\n  ".join(f"{k}: {t}" for k, t in mismatches[:10])
            + "\n(--allow_frozen_mismatch imports anyway; the model then computes something else than theirs)")
    for key, text in mismatches:
        ledger.put(key, "unused", f"frozen tensor that differs from the folder's ({text}); the folder's is used")
    if late_unknown and not opts.allow_unknown_keys:
        raise CheckpointImportError(f"{len(late_unknown)} checkpoint keys match no tensor of this project's model: "
                                    f"{late_unknown[:20]} (--allow_unknown_keys imports the rest)")
    for k in late_unknown:
        ledger.put(k, "unknown", "matches no tensor of this project's model")

    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in assigned)
    if missing:
        raise CheckpointImportError(f"trainable parameters of this project's model that the checkpoint does not fill: {missing[:10]}")
    left = ledger.unaccounted()
    if left:  # a kind without a handler: a bug here, never silently dropped
        raise CheckpointImportError(f"keys neither mapped nor reported: {left[:10]}")

    # ---- write config.yaml, model.pth, the report and the archive
    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    config_path, model_path = os.path.join(work_dir, "config.yaml"), os.path.join(work_dir, "model.pth")
    with open(config_path, "w", encoding="utf-8") as f:  # every task argument, as training writes it
        yaml.dump(vars(args), f, Dumper=_NoAliases, sort_keys=False, allow_unicode=True)
    with open(os.path.join(work_dir, "conf.yaml"), "w", encoding="utf-8") as f:  # the part set here, as under conf/
        f.write(f"# imported from {os.path.abspath(opts.checkpoint)} ({opts.fmt}) by espnet_omni_avsr.bin.import_checkpoint\n")
        yaml.dump(conf, f, Dumper=_NoAliases, sort_keys=False, allow_unicode=True)
    torch.save(model.state_dict(), model_path)
    report = {
        "format": opts.fmt,
        "checkpoint": os.path.abspath(opts.checkpoint),
        "checkpoint_kind": kind,
        "archive": os.path.abspath(opts.out),
        "work_dir": os.path.abspath(work_dir),
        "tasks": tasks,
        "llm": {"hidden": lay.hidden, "layers": lay.lora_layers or llm_config.num_hidden_layers, "v_proj": lay.kv_dim},
        "lora": lora,
        "avhubert_lora": {"r": lay.avhubert_lora_dim, "alpha": AVHUBERT_LORA_SCALING * lay.avhubert_lora_dim,
                          "scaling": AVHUBERT_LORA_SCALING} if lay.avhubert_lora_dim else None,
        "branches": {m: {"compressor": b["compressor"], "rates": b["rates"], "projector": conf[f"{m}_projector"],
                         "projector_hidden": b["projector"].hidden, "per_rate_projectors": b["projector"].count}
                     for m, b in branches.items()},
        "instructions": {t: {"text": v, "from": s} for t, (v, s) in instructions.items()},
        "added_tokens": tokens_report,
        "keys": {c: len(ledger.of(c)) for c in ("mapped", "checked", "unused", "unknown")},
        "mapped": ledger.of("mapped"),
        "checked": ledger.of("checked"),
        "unused": ledger.of("unused"),
        "unknown": ledger.of("unknown"),
        "remaining_differences": list(REMAINING_DIFFERENCES),
    }
    with open(os.path.join(work_dir, "import_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    pack_model(config_path, model_path, opts.out, include_pretrained=opts.include_pretrained, base_dir=work_dir, force=True)
    return report
