"""The ESPnet task for LLM-based ASR / VSR / AVSR, with the registry of swappable parts.

Every part is chosen in the config as `<part>: <name>` plus `<part>_conf: {...}` (constructor
keyword arguments), ESPnet's ClassChoices; the loss terms are a list, `losses: [{type, weight,
conf}, ...]`, of the types in LOSS_TERMS. `build_model` assembles them in numbered steps and passes
sizes along through `output_size()`. A new part is a new file in its folder plus one line here.
"""
import argparse
import inspect
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
from espnet2.asr.encoder.transformer_encoder import TransformerEncoder
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.tasks.abs_task import AbsTask
from espnet2.train.class_choices import ClassChoices
from espnet2.train.preprocessor import AbsPreprocessor
from espnet2.utils.types import str2bool
from typeguard import typechecked

from espnet_omni_avsr.adapters.abs_llm_adapter import AbsLLMAdapter
from espnet_omni_avsr.adapters.lora import SharedLoRA, SharedTaskLoRA, TaskLoRA
from espnet_omni_avsr.adapters.mome import MoME
from espnet_omni_avsr.compression.abs_compressor import AbsCompressor
from espnet_omni_avsr.compression.avg_pool_compressor import AvgPoolCompressor
from espnet_omni_avsr.compression.qformer_compressor import QFormerCompressor
from espnet_omni_avsr.compression.stack_compressor import StackCompressor
from espnet_omni_avsr.data.collate import AVSRCollateFn
from espnet_omni_avsr.data.espnet_audio_type import register_audio_data_type
from espnet_omni_avsr.data.espnet_video_type import register_video_data_type
from espnet_omni_avsr.data.preprocessor import AVSRPreprocessor, EpochAwareIterFactory
from espnet_omni_avsr.decoders.hf_causal_lm_decoder import HFCausalLMDecoder
from espnet_omni_avsr.encoders.avhubert_encoder import AVHubertEncoder
from espnet_omni_avsr.encoders.whisper_encoder import WhisperEncoder
from espnet_omni_avsr.frontends.abs_video_frontend import AbsVideoFrontend
from espnet_omni_avsr.frontends.avhubert_fbank_frontend import AVHubertFbankFrontend
from espnet_omni_avsr.frontends.light_video_frontend import LightVideoFrontend
from espnet_omni_avsr.frontends.mouth_roi_frontend import MouthROIFrontend
from espnet_omni_avsr.frontends.pixel_video_frontend import PixelVideoFrontend
from espnet_omni_avsr.frontends.resnet18_video_frontend import ResNet18VideoFrontend
from espnet_omni_avsr.frontends.whisper_logmel_frontend import WhisperLogMelFrontend
from espnet_omni_avsr.fusion.abs_fusion import AbsFusion
from espnet_omni_avsr.fusion.add_fusion import AddFusion
from espnet_omni_avsr.fusion.avhubert_fusion import AVHubertFusion
from espnet_omni_avsr.fusion.concat_fusion import ConcatFusion
from espnet_omni_avsr.fusion.cross_attention_fusion import CrossAttentionFusion
from espnet_omni_avsr.losses.abs_loss_term import AbsLossTerm, ModelParts
from espnet_omni_avsr.losses.av_distill import AudioToVideoDistill
from espnet_omni_avsr.losses.char_ctc import CharCTC
from espnet_omni_avsr.losses.llm_cross_entropy import LLMCrossEntropy
from espnet_omni_avsr.losses.sink_decorrelation import SinkDecorrelation
from espnet_omni_avsr.losses.token_ctc import TokenCTC
from espnet_omni_avsr.models.avsr_llm_model import AVSRLLMModel
from espnet_omni_avsr.models.fused_branch import FusedBranch
from espnet_omni_avsr.models.modality_branch import ModalityBranch
from espnet_omni_avsr.names import FUSED, FUSED_INPUTS, MODALITIES
from espnet_omni_avsr.projectors.abs_projector import AbsProjector
from espnet_omni_avsr.projectors.linear_projector import LinearProjector
from espnet_omni_avsr.projectors.mlp_out_norm_projector import MLPOutNormProjector
from espnet_omni_avsr.projectors.mlp_projector import MLPProjector
from espnet_omni_avsr.tasks.arg_checks import check_run_args
from espnet_omni_avsr.utils.safe_training import SafeTrainer
from espnet_omni_avsr.utils.trainable import log_trainable_summary, set_trainable

register_audio_data_type()
register_video_data_type()

COMPRESSORS = dict(avg_pool=AvgPoolCompressor, stack=StackCompressor, qformer=QFormerCompressor)
PROJECTORS = dict(mlp=MLPProjector, linear=LinearProjector, mlp_out_norm=MLPOutNormProjector)


def _optional(name, classes, type_check):
    return ClassChoices(name=name, classes=classes, type_check=type_check, default=None, optional=True)


audio_frontend_choices = _optional(
    "audio_frontend", dict(whisper_logmel=WhisperLogMelFrontend, avhubert_fbank=AVHubertFbankFrontend), AbsFrontend
)
audio_encoder_choices = _optional("audio_encoder", dict(whisper=WhisperEncoder), AbsEncoder)
audio_compressor_choices = _optional("audio_compressor", COMPRESSORS, AbsCompressor)
audio_projector_choices = _optional("audio_projector", PROJECTORS, AbsProjector)
video_frontend_choices = _optional(
    "video_frontend",
    dict(
        resnet18=ResNet18VideoFrontend, light=LightVideoFrontend, pixel=PixelVideoFrontend, mouth_roi=MouthROIFrontend
    ),
    AbsVideoFrontend,
)
video_encoder_choices = _optional(
    "video_encoder",
    dict(conformer=ConformerEncoder, transformer=TransformerEncoder, avhubert=AVHubertEncoder),
    AbsEncoder,
)
video_compressor_choices = _optional("video_compressor", COMPRESSORS, AbsCompressor)
video_projector_choices = _optional("video_projector", PROJECTORS, AbsProjector)
fusion_choices = _optional(
    "fusion",
    dict(concat=ConcatFusion, add=AddFusion, cross_attention=CrossAttentionFusion, avhubert=AVHubertFusion),
    AbsFusion,
)
fused_compressor_choices = _optional("fused_compressor", COMPRESSORS, AbsCompressor)
fused_projector_choices = _optional("fused_projector", PROJECTORS, AbsProjector)
decoder_choices = ClassChoices(
    name="decoder", classes=dict(hf_causal_lm=HFCausalLMDecoder), type_check=torch.nn.Module, default="hf_causal_lm"
)
llm_adapter_choices = ClassChoices(
    name="llm_adapter",
    classes=dict(shared_lora=SharedLoRA, task_lora=TaskLoRA, shared_task_lora=SharedTaskLoRA, mome=MoME),
    type_check=AbsLLMAdapter,
    default=None,
    optional=True,
)
model_choices = ClassChoices(
    name="model", classes=dict(avsr_llm=AVSRLLMModel), type_check=torch.nn.Module, default="avsr_llm"
)
preprocessor_choices = ClassChoices(
    name="preprocessor", classes=dict(avsr=AVSRPreprocessor), type_check=AbsPreprocessor, default="avsr"
)
LOSS_TERMS = dict(
    llm_cross_entropy=LLMCrossEntropy,
    char_ctc=CharCTC,
    token_ctc=TokenCTC,
    av_distill=AudioToVideoDistill,
    sink_decorrelation=SinkDecorrelation,
)
DEFAULT_LOSSES = [dict(type="llm_cross_entropy")]


def _loss_list(value):
    """--losses on the command line: a YAML list, e.g. "[{type: llm_cross_entropy}, {type: char_ctc, weight: 0.3}]"."""
    return yaml.safe_load(value) if isinstance(value, str) else value


_RENAMED = {  # keys of earlier configs -> what replaced them, for a clear error instead of a bare TypeError
    "lora": "llm_adapter (shared -> shared_lora, task -> task_lora, shared_task -> shared_task_lora)",
    "lora_conf": "llm_adapter_conf",
    "model_conf.ctc_weights": "losses: [{type: char_ctc, weight: w, conf: {modality: video}}, ...]",
    "model_conf.distill_weight": "losses: [{type: av_distill, weight: w}, ...]",
    "model_conf.distill_conf": "the conf of the av_distill loss term",
    "model_conf.token_ctc_weights": "losses: [{type: token_ctc, weight: w, conf: {modality: audio}}, ...]",
    "model_conf.token_ctc_vocab": "the token_ctc loss term's conf: {vocab: <text file>}",
    "model_conf.llm_weight": "the weight of the llm_cross_entropy loss term (leave the term out for none)",
}


def refuse_renamed_keys(args: argparse.Namespace) -> None:
    """A config written for the earlier layout gets one error listing every key to rename."""
    found = [k for k in _RENAMED if k.startswith("lora") and getattr(args, k, None) is not None]
    found += [k for k in _RENAMED if k.startswith("model_conf.") and k.split(".", 1)[1] in (args.model_conf or {})]
    if found:
        raise ValueError("the config uses renamed keys: " + "; ".join(f"{k} -> {_RENAMED[k]}" for k in found))


def build_loss_terms(specs: Optional[Sequence[dict]], parts: ModelParts) -> List[AbsLossTerm]:
    """The config's `losses:` list -> loss terms, in order. Each entry: `type` (a LOSS_TERMS name),
    optional `weight` (default: the term's, 1 for most), `name` (statistics name; default from the type and conf) and `conf`."""
    terms = []
    for i, spec in enumerate(DEFAULT_LOSSES if specs is None else specs):
        if not isinstance(spec, dict) or "type" not in spec:
            raise ValueError(f"losses[{i}]: expected a mapping with a 'type' (one of {sorted(LOSS_TERMS)}), got {spec!r}")
        unknown = set(spec) - {"type", "weight", "name", "conf"}
        if unknown:
            raise ValueError(f"losses[{i}] ({spec['type']}): unknown keys {sorted(unknown)}; use type, weight, name, conf")
        if spec["type"] not in LOSS_TERMS:
            raise ValueError(f"losses[{i}]: unknown type {spec['type']!r}; registered: {sorted(LOSS_TERMS)}")
        weight = {"weight": spec["weight"]} if "weight" in spec else {}  # else the term's own default
        terms.append(LOSS_TERMS[spec["type"]].build(parts, name=spec.get("name"), **weight, **(spec.get("conf") or {})))
    return terms


def _build_branch(args: argparse.Namespace, prefix: str, llm_hidden: int) -> Optional[ModalityBranch]:
    """Front end -> encoder -> compressor -> projector for one modality, or None if not configured."""
    frontend_name = getattr(args, f"{prefix}_frontend")
    if frontend_name is None:
        return None
    choices = {
        "frontend": audio_frontend_choices if prefix == "audio" else video_frontend_choices,
        "encoder": audio_encoder_choices if prefix == "audio" else video_encoder_choices,
        "compressor": audio_compressor_choices if prefix == "audio" else video_compressor_choices,
        "projector": audio_projector_choices if prefix == "audio" else video_projector_choices,
    }
    feeds_fusion = getattr(args, "fusion", None) is not None and prefix in FUSED_INPUTS
    parts = [p for p in ("compressor", "projector") if getattr(args, f"{prefix}_{p}", None) is None]
    if parts and not (feeds_fusion and len(parts) == 2):
        raise ValueError(f"{prefix}_frontend is set, so {prefix}_{parts[0]} must be set too"
                         + (" (or neither, when the branch only feeds the fusion)" if feeds_fusion else ""))
    conf = lambda part: dict(getattr(args, f"{prefix}_{part}_conf", None) or {})  # noqa: E731

    # 1. front end: raw waveform / mouth-ROI frames -> features
    frontend = choices["frontend"].get_class(frontend_name)(**conf("frontend"))
    size = frontend.output_size()
    # 2. encoder (optional); video encoders keep the 25 fps frame rate unless told otherwise
    encoder = None
    if getattr(args, f"{prefix}_encoder") is not None:
        enc_class = choices["encoder"].get_class(getattr(args, f"{prefix}_encoder"))
        enc_conf = conf("encoder")
        enc_params = inspect.signature(enc_class.__init__).parameters
        if prefix == "video" and "input_layer" in enc_params:  # ESPnet's encoders: no subsampling
            enc_conf.setdefault("input_layer", "linear")
        # `frozen: true` works for every encoder, also for ESPnet's, which have no such argument
        takes_frozen = "frozen" in enc_params
        frozen = False if takes_frozen else bool(enc_conf.pop("frozen", False))
        encoder = enc_class(input_size=size, **enc_conf)
        if frozen:
            set_trainable(encoder, False)
        size = encoder.output_size()
    if parts:  # encodes for the fusion only
        return ModalityBranch(frontend, encoder)
    # 3. compressors, one per rate: T -> ceil(T / rate)
    comp_class = choices["compressor"].get_class(getattr(args, f"{prefix}_compressor"))
    comp_conf = conf("compressor")
    rates = getattr(args, f"{prefix}_rates", None)
    if rates and "rate" in comp_conf:
        raise ValueError(f"give either {prefix}_rates or {prefix}_compressor_conf.rate, not both")
    rates = rates or [comp_conf.pop("rate", None)]
    if rates == [None]:
        raise ValueError(f"set {prefix}_compressor_conf.rate (one rate) or {prefix}_rates (several)")
    compressors = {int(r): comp_class(input_size=size, rate=int(r), **comp_conf) for r in rates}
    # 4. projector(s) into the LLM's embedding space: one per rate, or one shared
    proj_class = choices["projector"].get_class(getattr(args, f"{prefix}_projector"))

    def projector(in_size: int):
        return proj_class(input_size=in_size, output_size=llm_hidden, **conf("projector"))

    if getattr(args, "share_projector", False):
        projectors = projector(next(iter(compressors.values())).output_size())
    else:
        projectors = {r: projector(c.output_size()) for r, c in compressors.items()}
    return ModalityBranch(frontend, encoder, compressors, projectors)


def _build_fused_branch(
    args: argparse.Namespace, branches: Dict[str, ModalityBranch], llm_hidden: int
) -> Optional[FusedBranch]:
    """Fusion -> compressor -> projector over the audio and video branches' features, or None."""
    if getattr(args, "fusion", None) is None:
        return None
    missing = [m for m in FUSED_INPUTS if m not in branches]
    if missing:
        raise ValueError(f"fusion: {args.fusion} joins {list(FUSED_INPUTS)}, but the config builds no {missing} "
                         f"branch (set {missing[0]}_frontend and {missing[0]}_encoder)")
    for part in ("fused_compressor", "fused_projector"):
        if getattr(args, part, None) is None:
            raise ValueError(f"fusion is set, so {part} must be set too")
    sizes = {f"{m}_size": branches[m].feature_size for m in FUSED_INPUTS}
    fusion = fusion_choices.get_class(args.fusion)(**sizes, **(getattr(args, "fusion_conf", None) or {}))
    comp_class = fused_compressor_choices.get_class(args.fused_compressor)
    comp_conf = dict(getattr(args, "fused_compressor_conf", None) or {})
    params = inspect.signature(comp_class.__init__).parameters
    if "rate" in comp_conf:  # a fixed rate: named by it
        condition = str(comp_conf["rate"])
    elif "queries_per_second" in params:  # a query budget: named by its queries per second
        condition = f"q{comp_conf.get('queries_per_second', params['queries_per_second'].default):g}"
    else:
        raise ValueError(f"fused_compressor {args.fused_compressor}: set fused_compressor_conf.rate")
    compressor = comp_class(input_size=fusion.output_size(), **comp_conf)
    projector = fused_projector_choices.get_class(args.fused_projector)(
        input_size=compressor.output_size(), output_size=llm_hidden, **(getattr(args, "fused_projector_conf", None) or {})
    )
    predictor = None
    if getattr(args, "speech_rate_predictor", None):
        from espnet_omni_avsr.speech_rate.predictor import load_predictor

        predictor, _, _ = load_predictor(args.speech_rate_predictor)
        if predictor.input_size != branches["audio"].feature_size:
            raise ValueError(f"speech_rate_predictor {args.speech_rate_predictor} reads {predictor.input_size}-dim "
                             f"audio features, but the audio encoder gives {branches['audio'].feature_size}: train it "
                             "on this config's audio encoder")
    return FusedBranch(fusion, condition, compressor, projector, predictor)


class AVSRLLMTask(AbsTask):
    """ASR, VSR and AVSR with a frozen LLM (Llama-AVSR family)."""

    num_optimizers: int = 1
    class_choices_list = [
        audio_frontend_choices,
        audio_encoder_choices,
        audio_compressor_choices,
        audio_projector_choices,
        video_frontend_choices,
        video_encoder_choices,
        video_compressor_choices,
        video_projector_choices,
        fusion_choices,
        fused_compressor_choices,
        fused_projector_choices,
        decoder_choices,
        llm_adapter_choices,
        model_choices,
        preprocessor_choices,
    ]
    trainer = SafeTrainer  # --resume reads with weights_only (utils/safe_training.py)

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        group = parser.add_argument_group(description="Task related")
        group.add_argument(
            "--use_preprocessor", type=str2bool, default=True, help="Tokenize text and check inputs in the loader"
        )
        group.add_argument(
            "--audio_rates", type=int, nargs="+", default=None,
            help="Matryoshka: audio compression rates, one compressor each (default: audio_compressor_conf.rate)",
        )
        group.add_argument(
            "--video_rates", type=int, nargs="+", default=None,
            help="Matryoshka: video compression rates, one compressor each (default: video_compressor_conf.rate)",
        )
        group.add_argument(
            "--share_projector", type=str2bool, default=False,
            help="One projector for all rates of a modality instead of one per rate",
        )
        group.add_argument(
            "--speech_rate_predictor", type=str, default=None,
            help="Early fusion (MMS-LLaMA): a speech-rate predictor checkpoint (bin/train_speech_rate.py), frozen "
            "in the model; the fused Q-Former then sets each utterance's query count by its rate (default: rate 1)",
        )
        for old in ("lora", "lora_conf"):  # renamed; accepted only to say so (refuse_renamed_keys)
            group.add_argument(f"--{old}", type=str, default=None, help=argparse.SUPPRESS)
        group.add_argument(
            "--losses", type=_loss_list, default=None,
            help="The loss terms, a YAML list of {type, weight, name, conf}; types: "
            + ", ".join(sorted(LOSS_TERMS)) + ". Default: the LLM cross entropy alone",
        )
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    @typechecked
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]], Tuple[List[str], Dict[str, torch.Tensor]]
    ]:
        return AVSRCollateFn()

    @classmethod
    @typechecked
    def build_preprocess_fn(
        cls, args: argparse.Namespace, train: bool
    ) -> Optional[Callable[[str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]]:
        if not args.use_preprocessor:
            return None
        conf = dict(args.preprocessor_conf or {})
        conf.setdefault("tokenizer_dir", (args.decoder_conf or {}).get("model_dir"))
        if conf["tokenizer_dir"] is None:
            raise ValueError("set decoder_conf.model_dir (or preprocessor_conf.tokenizer_dir) to a local LLM folder")
        return preprocessor_choices.get_class(args.preprocessor)(train=train, **conf)

    @classmethod
    def build_iter_factory(cls, args, distributed_option, mode, kwargs=None):
        # the training preprocessor seeds its noise by utterance and epoch: tell it the epoch
        factory = super().build_iter_factory(args, distributed_option, mode, kwargs)
        return EpochAwareIterFactory(factory) if mode == "train" else factory

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        # Which of speech / video is needed depends on the model's task; the model checks it.
        return () if inference else ("text",)

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return tuple(m.data_name for m in MODALITIES.values())

    @classmethod
    @typechecked
    def build_model(cls, args: argparse.Namespace) -> AVSRLLMModel:
        refuse_renamed_keys(args)
        model_conf = dict(args.model_conf or {})
        tasks = model_conf.get("tasks", ["avsr"])
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        # 1. the LLM decoder (with its adapter); its hidden size fixes the projectors' output size
        adapter = None
        if getattr(args, "llm_adapter", None) is not None:
            adapter = llm_adapter_choices.get_class(args.llm_adapter)(tasks=tasks, **(args.llm_adapter_conf or {}))
        decoder = decoder_choices.get_class(args.decoder)(adapter=adapter, **(args.decoder_conf or {}))
        # 2. modality branches
        audio = _build_branch(args, "audio", decoder.hidden_size)
        video = _build_branch(args, "video", decoder.hidden_size)
        branches = {m: b for m, b in (("audio", audio), ("video", video)) if b is not None}
        fused = _build_fused_branch(args, branches, decoder.hidden_size)
        # 3. the loss terms of the config, then the adapter's own (e.g. a router's balance loss)
        streams = dict(branches, **({FUSED: fused} if fused is not None else {}))
        parts = ModelParts(tasks=tasks, branches=streams, decoder=decoder)
        losses = build_loss_terms(getattr(args, "losses", None), parts)
        losses += adapter.loss_terms() if adapter is not None else []
        # 4. the model
        model = model_choices.get_class(args.model)(
            decoder=decoder, audio=audio, video=video, fused=fused, losses=losses, **model_conf
        )
        log_trainable_summary(model)
        return model

    @classmethod
    def main_worker(cls, args: argparse.Namespace):
        check_run_args(args)  # config values, text data files, --init_param (tasks/arg_checks.py)
        super().main_worker(args)
