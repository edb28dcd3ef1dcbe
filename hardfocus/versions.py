"""The library versions a stage records in its manifest."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

_LIBRARIES = ("hardfocus", "torch", "transformers", "tokenizers", "ray", "pyarrow", "polars")


def library_versions(names: tuple[str, ...] = _LIBRARIES) -> dict[str, str]:
    """Python's version and each library's (``not installed`` where absent)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
