"""benchmarks/score_auc.py's arithmetic: the rank-based AUC against a count over every (noise, clean) pair."""

from __future__ import annotations

import numpy as np
import polars as pl


def load_score_auc():
    from benchmarks import score_auc

    return score_auc


def _pairwise_auc(noise: np.ndarray, clean: np.ndarray) -> float:
    diff = noise[:, None] - clean[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auc_matches_the_pairwise_count_with_ties():
    m = load_score_auc()
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 6, 17).astype(float)  # few values: many ties
    clean = rng.integers(0, 5, 40).astype(float)
    assert abs(m.auc(noise, clean) - _pairwise_auc(noise, clean)) < 1e-12
    assert m.auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0 and m.auc(np.array([1.0]), np.array([2.0])) == 0.0


def test_auc_table_per_noise_kind_and_score():
    m = load_score_auc()
    rng = np.random.default_rng(7)
    noise = ["swapped"] * 10 + ["shuffled"] * 8 + [None] * 30
    rows = pl.DataFrame({"noise": noise, "loss": rng.normal(size=48), "ifd": rng.normal(size=48)})
    rows = rows.with_columns(pl.when(pl.col("noise") == "shuffled").then(pl.col("loss") + 2).otherwise("loss").alias("loss"))
    table = {(r["noise"], r["score"]): r for r in m.auc_table(rows)}
    assert set(table) == {(k, s) for k in ("swapped", "shuffled") for s in ("loss", "ifd")}
    clean = rows.filter(pl.col("noise").is_null())
    for (kind, score), r in table.items():
        x = rows.filter(pl.col("noise") == kind)[score].to_numpy()
        assert abs(r["auc"] - _pairwise_auc(x, clean[score].to_numpy())) < 1e-12
        assert (r["n_noise"], r["n_clean"]) == (len(x), 30) and 0 < r["se"] < 0.5
