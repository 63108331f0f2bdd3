"""instil: instance-incremental learning for deployed image classifiers.

    import instil
    promotion = instil.promote(model, new_data, holdout=holdout)   # one gated phase
    learner = instil.Learner(model, method="dbd")                 # a stream of parts
    report = learner.learn(part)

The public names (docs/api.md) are imported on first use, so that `import instil` and the
command line stay light: torch is loaded only when a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from instil.errors import DataError, InstilError, MethodError, ModelError

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "promote": "instil.api",
    "Promotion": "instil.api",
    "Learner": "instil.learner",
    "PhaseReport": "instil.learner",
    "Augment": "instil.promotion.phase",
    "ImageFormat": "instil.promotion.folders",
}

__all__ = ["Augment", "DataError", "ImageFormat", "InstilError", "Learner", "MethodError",
           "ModelError", "PhaseReport", "Promotion", "__version__", "promote"]

if TYPE_CHECKING:
    from instil.api import Promotion, promote
    from instil.learner import Learner, PhaseReport
    from instil.promotion.folders import ImageFormat
    from instil.promotion.phase import Augment


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'instil' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
