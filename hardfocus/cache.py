"""hardfocus's cache directory: converted models, fingerprints, training staging, downloaded models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$HARDFOCUS_CACHE``, default ``~/.cache/hardfocus``."""
    return Path(os.environ.get("HARDFOCUS_CACHE", Path.home() / ".cache" / "hardfocus"))
