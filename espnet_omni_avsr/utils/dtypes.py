"""Weight dtypes by name, with "auto": bfloat16 where the hardware multiplies it natively, else float32.

Frozen pretrained parts (the LLM, the audio encoder) run in bf16 at about twice fp32's speed on
CPUs with bf16 matrix instructions (avx512_bf16, AMX) and on GPUs that support it; on other CPUs
torch emulates bf16 and it is several times slower than fp32. "auto" picks per machine, so one
config is fast on both kinds.
"""
import logging
from functools import lru_cache

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHOICES = sorted(DTYPES) + ["auto"]


@lru_cache(maxsize=None)
def native_bf16() -> str:
    """Why bf16 is native here ("cuda", "amx", "avx512_bf16"), or "" where it is emulated."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "cuda"
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    return ""


def resolve_dtype(name: str, owner: str = "dtype") -> torch.dtype:
    """`name` ("float32", "bfloat16", "float16" or "auto") -> torch dtype; a clear error otherwise."""
    if name == "auto":
        reason = native_bf16()
        dtype = torch.bfloat16 if reason else torch.float32
        logging.info(f"{owner}: auto -> {dtype} ({reason or 'no native bf16 on this machine'})")
        return dtype
    if name not in DTYPES:
        raise ValueError(f"{owner} must be one of {CHOICES}, got {name!r}")
    return DTYPES[name]
