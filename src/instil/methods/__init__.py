"""Learning methods by name, one file each."""

from __future__ import annotations

from typing import Any

from instil.config import from_dict
from instil.errors import InstilError
from instil.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise InstilError(f"unknown method '{name}' (methods); known: {known}")
    return METHODS[name]


def create_method(name: str, options: dict[str, Any] | None = None) -> Method:
    cls = method_class(name)
    return cls(from_dict(cls.options_type, options or {}, f"method_options.{name}"))


# Importing the modules registers their methods.
from instil.methods import finetune, joint  # noqa: E402,F401

__all__ = ["METHODS", "Method", "create_method", "method_class", "register_method"]
