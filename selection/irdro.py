"""IR-DRO instance weights: the closed-form inner maximum of the paper's objective.

    max_{w in simplex}  sum_i w_i l_i  -  r * KL(w || uniform)
    =>  w_i = exp(l_i / r) / sum_j exp(l_j / r)        (a softmax of the losses at temperature r)

r -> infinity gives uniform weights (ERM); r -> 0 puts all weight on the hardest sample. Weights
are returned rescaled to mean 1 (n * softmax), so a weighted mean loss has the scale of ERM's.
Computed with log-sum-exp (the maximum subtracted first), never a raw ``exp`` of a loss.
Training's online reweighting uses the same formula on tensors (``training.weighting.irdro_weights_torch``,
tested against this one).
"""

from __future__ import annotations

import numpy as np


def irdro_weights(losses: np.ndarray, temperature: float, max_weight: float | None = None) -> np.ndarray:
    """Mean-1 IR-DRO weights of finite ``losses`` (float64); optional clip at ``max_weight`` with renormalisation."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size == 0:
        return losses.copy()
    if not np.all(np.isfinite(losses)):
        raise ValueError("IR-DRO weights need finite losses; exclude NaN/inf rows first")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = (losses - losses.max()) / temperature  # <= 0: exp cannot overflow
    unnormalised = np.exp(z)
    weights = unnormalised * (losses.size / unnormalised.sum())
    return clip_weights(weights, max_weight) if max_weight is not None else weights


def clip_weights(weights: np.ndarray, max_weight: float) -> np.ndarray:
    """Cap mean-1 weights at ``max_weight`` and give the excess to the others, keeping the mean at 1.

    Finds the scale c with mean(min(c * w, max_weight)) = 1 (water-filling), so no weight exceeds
    the cap after renormalising (a clip followed by a plain rescale could push some above it again).
    """
    if max_weight < 1:
        raise ValueError(f"max_weight must be >= 1 for mean-1 weights, got {max_weight}")
    n = weights.size
    if n == 0 or weights.max() <= max_weight:
        return weights
    if max_weight == 1:
        return np.ones_like(weights)
    desc = np.sort(weights)[::-1]
    # With the k largest capped at M, the rest scale by c_k = (n - k M) / sum(desc[k:]); the answer is
    # the smallest k whose largest uncapped weight stays under the cap after scaling.
    k = np.arange(1, n)
    tail = np.cumsum(desc[::-1])[::-1][1:]  # sum(desc[k:]) for k = 1..n-1
    c = (n - k * max_weight) / tail
    ok = (c > 0) & (desc[1:] * c <= max_weight)
    return np.minimum(weights * c[np.argmax(ok)], max_weight)
