"""``--resample K``: the weights folded into copies, for a trainer that reads rows without weights.

Row i is written ``floor(K w_i)`` times, plus once more with probability ``K w_i - floor(K w_i)`` (stochastic
rounding), so its expected number of copies is exactly ``K w_i`` and a uniform sample of the copies is the weighted
sample of the rows. Each draw is independent: the total of N rows, ``T = sum_i c_i``, is within ``N`` of
``K sum_i w_i`` always, and within ``sqrt(N ln(2/delta) / 2)`` of it with probability ``1 - delta`` (Hoeffding:
each draw adds a term in [0, 1) to its floor). With weights of mean 1, ``K sum_i w_i = K N``.

Each copy goes to one of the output shards, uniformly at random; a shard's copies are shuffled once all are in (a
two-phase external shuffle: no copy waits in memory for another shard's). Every draw comes from its own seeded
stream (the seed, what is drawn, and the shard or output shard), so an interrupted run draws the same again.
"""

from __future__ import annotations

import math

import numpy as np

COPIES, SHARDS, ORDER = 0, 1, 2  # what a stream draws: the copies of a shard's rows, their output shards, an order


def stream(seed: int, what: int, key: int) -> np.random.Generator:
    """The random stream of one draw: the same for the same seed, kind of draw and shard."""
    return np.random.default_rng([seed, what, key])


def copy_counts(weights: np.ndarray, k: float, rng: np.random.Generator) -> np.ndarray:
    """How many times each row is written: ``floor(K w)`` plus one with probability the remainder."""
    scaled = k * np.asarray(weights, dtype=np.float64)
    base = np.floor(scaled)
    return (base + (rng.random(scaled.shape) < scaled - base)).astype(np.int64)


def output_shards(rows: int, k: float, shard_rows: int) -> int:
    """How many shards the copies go into: about ``shard_rows`` each, for an expected ``K`` copies per row (weights
    of mean 1)."""
    return max(1, math.ceil(k * rows / shard_rows))


def spill_units(copies: np.ndarray, unit_copies: int) -> list[tuple[int, int]]:
    """Consecutive rows cut into units of about ``unit_copies`` copies: (first row, end) of each, every row in one.

    A unit holds the rows whose first copy falls in its range of copy indices, so no row's copies are split.
    """
    if not len(copies):
        return []
    before = np.cumsum(copies) - copies
    unit = before // max(unit_copies, 1)
    starts = np.flatnonzero(np.diff(unit, prepend=-1))
    ends = np.append(starts[1:], len(copies))
    return [(int(a), int(b)) for a, b in zip(starts, ends)]
