"""Choosing the device and the seeds a run derives from its config."""

from __future__ import annotations

import hashlib
import os
import platform
from typing import Any

import torch

from instil.errors import InstilError


def describe_device(device: torch.device) -> str:
    """What ran the numbers, for reading timings: the GPU's name, or the CPU and the threads
    torch uses (OMP_NUM_THREADS)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{platform.processor() or platform.machine()} CPU, {threads} " + \
        ("thread" if threads == 1 else "threads")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The config's device; under torchrun, a CUDA device is the rank's own (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    elif name.startswith("cuda:") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InstilError(f"device '{name}': under torchrun each process takes its own GPU; "
                          "use device=cuda (or auto)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InstilError(f"device '{name}': not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InstilError(f"device '{name}': CUDA is not available here; use --set device=cpu")
    return device


def rng_state() -> dict[str, Any]:
    """The global random state: torch's CPU generator, and the current CUDA device's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's hash() differs between processes)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
