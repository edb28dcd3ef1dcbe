"""Load the resolved model for scoring: the device and the dtype it runs in (the spec is resolved by
:mod:`hardfocus.models`)."""

from __future__ import annotations

import torch

from hardfocus.errors import HardfocusError
from hardfocus.models import cpu_has_bf16

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HardfocusError(f"device '{device}' requested but no CUDA GPU is visible")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` = bf16 where the GPU or CPU supports it natively, else fp32."""
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def load_model(path: str, dtype: torch.dtype, device: torch.device):
    """Load a causal LM for inference (eval mode, no grad bookkeeping needed by the caller)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per actor per load is noise in a job's log
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()
