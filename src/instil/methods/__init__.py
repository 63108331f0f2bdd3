"""Learning methods by name, one file each; variants are a method with some options fixed."""

from __future__ import annotations

from typing import Any

from instil.config import from_dict
from instil.errors import InstilError
from instil.methods.base import Method

# name -> (class, options fixed by the name); a plain method fixes none.
METHODS: dict[str, tuple[type[Method], dict[str, Any]]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = (cls, {})
    return cls


def register_variant(name: str, cls: type[Method], **fixed: Any) -> None:
    """A named preset of a method, e.g. an ablation: `dbd-nofl` is dbd with fl=False."""
    METHODS[name] = (cls, fixed)


def describe(name: str) -> str:
    cls, fixed = METHODS[name]
    if not fixed:
        return cls.description
    return f"{cls.name} with " + ", ".join(f"{k}={v}" for k, v in fixed.items())


def options_for(name: str, method_options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The options of `name` from a config's method_options: a variant takes its parent's
    (method_options.dbd for dbd-nofl), except the switches it fixes, then its own."""
    own = method_options.get(name, {})
    if name not in METHODS:
        return own
    cls, fixed = METHODS[name]
    if cls.name == name:
        return own
    inherited = {k: v for k, v in method_options.get(cls.name, {}).items() if k not in fixed}
    return {**inherited, **own}


# The config keys that hold one entry per method.
PER_METHOD_KEYS = ("method_options", "method_budgets")


def settings_for(name: str, method_options: dict[str, dict[str, Any]],
                 method_budgets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Everything a config sets for method `name` alone, by PER_METHOD_KEYS: its options
    (inherited ones included) and its budget changes; what resume and merge compare."""
    return {"method_options": options_for(name, method_options),
            "method_budgets": method_budgets.get(name) or {}}


def create_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """Builds method `name`; `options` (method_options.<name>) may not contradict its preset."""
    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise InstilError(f"unknown method '{name}' (methods); known: {known}")
    cls, fixed = METHODS[name]
    options = dict(options or {})
    clash = [k for k in fixed if k in options and options[k] != fixed[k]]
    if clash:
        raise InstilError(f"method_options.{name}.{clash[0]}: '{name}' fixes it to "
                          f"{fixed[clash[0]]}; use method '{cls.name}' to choose it")
    method = cls(from_dict(cls.options_type, {**options, **fixed}, f"method_options.{name}"))
    method.label = name
    return method


def _import_all() -> None:
    """Importing every module of this package registers its methods (one method per file)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_all()

__all__ = ["METHODS", "Method", "create_method", "describe", "options_for", "register_method",
           "register_variant"]
