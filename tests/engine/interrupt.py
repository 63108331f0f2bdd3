"""Interrupting a run the way a crash would: right after its n-th saved resume state."""

from __future__ import annotations

import pytest

from instil.cli import main
from instil.engine import protocol


class Interrupted(Exception):
    pass


def run_cut_at_save(monkeypatch: pytest.MonkeyPatch, argv: list[str], nth: int) -> None:
    """Runs `instil argv` and stops it just after its `nth` save_state, which is then on
    disk as a killed run leaves it; later runs save normally again."""
    saves, real_save = [], protocol.save_state

    def save_then_stop(*a, **k) -> None:
        real_save(*a, **k)
        saves.append(1)
        if len(saves) == nth:
            raise Interrupted

    monkeypatch.setattr(protocol, "save_state", save_then_stop)
    try:
        with pytest.raises(Interrupted):
            main(argv)
    finally:
        monkeypatch.setattr(protocol, "save_state", real_save)
