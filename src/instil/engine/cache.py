"""The base model M(0), trained once per order seed and cached by what it depends on.

Every method of a run, and every later run with the same data, split, model and base
budget, starts from the same M(0). The key hashes all of these, D(0)'s exact indices
included, so a changed setting can never pick up a stale model.

Runs share the cache at the same time: an entry is written atomically (a reader sees the
old file or the whole new one), the protocol holds a lock beside an entry while it trains
it (another run needing that M(0) waits and loads it), and an entry that cannot be read
whole is trained again, never loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instil.io import atomic_write_bytes

# Bump when base training changes in a way that changes its result.
BASE_TRAINING_VERSION = 1


def cache_root(configured: str) -> Path:
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("INSTIL_CACHE"):
        return Path(os.environ["INSTIL_CACHE"]).expanduser()
    return Path.home() / ".cache" / "instil"


def base_key(parts: dict[str, Any], base_indices: Any) -> str:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    h.update(str(BASE_TRAINING_VERSION).encode())
    h.update(torch.as_tensor(base_indices).numpy().tobytes())
    return h.hexdigest()[:20]


def load_base(path: Path, model: nn.Module, log: Callable[[str], None]
              ) -> dict[str, Any] | None:
    """Loads a cached M(0) into `model` and returns what was saved with it (its meta), or
    None when there is none. Tensors only, no code. An entry that cannot be read whole (a
    truncated file, a disk error, another format) is never half-loaded: `model` keeps its
    weights, `log` says why, and None sends the caller to train it again (its atomic save
    then replaces the entry)."""
    if not path.exists():
        return None
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return dict(state.get("meta") or {})
    except Exception as e:  # any unreadable cache entry is retrained, never trusted
        model.load_state_dict(original)
        log(f"{path}: unreadable cached base model ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); training it again")
        return None


def save_base(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state, "meta": meta}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
