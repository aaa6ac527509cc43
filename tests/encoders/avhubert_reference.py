"""An independent AV-HuBERT built from ESPnet 202511's espnet2/asr/encoder/avhubert_encoder.py.

ESPnet's `AVHubertModel.__init__` and `TransformerEncoder.__init__` import fairseq (LayerNorm and
TransformerSentenceEncoderLayer), which cannot be installed here. What can be used as ESPnet wrote
it: `SubModel` (the feature extractors; with sub_encoder_layers 0 it builds no fairseq part),
`ResEncoder` (the lip trunk), `SamePad`, and the forward code `AVHubertModel.extract_finetune` and
`TransformerEncoder.forward/extract_features` (run on objects made without their __init__). The
two fairseq pieces are replaced by torch's own: `torch.nn.LayerNorm` (fairseq's LayerNorm is
torch's) and `torch.nn.TransformerEncoderLayer` (norm_first = layer_norm_first, GELU, a fused
in_proj for q/k/v) behind the call signature ESPnet uses; the positional conv is built as ESPnet
builds it (Conv1d + torch.nn.utils.weight_norm(dim=2) + SamePad + GELU).

Not independent of the port: the lip trunk, which is ESPnet's ResEncoder in both.
"""
import copy
import warnings

import torch
from espnet2.asr.encoder import avhubert_encoder as ref

from espnet_omni_avsr.encoders.avhubert_modules import AVHubertArch


class _TorchLayer(torch.nn.Module):
    """torch.nn.TransformerEncoderLayer called the way ESPnet calls fairseq's layer: (T, B, C)."""

    def __init__(self, arch: AVHubertArch):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(
            arch.encoder_embed_dim, arch.encoder_attention_heads, arch.encoder_ffn_embed_dim, dropout=0.0,
            activation="gelu", norm_first=arch.layer_norm_first,
        )

    def forward(self, x, self_attn_padding_mask=None, need_weights=False):
        return self.layer(x, src_key_padding_mask=self_attn_padding_mask), None


def build_reference(arch: AVHubertArch, seed: int = 0) -> torch.nn.Module:
    """ESPnet's AVHubertModel (see above) with random weights, BatchNorm statistics included; eval mode."""
    torch.manual_seed(seed)
    cfg = ref.AVHubertConfig(
        encoder_layers=arch.encoder_layers, encoder_embed_dim=arch.encoder_embed_dim,
        encoder_ffn_embed_dim=arch.encoder_ffn_embed_dim, encoder_attention_heads=arch.encoder_attention_heads,
        layer_norm_first=arch.layer_norm_first, modality_fuse=arch.modality_fuse, audio_feat_dim=arch.audio_feat_dim,
        resnet_relu_type=arch.resnet_relu_type, conv_pos=arch.conv_pos, conv_pos_groups=arch.conv_pos_groups,
        sub_encoder_layers=0,
    )
    sub_cfg = copy.deepcopy(cfg)
    sub_cfg.encoder_layers = 0
    d = cfg.encoder_embed_dim
    m = ref.AVHubertModel.__new__(ref.AVHubertModel)
    torch.nn.Module.__init__(m)
    m.feature_extractor_audio = ref.SubModel(resnet=None, input_dim=cfg.audio_feat_dim, cfg=sub_cfg)
    m.feature_extractor_video = ref.SubModel(
        resnet=ref.ResEncoder(relu_type=cfg.resnet_relu_type, weights=None), input_dim=512, cfg=sub_cfg
    )
    m.modality_fuse, m.encoder_embed_dim, m.feature_grad_mult, m.audio_only = cfg.modality_fuse, d, 1.0, False
    embed = 2 * d if cfg.modality_fuse == "concat" else d
    m.layer_norm = torch.nn.LayerNorm(embed)
    m.post_extract_proj = torch.nn.Linear(embed, d) if embed != d else None
    m.dropout_input = torch.nn.Dropout(0.0)

    enc = ref.TransformerEncoder.__new__(ref.TransformerEncoder)
    torch.nn.Module.__init__(enc)
    enc.dropout, enc.embedding_dim, enc.layerdrop, enc.layer_norm_first = 0.0, d, 0.0, cfg.layer_norm_first
    conv = torch.nn.Conv1d(d, d, kernel_size=cfg.conv_pos, padding=cfg.conv_pos // 2, groups=cfg.conv_pos_groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        conv = torch.nn.utils.weight_norm(conv, name="weight", dim=2)
    enc.pos_conv = torch.nn.Sequential(conv, ref.SamePad(cfg.conv_pos), torch.nn.GELU())
    enc.layers = torch.nn.ModuleList(_TorchLayer(arch) for _ in range(cfg.encoder_layers))
    enc.layer_norm = torch.nn.LayerNorm(d)
    m.encoder = enc

    with torch.no_grad():  # random everything, so that no weight hides behind a default 0 or 1
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (0.02 if "resnet" in name else 0.1) + (1.0 if "weight_g" in name else 0.0))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return m.eval()


def reference_forward(m, video, audio, padding_mask):
    """video (B, T, H, W) normalised, audio (B, T, F) or None, padding_mask (B, T) -> (B, T, D)."""
    source = {"video": None if video is None else video.unsqueeze(1),
              "audio": None if audio is None else audio.transpose(1, 2)}
    with torch.no_grad():
        x, _ = m.extract_finetune(source, padding_mask=padding_mask)
    return x


def official_state_dict(m) -> dict:
    """The reference's weights under AV-HuBERT's checkpoint key names (torch's fused in_proj split
    into q/k/v_proj), plus the pre-training tensors a real checkpoint also holds."""
    out = {}
    for k, v in m.state_dict().items():
        if not k.startswith("encoder.layers."):
            out[k] = v.clone()
            continue
        i, rest = k[len("encoder.layers."):].split(".layer.", 1)
        p = f"encoder.layers.{i}."
        if rest.startswith("self_attn.in_proj_"):
            kind = rest.rsplit("_", 1)[1]  # weight / bias
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"{p}self_attn.{name}.{kind}"] = part.clone()
        else:
            rename = {"self_attn.out_proj": "self_attn.out_proj", "linear1": "fc1", "linear2": "fc2",
                      "norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
            mod, kind = rest.rsplit(".", 1)
            out[f"{p}{rename[mod]}.{kind}"] = v.clone()
    d = m.encoder_embed_dim
    out["mask_emb"] = torch.rand(m.feature_extractor_audio.proj.in_features)
    out["final_proj.weight"], out["final_proj.bias"] = torch.randn(16, d), torch.randn(16)
    out["label_embs_concat"] = torch.randn(40, 16)
    return out
