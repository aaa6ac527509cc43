"""The encoder of a Hugging Face Whisper read from a local folder, exact or on the true length."""
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

from espnet_omni_avsr.utils.dtypes import resolve_dtype
from espnet_omni_avsr.utils.frozen_weights import mark_pretrained
from espnet_omni_avsr.utils.safe_checkpoint import load_weights
from espnet_omni_avsr.utils.trainable import keep_frozen_in_eval, set_trainable

_PREFIXES = ("model.encoder.", "encoder.")  # WhisperForConditionalGeneration, WhisperModel


def _check_whisper_folder(model_dir: str) -> None:
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(
            f"WhisperEncoder: model_dir '{model_dir}' does not exist (a local Whisper folder is needed)"
        )
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"WhisperEncoder: '{model_dir}' has no config.json; it is not a Hugging Face Whisper folder"
        )
    with open(config_path, encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    if model_type != "whisper":
        raise FileNotFoundError(
            f"WhisperEncoder: '{model_dir}' holds a '{model_type}' model, not a Whisper one (config.json model_type)"
        )


def _weight_files(model_dir: str) -> List[str]:
    """The checkpoint files of a save_pretrained folder: sharded or single, safetensors or .bin."""
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index_path = os.path.join(model_dir, index_name)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(model_dir, shard) for shard in shards]
        if os.path.isfile(os.path.join(model_dir, single_name)):
            return [os.path.join(model_dir, single_name)]
    raise FileNotFoundError(
        f"WhisperEncoder: no model.safetensors or pytorch_model.bin weights in '{model_dir}'"
    )


def _encoder_state_dict(model_dir: str) -> Dict[str, torch.Tensor]:
    """Reads only the encoder's tensors (keys without their prefix); the decoder is never loaded."""
    state: Dict[str, torch.Tensor] = {}
    for path in _weight_files(model_dir):
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
                    if prefix is not None:
                        state[key[len(prefix):]] = f.get_tensor(key)
        else:
            for key, value in load_weights(path, what="Whisper weight file").items():
                prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
                if prefix is not None:
                    state[key[len(prefix):]] = value
    return state




class WhisperEncoder(AbsEncoder):
    """Whisper's audio encoder (conv1, conv2 stride 2, sinusoid-initialised positions, layers, LayerNorm).

    The mode follows the input length:
      * T == 3000 (Whisper's 30-s window): exact Whisper, no mask, the whole positional table; the
        output is then cut to the longest valid length. Equal to the HF encoder's own forward.
      * T < 3000 (true length): the positional table is sliced to the input, padded input frames
        (and the first conv's output past each length) are zeroed and padded frames are masked out
        of self-attention, so an utterance gives the same output alone and inside a padded batch.
        The features differ from the 30-s mode: train and decode in the same mode.
    A true-length batch whose longest utterance has exactly 3000 frames is run in the exact mode.

    Args:
        input_size: mel bins of the features; must equal config.num_mel_bins.
        model_dir: local Hugging Face Whisper folder (config.json + weights). Only the encoder's
            tensors are read; nothing is downloaded and no remote code runs.
        frozen: parameters get requires_grad False and the module stays in eval mode even when the
            parent model is put in train mode.
        output_layer: which hidden state to return: 0 = after the convolutions and positions,
            i = after layer i, negative values count from the end (-1 = last layer). The final
            LayerNorm is applied only to the last layer's output.
        attn_implementation: "sdpa" or "eager".
        dtype: the encoder's weights and arithmetic, "float32" (default), "bfloat16", "float16" or
            "auto" (bf16 where the hardware has bf16 matrix units: CPUs with AMX / avx512_bf16,
            GPUs; else fp32: emulated bf16 is slower). The output is float32 either way.
    """

    def __init__(
        self,
        input_size: int = 80,
        model_dir: str = "",
        frozen: bool = True,
        output_layer: int = -1,
        attn_implementation: str = "sdpa",
        dtype: str = "float32",
    ):
        super().__init__()
        weights_dtype = resolve_dtype(dtype, "WhisperEncoder: dtype")
        if not model_dir:
            raise FileNotFoundError("WhisperEncoder: model_dir is required (a local Hugging Face Whisper folder)")
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"WhisperEncoder: attn_implementation must be 'sdpa' or 'eager', got '{attn_implementation}'"
            )
        _check_whisper_folder(model_dir)
        config = WhisperConfig.from_pretrained(model_dir, local_files_only=True)
        config._attn_implementation = attn_implementation
        if input_size != config.num_mel_bins:
            raise ValueError(
                f"WhisperEncoder: input_size={input_size} but the Whisper in '{model_dir}' expects "
                f"num_mel_bins={config.num_mel_bins} (set the front end's n_mels to match)"
            )
        n_layers = config.encoder_layers
        if not -(n_layers + 1) <= output_layer <= n_layers:
            raise ValueError(f"WhisperEncoder: output_layer={output_layer} is outside [-{n_layers + 1}, {n_layers}]")

        with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
            self.encoder = HFWhisperEncoder(config)
        state = {k: v.to(weights_dtype) if v.is_floating_point() else v
                 for k, v in _encoder_state_dict(model_dir).items()}
        missing, unexpected = self.encoder.load_state_dict(state, strict=False, assign=True)
        if missing:
            raise FileNotFoundError(f"WhisperEncoder: encoder weights missing in '{model_dir}': {sorted(missing)[:8]}")
        if unexpected:
            logging.warning("WhisperEncoder: ignored unexpected encoder weights %s", sorted(unexpected)[:8])

        mark_pretrained(self.encoder, source=model_dir)
        self.model_dir = model_dir
        self.input_size = input_size
        self.output_layer = output_layer % (n_layers + 1)
        self.frozen = bool(frozen)
        conv_stride = self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]  # 2
        self.exact_length = config.max_source_positions * conv_stride  # 3000
        if self.frozen:
            set_trainable(self.encoder, False)

    def output_size(self) -> int:
        return self.encoder.config.d_model

    def train(self, mode: bool = True) -> "WhisperEncoder":
        super().train(mode)
        return keep_frozen_in_eval(self)  # no dropout/layerdrop in a frozen encoder

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, None]:
        """xs_pad: (B, T, n_mels) log-mel features, ilens: (B,) valid frames.

        Returns (B, T', d_model), olens = ceil(ilens / 2) and None; T' = max(olens).
        """
        if xs_pad.dim() != 3 or xs_pad.size(2) != self.input_size:
            raise ValueError(
                f"WhisperEncoder: expected features (B, T, {self.input_size}), got {tuple(xs_pad.shape)}"
            )
        T = xs_pad.size(1)
        if T > self.exact_length:
            raise ValueError(
                f"WhisperEncoder: {T} feature frames is longer than Whisper's {self.exact_length} "
                f"({self.exact_length // 100} s); segment the audio"
            )
        enc = self.encoder
        ilens = ilens.to(device=xs_pad.device, dtype=torch.long)
        if (ilens > T).any():
            raise ValueError(f"WhisperEncoder: ilens {ilens.tolist()} exceed the {T} frames of the input")
        olens = (ilens + 1) // 2  # conv2 has stride 2 and padding 1
        exact = T == self.exact_length
        x = xs_pad.to(enc.conv1.weight.dtype).transpose(1, 2)  # (B, n_mels, T)
        if not exact:
            in_valid = torch.arange(T, device=x.device)[None, :] < ilens[:, None]  # (B, T)
            x = x * in_valid[:, None, :].to(x.dtype)

        h = torch.nn.functional.gelu(enc.conv1(x))  # (B, D, T)
        if not exact:
            h = h * in_valid[:, None, :].to(h.dtype)  # conv2 must see zeros past the length, as alone
        h = torch.nn.functional.gelu(enc.conv2(h)).transpose(1, 2)  # (B, ceil(T/2), D)
        T2 = h.size(1)
        h = h + enc.embed_positions.weight[:T2].to(h.dtype)
        h = torch.nn.functional.dropout(h, p=enc.dropout, training=enc.training)

        out_valid = torch.arange(T2, device=h.device)[None, :] < olens[:, None]  # (B, T')
        if exact:
            mask = None
        else:
            mask = torch.zeros(h.size(0), 1, 1, T2, dtype=h.dtype, device=h.device)
            mask = mask.masked_fill(~out_valid[:, None, None, :], torch.finfo(h.dtype).min)  # (B, 1, 1, T')

        for layer in enc.layers[: self.output_layer]:
            if enc.training and enc.layerdrop > 0.0 and torch.rand([]) < enc.layerdrop:
                continue
            h = layer(h, mask)
        if self.output_layer == len(enc.layers):
            h = enc.layer_norm(h)

        t_out = int(olens.max().item()) if olens.numel() else 0
        h = h[:, :t_out] * out_valid[:, :t_out, None].to(h.dtype)  # (B, T', D), padded frames zero
        return h.float(), olens, None
