"""The hardfocus package directories that Ray ships to a job's driver and workers (``runtime_env`` ``py_modules``).

Its own module so ``hardfocus submit`` can name them without importing the stages.
"""

from __future__ import annotations

import os


def _package_dirs() -> list[str]:
    import exporting
    import hardfocus
    import pipelines
    import scoring
    import selection
    import training

    return [os.path.dirname(m.__file__) for m in (hardfocus, scoring, selection, training, exporting, pipelines)]


HARDFOCUS_PACKAGES = _package_dirs()
