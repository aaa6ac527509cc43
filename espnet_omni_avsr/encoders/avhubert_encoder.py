"""AV-HuBERT (Base / Large) as an ESPnet encoder: native PyTorch, official checkpoints, optional LoRA."""
import logging
import math
from typing import Optional, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder

from espnet_omni_avsr.encoders.avhubert_checkpoint import load_avhubert_state, read_avhubert_checkpoint
from espnet_omni_avsr.encoders.avhubert_modules import AVHubertArch, AVHubertModel
from espnet_omni_avsr.utils.frozen_weights import mark_pretrained
from espnet_omni_avsr.utils.trainable import keep_frozen_in_eval, set_trainable

MODALITIES = ("video", "audiovisual")


class AVHubertEncoder(AbsEncoder):
    """AV-HuBERT's ResNet-18 lip trunk, modality fusion and Transformer encoder; 25 Hz in, 25 Hz out.

    The encoder expects mouth crops that are already cropped and normalised: pair it with the
    `mouth_roi` video front end (MouthROIFrontend: /255, 88x88 crop of the 96x96 ROI, random in
    training with optional time masking, centre otherwise, (x - 0.421) / 0.165, flattened to
    (B, T, 88 * 88)). The augmentation lives in the front end so that it still follows
    train/eval mode while this encoder is frozen and kept in eval mode.

    Args:
        input_size: values per frame from the front end, crop_size ** 2 (frames are square).
        checkpoint: an official AV-HuBERT checkpoint (e.g. large_vox_iter5.pt, base_vox_iter5.pt, or a
            fine-tuned AV-HuBERT file). The architecture is read from it, its tensors are loaded
            (missing keys or wrong shapes are errors naming the keys) and marked as pretrained, so a
            frozen encoder's weights stay out of ESPnet checkpoints and come back from this file.
            Without it the encoder is randomly initialised.
        modality: "video" (visual-only, the audio half of the fusion is zeros, as AV-HuBERT does)
            or "audiovisual" (forward also takes AV-HuBERT's stacked log filterbanks, see
            `frontends.avhubert_fbank`).
        frozen: no trainable parameters besides LoRA, and the network stays in eval mode (fixed
            BatchNorm statistics, no dropout, also in the LoRA branches) when the model trains.
        lora_r, lora_alpha, lora_dropout: LoRA (peft) on q_proj and v_proj of every Transformer
            layer, Llama-AVSR's VSR setting; lora_r 0 = off. Needs frozen: true.
        encoder_layers ... conv_pos_groups: the architecture (AVHubertArch); None = the
            checkpoint's value, else Base (12 layers, 768 dim, 12 heads, FFN 3072). Given together
            with a checkpoint, they must agree with it.
        dropout, attention_dropout, activation_dropout, dropout_input, layerdrop: for fine-tuning.

    forward(xs_pad, ilens, prev_states=None, audio=None):
        xs_pad: (B, T, input_size) or (B, T, H, W) normalised frames; ilens: (B,) valid frames (>= 1).
        audio: (B, T_a, audio_feat_dim) stacked filterbanks at 25 Hz ("audiovisual" only); cut or
            zero-padded to T as AV-HuBERT does.
        returns (B, T, D) with padded frames zero, ilens unchanged, None.
    """

    def __init__(
        self,
        input_size: int = 88 * 88,
        checkpoint: Optional[str] = None,
        modality: str = "video",
        frozen: bool = True,
        lora_r: int = 0,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        encoder_layers: Optional[int] = None,
        encoder_embed_dim: Optional[int] = None,
        encoder_ffn_embed_dim: Optional[int] = None,
        encoder_attention_heads: Optional[int] = None,
        layer_norm_first: Optional[bool] = None,
        modality_fuse: Optional[str] = None,
        audio_feat_dim: Optional[int] = None,
        resnet_relu_type: Optional[str] = None,
        conv_pos: Optional[int] = None,
        conv_pos_groups: Optional[int] = None,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        dropout_input: float = 0.0,
        layerdrop: float = 0.0,
    ):
        super().__init__()
        side = math.isqrt(max(int(input_size), 0))
        if side * side != input_size or side < 8:
            raise ValueError(f"AVHubertEncoder: input_size must be crop_size ** 2 of square frames, got {input_size} "
                             "(use the mouth_roi video front end: the encoder holds its own ResNet trunk)")
        if modality not in MODALITIES:
            raise ValueError(f"AVHubertEncoder: modality must be one of {MODALITIES}, got {modality!r}")
        if lora_r < 0:
            raise ValueError(f"AVHubertEncoder: lora_r must be >= 0, got {lora_r}")
        if lora_r and not frozen:
            raise ValueError("AVHubertEncoder: LoRA (lora_r > 0) is for a frozen encoder; set frozen: true")
        given = dict(encoder_layers=encoder_layers, encoder_embed_dim=encoder_embed_dim,
                     encoder_ffn_embed_dim=encoder_ffn_embed_dim, encoder_attention_heads=encoder_attention_heads,
                     layer_norm_first=layer_norm_first, modality_fuse=modality_fuse, audio_feat_dim=audio_feat_dim,
                     resnet_relu_type=resnet_relu_type, conv_pos=conv_pos, conv_pos_groups=conv_pos_groups)
        given = {k: v for k, v in given.items() if v is not None}

        ckpt = read_avhubert_checkpoint(checkpoint) if checkpoint else None
        if ckpt is not None:
            arch = ckpt.arch
            differ = {k: (v, getattr(arch, k)) for k, v in given.items() if getattr(arch, k) != v}
            if differ:
                raise ValueError(f"AVHubertEncoder: settings differ from the checkpoint {checkpoint} "
                                 f"(given, stored): {differ}; leave them out to use the checkpoint's")
        else:
            arch = AVHubertArch(**given)
        self.model = AVHubertModel(arch, dropout=dropout, attention_dropout=attention_dropout,
                                   activation_dropout=activation_dropout, dropout_input=dropout_input,
                                   layerdrop=layerdrop)
        if ckpt is not None:
            load_avhubert_state(self.model, ckpt)
            mark_pretrained(self.model, source=checkpoint)
            logging.info("AVHubertEncoder: loaded %s (%d layers, %d dim; read with %s)", checkpoint,
                         arch.encoder_layers, arch.encoder_embed_dim, ckpt.read_with)
        self.arch = arch
        self.checkpoint = checkpoint
        self.input_size = input_size
        self.crop_size = side
        self.modality = modality
        self.frozen = bool(frozen)
        if self.frozen:
            set_trainable(self.model, False)
        self.lora_r = lora_r
        if lora_r:
            from peft import LoraConfig, inject_adapter_in_model

            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                target_modules=["q_proj", "v_proj"], bias="none")
            inject_adapter_in_model(config, self.model.encoder)
            for name, m in self.model.named_modules():
                if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
                    set_trainable(m, True)  # inside the frozen network: in eval mode with it

    def output_size(self) -> int:
        return self.arch.encoder_embed_dim

    def train(self, mode: bool = True) -> "AVHubertEncoder":
        super().train(mode)
        return keep_frozen_in_eval(self)

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[torch.Tensor] = None,
        audio: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, None]:
        B, T = xs_pad.shape[:2]
        c = self.crop_size
        if xs_pad.dim() == 3 and xs_pad.size(2) == self.input_size:
            video = xs_pad.reshape(B, T, c, c)
        elif xs_pad.dim() == 4 and tuple(xs_pad.shape[2:]) == (c, c):
            video = xs_pad
        else:
            raise ValueError(f"AVHubertEncoder: expected frames (B, T, {self.input_size}) or (B, T, {c}, {c}), "
                             f"got {tuple(xs_pad.shape)}")
        ilens = ilens.to(device=xs_pad.device, dtype=torch.long)
        if ilens.shape != (B,) or (ilens < 1).any() or (ilens > T).any():
            raise ValueError(f"AVHubertEncoder: ilens {ilens.tolist()} must be in [1, {T}] for each of {B} inputs")
        if self.modality == "video" and audio is not None:
            raise ValueError("AVHubertEncoder: audio given to a modality 'video' encoder; set modality: audiovisual")
        if self.modality == "audiovisual":
            if audio is None:
                raise ValueError("AVHubertEncoder: modality 'audiovisual' needs audio features")
            if audio.dim() != 3 or audio.size(0) != B or audio.size(2) != self.arch.audio_feat_dim:
                raise ValueError(f"AVHubertEncoder: audio must be (B={B}, T, {self.arch.audio_feat_dim}), "
                                 f"got {tuple(audio.shape)}")
            audio = torch.nn.functional.pad(audio[:, :T], (0, 0, 0, T - min(T, audio.size(1))))  # to T frames
            audio = audio.to(video.dtype)
        padding_mask = torch.arange(T, device=xs_pad.device)[None, :] >= ilens[:, None]  # (B, T)
        out = self.model(video.to(self.model.layer_norm.weight.dtype), audio, padding_mask)  # (B, T, D)
        return out.masked_fill(padding_mask[:, :, None], 0.0), ilens, None
