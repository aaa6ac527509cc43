"""Masks of valid frames from per-utterance lengths."""
import torch


def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool: frame t of row b is one of its first lengths[b]."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]
