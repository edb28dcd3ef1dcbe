"""``--resample``'s copy counts, on the function itself: each row ``floor(K w)`` or one more copy, ``K w`` on average,
the total within its stated bound of ``K sum(w)``; the cut into phase-one units. Every draw is seeded, so these
tests give the same answer on every run: the tolerances are bounds that a correct implementation violates with
probability under 1e-9 for these seeds' draws, not a chance to flake."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporting.copies import COPIES, copy_counts, output_shards, spill_units, stream


def _weights(n: int, seed: int) -> np.ndarray:
    """IR-DRO-like weights of mean 1: a softmax of gamma losses, rescaled, as float32 as selection writes them."""
    losses = np.random.default_rng(seed).gamma(4, 0.7, n)
    w = np.exp(losses - losses.max())
    return (w / w.mean()).astype(np.float32)


@given(st.lists(st.floats(0, 20, width=32), min_size=1, max_size=200), st.floats(0.01, 8), st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_each_row_gets_the_floor_or_one_more(weights, k, seed):
    w = np.asarray(weights, dtype=np.float32)
    c = copy_counts(w, k, stream(seed, COPIES, 0))
    scaled = k * w.astype(np.float64)
    assert ((c == np.floor(scaled)) | (c == np.floor(scaled) + 1)).all()
    assert (c[scaled == np.floor(scaled)] == scaled[scaled == np.floor(scaled)]).all()  # a whole K w: exactly that


def test_mean_copies_of_each_row_over_seeds_is_k_times_its_weight():
    """Mean over S seeds of row i's copies = floor(K w_i) + (mean of S Bernoulli(f_i)). Hoeffding and a union bound
    over the N rows: P(any |mean - K w_i| >= t) <= 2 N exp(-2 S t^2) = 1e-12 for the t below."""
    n, k, seeds = 64, 2.5, 20_000
    w = _weights(n, seed=3)
    counts = np.stack([copy_counts(w, k, stream(s, COPIES, 7)) for s in range(seeds)])
    t = math.sqrt(math.log(2 * n / 1e-12) / (2 * seeds))  # 0.029
    deviation = np.abs(counts.mean(axis=0) - k * w.astype(np.float64))
    assert deviation.max() < t, (deviation.max(), t)
    assert np.unique(counts).size > 2  # weights of several sizes: more than one copy count in play


@pytest.mark.parametrize("k", [0.3, 1.0, 3.7])
def test_the_total_is_k_n_within_the_bound(k):
    """T - K sum(w) is a sum of N independent terms in (-1, 1) of mean 0, each spanning an interval of length 1:
    |T - K sum(w)| < N always, and < sqrt(N ln(2/delta) / 2) but with probability delta (Hoeffding), here 1e-9 per
    draw. With weights of mean 1, K sum(w) = K N (to float32 rounding of the weights)."""
    n = 10_000
    w = _weights(n, seed=5)
    bound = math.sqrt(n * math.log(2 / 1e-9) / 2)  # 322 copies for N = 10,000: 3.2% of K N at K = 1
    assert abs(float(w.astype(np.float64).sum()) - n) < 1e-2
    for seed in range(20):
        total = int(copy_counts(w, k, stream(seed, COPIES, 0)).sum())
        assert abs(total - k * float(w.astype(np.float64).sum())) < bound
        assert abs(total - k * n) < bound + 1


def test_the_streams_are_the_same_for_the_same_seed_and_differ_otherwise():
    w = _weights(500, seed=1)
    a = copy_counts(w, 1.7, stream(3, COPIES, 4))
    assert (a == copy_counts(w, 1.7, stream(3, COPIES, 4))).all()
    assert (a != copy_counts(w, 1.7, stream(4, COPIES, 4))).any()
    assert (a != copy_counts(w, 1.7, stream(3, COPIES, 5))).any()  # another shard draws its own


@given(st.lists(st.integers(0, 9), max_size=300), st.integers(1, 40))
@settings(max_examples=200, deadline=None)
def test_spill_units_cut_rows_into_consecutive_units_of_whole_rows(copies, size):
    c = np.asarray(copies, dtype=np.int64)
    units = spill_units(c, size)
    assert [lo for lo, _ in units[1:]] == [hi for _, hi in units[:-1]]  # consecutive
    assert (units[0][0], units[-1][1]) == (0, len(c)) if len(c) else units == []
    for lo, hi in units:
        assert hi > lo
        assert c[lo:hi].sum() <= size + c[hi - 1]  # a unit ends at the row whose copies pass its size


def test_output_shards_hold_about_shard_rows_each():
    assert output_shards(1000, 2.0, 100) == 20
    assert output_shards(10, 0.5, 1000) == 1
    assert output_shards(1001, 1.0, 100) == 11
