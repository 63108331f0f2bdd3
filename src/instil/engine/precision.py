"""Numeric precision of training and evaluation: fp32, or mixed precision in bf16 or fp16.

Mixed precision runs the forward passes (and so the losses) under autocast; weights, the
optimiser and the EMA stay in fp32. fp16 needs a gradient scaler against underflow, bf16
does not (it has fp32's exponent range). The CPU default stays fp32: bf16 is offered, and
`instil bench speed` measures whether it pays on a given machine.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from instil.errors import InstilError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, device: torch.device) -> None:
    if name not in PRECISIONS:
        raise InstilError(f"precision={name!r}: choose one of {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise InstilError("precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")


def autocast(device: torch.device, name: str) -> ContextManager:
    dtype = PRECISIONS[name]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, name: str) -> torch.amp.GradScaler:
    """A scaler that is a no-op unless fp16 needs it."""
    return torch.amp.GradScaler(device.type, enabled=name == "fp16")
