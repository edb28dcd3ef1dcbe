"""Package exports imported on first use (PEP 562), so a light import stays light.

``hardfocus --help``, ``hardfocus submit`` and a config check need the config classes, not torch,
transformers and the Trainer (7 s of imports on a 2-core machine); ``import hardfocus.errors`` must not pay
for ``scoring.job``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` that imports ``exports[name]`` (a module path) when ``name`` is first read,
    and its ``__dir__``, so ``dir(package)`` and tab completion list the names not yet imported."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
