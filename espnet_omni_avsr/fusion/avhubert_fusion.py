"""Early fusion by AV-HuBERT itself: its audio-visual mode reads the lip frames and the filterbanks."""
from typing import Tuple

import torch

from espnet_omni_avsr.encoders.avhubert_encoder import AVHubertEncoder
from espnet_omni_avsr.fusion.abs_fusion import AbsFusion, check_size
from espnet_omni_avsr.utils.masks import valid_mask
from espnet_omni_avsr.utils.trainable import is_trainable


class AVHubertFusion(AbsFusion):
    """AV-HuBERT in its audio-visual mode (`AVHubertEncoder(modality="audiovisual")`) as the fusion.

    Unlike the other fusions, which join two encoders' outputs, this one holds the encoder: AV-HuBERT
    joins the two streams after its modality front ends (its `modality_fuse`: concatenation, then a
    Linear, for the official checkpoints) and its Transformer reads the joined frames. So both
    branches stop at their front ends, with no encoder, compressor or projector of their own:
    audio_frontend `avhubert_fbank` (AV-HuBERT's stacked log filterbanks, 104 values at 25 Hz) and
    video_frontend `mouth_roi` (cropped, normalised mouth frames, crop_size ** 2 values).

    Frame alignment, per utterance: the audio keeps its first min(audio_length, video_length)
    frames and is zero from there to the video's length (cut when longer, zero-padded when shorter,
    as AV-HuBERT's loader aligns its filterbanks to the video), so the output has one frame per
    video frame, `lengths == video_lengths`, zero past them. Batch padding of either stream does not
    change an utterance's output: video frames past a row's length are zeroed (the lip trunk's 3-D
    conv reads neighbouring frames) and AV-HuBERT's Transformer masks them.

    A frozen encoder (the default: `frozen: true`, as for a checkpoint) runs without gradients,
    LoRA aside, and stays in eval mode. There is no modality dropout (AV-HuBERT's pre-training drops
    one stream at random; `AVHubertModel` does not): both streams are read in training too.

    Args:
        audio_size: the audio front end's feature size; must be the encoder's `audio_feat_dim` (104).
        video_size: the video front end's feature size, crop_size ** 2 (the encoder's `input_size`).
        **encoder_conf: AVHubertEncoder's arguments (`checkpoint`, `frozen`, `lora_r`, the
            architecture sizes, dropouts) except `input_size` and `modality`, which this fusion sets.
    """

    def __init__(self, audio_size: int, video_size: int, **encoder_conf):
        super().__init__()
        check_size("AVHubertFusion", "audio_size", audio_size)
        check_size("AVHubertFusion", "video_size", video_size)
        fixed = sorted(set(encoder_conf) & {"input_size", "modality"})
        if fixed:
            raise ValueError(f"AVHubertFusion: {fixed} are set by the fusion (the video front end's size, "
                             "audiovisual); leave them out of fusion_conf")
        self.encoder = AVHubertEncoder(input_size=video_size, modality="audiovisual", **encoder_conf)
        if audio_size != self.encoder.arch.audio_feat_dim:
            raise ValueError(f"AVHubertFusion: the audio front end gives {audio_size} values per frame, AV-HuBERT "
                             f"reads {self.encoder.arch.audio_feat_dim} (use audio_frontend: avhubert_fbank, and "
                             "no audio_encoder)")

    def output_size(self) -> int:
        return self.encoder.output_size()

    def forward(self, audio, audio_lengths, video, video_lengths) -> Tuple[torch.Tensor, torch.Tensor]:
        """audio (B, T_a, 104) filterbanks, video (B, T_v, crop ** 2) mouth frames, their lengths (B,)
        -> (B, T_v, D) fused features, video_lengths."""
        T = video.size(1)
        video_lengths = video_lengths.to(video.device).long()
        kept = torch.minimum(audio_lengths.to(video.device).long(), video_lengths)  # (B,) audio frames read
        audio = torch.nn.functional.pad(audio[:, :T], (0, 0, 0, T - min(T, audio.size(1))))  # (B, T_v, 104)
        audio = audio * valid_mask(kept, T)[:, :, None].to(audio.dtype)
        # the lip trunk's 3-D conv reads neighbouring frames: padding must be zeros (mouth_roi's already are)
        video = video * valid_mask(video_lengths, T)[:, :, None].to(video.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and is_trainable(self.encoder)):
            feats, lengths, _ = self.encoder(video, video_lengths, audio=audio)
        return feats, lengths
