"""Building blocks shared by the tests that select: ``select`` in this process, and made-up losses."""

from __future__ import annotations

import numpy as np

from selection import SelectConfig, select


def select_scores(scores, output, **kw):
    """``select`` of the score directories ``scores`` into ``output``, in this process (with its report)."""
    return select(SelectConfig(scores=[str(s) for s in scores], output=str(output), **kw), progress=False)


def select_without_report(scores, output, **kw):
    """``select`` of the score directories ``scores`` into ``output``, in this process, without report.html."""
    return select(SelectConfig(scores=[str(s) for s in scores], output=str(output), report=False, **kw), progress=False)


def random_losses(n: int, seed: int) -> list[float]:
    """``n`` losses drawn from a gamma distribution (mean 2.8), as a model's losses spread."""
    return np.random.default_rng(seed).gamma(4, 0.7, n).tolist()
