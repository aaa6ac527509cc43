"""AV-HuBERT's network in plain PyTorch, with the parameter names of the official checkpoints.

The module tree mirrors fairseq's `AVHubertModel` (and ESPnet's copy of it), so a stored state
dict maps onto it key by key:

    feature_extractor_video.resnet.{frontend3D,trunk}.*   3-D conv stem + ResNet-18 (ESPnet's ResEncoder)
    feature_extractor_video.proj                          Linear(512 -> D)
    feature_extractor_audio.proj                          Linear(audio_feat_dim -> D)
    layer_norm                                            LayerNorm over the fused features (2D or D)
    post_extract_proj                                     Linear(2D -> D), "concat" fusion only
    encoder.pos_conv.0.{weight_g,weight_v,bias}           weight-normalised grouped Conv1d positions
    encoder.layers.N.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm}
    encoder.layer_norm

Pre-training-only tensors (mask_emb, final_proj, label_embs_concat) have no counterpart here.
Shapes are batch-first throughout: (B, T, D); padding masks are (B, T), True on padded frames.
"""
import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from espnet_omni_avsr.frontends.resnet18_video_frontend import build_lip_trunk

MODALITY_FUSE = ("concat", "add")


@dataclass(frozen=True)
class AVHubertArch:
    """The sizes that a checkpoint fixes (AV-HuBERT's config names). Defaults: Base."""

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    layer_norm_first: bool = True
    modality_fuse: str = "concat"
    audio_feat_dim: int = 104
    resnet_relu_type: str = "prelu"
    conv_pos: int = 128
    conv_pos_groups: int = 16

    def __post_init__(self):
        for name in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                     "audio_feat_dim", "conv_pos", "conv_pos_groups"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"AV-HuBERT: {name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(f"AV-HuBERT: encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                             f"encoder_attention_heads {self.encoder_attention_heads}")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(f"AV-HuBERT: encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                             f"conv_pos_groups {self.conv_pos_groups}")
        if self.modality_fuse not in MODALITY_FUSE:
            raise ValueError(f"AV-HuBERT: modality_fuse must be one of {MODALITY_FUSE}, got {self.modality_fuse!r}")
        if self.resnet_relu_type not in ("prelu", "relu"):
            raise ValueError(f"AV-HuBERT: resnet_relu_type must be 'prelu' or 'relu', got {self.resnet_relu_type!r}")

    def as_dict(self) -> dict:
        return asdict(self)


BASE = AVHubertArch()
LARGE = AVHubertArch(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16)


class FeatureExtractor(torch.nn.Module):
    """One modality's features: (optional lip trunk) + Linear to D (AV-HuBERT's SubModel, no sub-encoder)."""

    def __init__(self, input_dim: int, embed_dim: int, resnet: Optional[torch.nn.Module] = None):
        super().__init__()
        self.resnet = resnet
        self.proj = torch.nn.Linear(input_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """video: (B, T, H, W) normalised frames; audio: (B, T, audio_feat_dim). Returns (B, T, D)."""
        if self.resnet is not None:
            x = self.resnet(x.unsqueeze(1)).transpose(1, 2)  # (B, 1, T, H, W) -> (B, 512, T) -> (B, T, 512)
        return self.proj(x)


class WeightNormConv1d(torch.nn.Module):
    """Conv1d whose weight is weight_v scaled to the norm weight_g over dims (0, 1) (weight_norm, dim=2)."""

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.kernel_size, self.groups = kernel_size, groups
        std = math.sqrt(4.0 / (kernel_size * channels))
        v = torch.randn(channels, channels // groups, kernel_size) * std
        self.weight_g = torch.nn.Parameter(v.norm(dim=(0, 1), keepdim=True))  # (1, 1, k)
        self.weight_v = torch.nn.Parameter(v)  # (D, D / groups, k)
        self.bias = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> (B, D, T + 1 - k % 2)."""
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.kernel_size // 2, groups=self.groups)


class SamePad(torch.nn.Module):
    """Drops the extra frame an even kernel with padding k // 2 adds."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : x.size(2) - self.remove]


class SelfAttention(torch.nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (fairseq's names)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.k_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.v_proj = torch.nn.Linear(embed_dim, embed_dim)
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, T, D); padding_mask: (B, T) True on padded frames. Returns (B, T, D)."""
        B, T, D = x.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, h, D // h).transpose(1, 2)  # (B, h, T, D/h)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        mask = None if padding_mask is None else ~padding_mask[:, None, None, :]  # (B, 1, 1, T), True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class TransformerLayer(torch.nn.Module):
    """wav2vec 2.0 / HuBERT encoder layer: self-attention and a GELU feed-forward block, each with a
    residual; LayerNorm before each block (layer_norm_first) or after each residual sum."""

    def __init__(self, arch: AVHubertArch, dropout: float, attention_dropout: float, activation_dropout: float):
        super().__init__()
        d = arch.encoder_embed_dim
        self.layer_norm_first = arch.layer_norm_first
        self.self_attn = SelfAttention(d, arch.encoder_attention_heads, attention_dropout)
        self.self_attn_layer_norm = torch.nn.LayerNorm(d)
        self.fc1 = torch.nn.Linear(d, arch.encoder_ffn_embed_dim)
        self.fc2 = torch.nn.Linear(arch.encoder_ffn_embed_dim, d)
        self.final_layer_norm = torch.nn.LayerNorm(d)
        self.dropout = torch.nn.Dropout(dropout)
        self.activation_dropout = torch.nn.Dropout(activation_dropout)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), padding_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, padding_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(torch.nn.Module):
    """Convolutional positions, then the layers; one LayerNorm at the end (layer_norm_first) or
    right after the positions (otherwise)."""

    def __init__(self, arch: AVHubertArch, dropout: float, attention_dropout: float, activation_dropout: float,
                 layerdrop: float):
        super().__init__()
        d = arch.encoder_embed_dim
        self.pos_conv = torch.nn.Sequential(
            WeightNormConv1d(d, arch.conv_pos, arch.conv_pos_groups), SamePad(arch.conv_pos), torch.nn.GELU()
        )
        self.layers = torch.nn.ModuleList(
            TransformerLayer(arch, dropout, attention_dropout, activation_dropout) for _ in range(arch.encoder_layers)
        )
        self.layer_norm = torch.nn.LayerNorm(d)
        self.layer_norm_first = arch.layer_norm_first
        self.dropout = torch.nn.Dropout(dropout)
        self.layerdrop = layerdrop

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, T, D), padding_mask (B, T) or None -> (B, T, D)."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[:, :, None], 0.0)  # padded frames must not reach the conv
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop:
                continue
            x = layer(x, padding_mask)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


class AVHubertModel(torch.nn.Module):
    """Both feature extractors, the modality fusion and the Transformer encoder.

    forward(video, audio, padding_mask): video (B, T, H, W) normalised mouth crops and/or audio
    (B, T, audio_feat_dim) stacked filterbanks, at the same frame rate (25 Hz); a missing modality
    contributes zeros after its feature extractor (as AV-HuBERT does for visual-only input).
    Returns (B, T, D).
    """

    def __init__(self, arch: AVHubertArch, dropout: float = 0.1, attention_dropout: float = 0.1,
                 activation_dropout: float = 0.0, dropout_input: float = 0.0, layerdrop: float = 0.0):
        super().__init__()
        d = arch.encoder_embed_dim
        self.arch = arch
        trunk = build_lip_trunk(arch.resnet_relu_type)
        self.feature_extractor_audio = FeatureExtractor(arch.audio_feat_dim, d)
        self.feature_extractor_video = FeatureExtractor(trunk.backend_out, d, resnet=trunk)
        fused = 2 * d if arch.modality_fuse == "concat" else d
        self.layer_norm = torch.nn.LayerNorm(fused)
        self.post_extract_proj = torch.nn.Linear(fused, d) if fused != d else None
        self.dropout_input = torch.nn.Dropout(dropout_input)
        self.encoder = TransformerEncoder(arch, dropout, attention_dropout, activation_dropout, layerdrop)

    def forward(self, video: Optional[torch.Tensor], audio: Optional[torch.Tensor],
                padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if video is None and audio is None:
            raise ValueError("AV-HuBERT needs video or audio input")
        fv = None if video is None else self.feature_extractor_video(video)  # (B, T, D)
        fa = None if audio is None else self.feature_extractor_audio(audio)  # (B, T, D)
        fa = torch.zeros_like(fv) if fa is None else fa
        fv = torch.zeros_like(fa) if fv is None else fv
        x = torch.cat([fa, fv], dim=-1) if self.arch.modality_fuse == "concat" else fa + fv  # audio first
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(self.dropout_input(x), padding_mask)
