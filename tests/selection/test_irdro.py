"""IR-DRO weights checked independently: a numerical optimiser, limits, invariances, extremes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from selection.irdro import clip_weights, irdro_weights

finite_losses = arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 20, allow_nan=False))


def _objective(w, losses, r):
    n = len(losses)
    w = np.clip(w, 1e-300, None)
    return float(w @ losses - r * np.sum(w * np.log(w * n)))


@pytest.mark.parametrize("seed", range(8))
def test_closed_form_maximises_the_dro_objective(seed):
    """Against SLSQP over the simplex: sum_i w_i l_i - r KL(w || uniform)."""
    rng = np.random.default_rng(seed)
    n, r = int(rng.integers(2, 8)), float(rng.uniform(0.2, 3.0))
    losses = rng.uniform(0, 6, n)
    closed = irdro_weights(losses, r) / n  # back on the simplex
    found = minimize(
        lambda w: -_objective(w, losses, r), np.full(n, 1 / n), method="SLSQP",
        bounds=[(1e-12, 1)] * n, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    assert found.success
    np.testing.assert_allclose(closed, found.x, atol=2e-4)
    assert _objective(closed, losses, r) >= _objective(found.x, losses, r) - 1e-9


@settings(max_examples=200, deadline=None)
@given(finite_losses, st.floats(0.05, 50))
def test_mean_one_monotone_and_shift_invariant(losses, r):
    w = irdro_weights(losses, r)
    assert w.mean() == pytest.approx(1.0, rel=1e-9)
    order = np.argsort(losses, kind="stable")
    assert np.all(np.diff(w[order]) >= -1e-12)  # higher loss, no lower weight
    np.testing.assert_allclose(irdro_weights(losses + 123.4, r), w, rtol=1e-9, atol=1e-12)


def test_large_temperature_is_erm_and_small_puts_weight_on_the_hardest():
    losses = np.array([1.0, 2.0, 3.5, 0.2])
    np.testing.assert_allclose(irdro_weights(losses, 1e9), np.ones(4), atol=1e-8)
    w = irdro_weights(losses, 1e-3)
    assert w[2] == pytest.approx(4.0) and w.sum() == pytest.approx(4.0)


def test_extremes_stay_finite():
    w = irdro_weights(np.array([1e4, 1e4 - 1, 0.0, 5e3]), 1e-3)
    assert np.all(np.isfinite(w)) and w.mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="finite"):
        irdro_weights(np.array([1.0, np.nan]), 1.0)


@settings(max_examples=200, deadline=None)
@given(finite_losses, st.floats(0.05, 5), st.floats(1.0, 6.0))
def test_clipping_caps_and_keeps_mean_one(losses, r, cap):
    w = irdro_weights(losses, r, max_weight=cap)
    assert w.max() <= cap + 1e-9
    assert w.mean() == pytest.approx(1.0, rel=1e-9)
    unclipped = irdro_weights(losses, r)
    if unclipped.max() <= cap:
        np.testing.assert_allclose(w, unclipped)
    else:  # the uncapped ones keep their ratios: one common scale factor
        free = w < cap - 1e-9
        if free.sum() >= 2:
            ratio = w[free] / unclipped[free]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)


def test_clip_weights_exact_case():
    np.testing.assert_allclose(clip_weights(np.array([3.0, 0.5, 0.5]), 2.0), [2.0, 0.5, 0.5])
    np.testing.assert_allclose(clip_weights(np.array([2.5, 1.0, 0.5]), 1.5), [1.5, 1.0, 0.5])
