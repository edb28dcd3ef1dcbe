"""Selection by IFD, bits per byte and excess loss against an independent numpy/polars recomputation; the
exclusions counted; mismatched references refused; scores/ written before these columns still select."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from scoring import HardfocusError
from selection import SelectConfig, irdro_weights, select
from tests.selection.fake_scores import write_scores
from tests.selection.test_select import _expected_bands

N = 120
IDS = [f"shard.jsonl#{i}" for i in range(N)]


def _selected(out) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/part-*.parquet").sort("sample_id")


def _check_selection(out, result, values: dict[str, float], drop_top: float, keep: float, temperature: float) -> None:
    """The selected rows, their ranks and weights are what numpy gets from ``values`` (sample id -> score)."""
    ids = sorted(values)
    kept, _ = _expected_bands([values[i] for i in ids], ids, drop_top, keep)
    got = _selected(out)
    assert set(got["sample_id"]) == set(kept)
    np.testing.assert_allclose(got["loss_rank"].to_numpy(), [kept[i] for i in got["sample_id"]], atol=1e-6)
    want = irdro_weights(np.array([values[i] for i in got["sample_id"]], dtype=np.float32), temperature)
    np.testing.assert_allclose(got["weight"].to_numpy(), want, rtol=1e-4)
    assert result.summary.eligible == len(values)


def _ifd_columns(ifd: list[float | None], n_tok: list[int] | None = None) -> dict[str, list]:
    return {"ifd": ifd, "nll_sum_unconditioned": [1.0] * len(ifd), "n_tokens_unconditioned": n_tok or [5] * len(ifd)}


def test_ifd_ranks_what_is_below_one_and_counts_what_is_not(tmp_path):
    rng = np.random.default_rng(5)
    losses = rng.gamma(4, 0.7, N).round(3).tolist()
    ifd = rng.uniform(0.4, 1.3, N).round(3).tolist()
    ifd[7] = None  # an ok row without a value never lands in a band
    ifd[8] = 1.0  # exactly 1: dropped
    write_scores(tmp_path / "scores", losses, columns=_ifd_columns(ifd))
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), score="ifd", keep=0.4,
                       temperature=0.2)
    result = select(cfg, progress=False)
    below = {i: np.float32(v) for i, v in zip(IDS, ifd) if v is not None and v < 1}
    _check_selection(tmp_path / "sel", result, below, 0.1, 0.4, 0.2)
    at_or_above = sum(v is not None and v >= 1 for v in ifd)
    assert result.summary.excluded == {"ifd >= 1 (the prompt does not help)": at_or_above, "ifd not finite": 1}
    assert result.summary.score == "ifd" and result.summary.parameters["score"] == "ifd"
    assert result.summary.thresholds["all"].kept_max < 1 and result.summary.score_quantiles["eligible"]["q1"] < 1
    page = (tmp_path / "sel" / "report.html").read_text()
    assert 'alt="score histogram"' in page and 'alt="score vs loss"' in page

    kept_all = select(cfg.model_copy(update={"output": str(tmp_path / "sel2"), "max_ifd": float("inf")}), progress=False)
    assert kept_all.summary.excluded == {"ifd not finite": 1} and kept_all.summary.eligible == N - 1


def test_bits_per_byte_is_nll_sum_over_bytes_in_bits(tmp_path):
    rng = np.random.default_rng(6)
    losses = rng.gamma(4, 0.7, N).round(3).tolist()
    n_bytes = rng.integers(5, 400, N).tolist()
    n_bytes[3] = 0  # nothing scored: not finite, excluded
    write_scores(tmp_path / "scores", losses, columns={"n_bytes": n_bytes})
    scores = pl.read_parquet(tmp_path / "scores" / "part-*.parquet")
    bpb = {r["sample_id"]: np.float32(r["nll_sum"] / (r["n_bytes"] * math.log(2)))
           for r in scores.iter_rows(named=True) if r["n_bytes"]}
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), score="bpb", temperature=0.5)
    result = select(cfg, progress=False)
    _check_selection(tmp_path / "sel", result, bpb, 0.1, 0.5, 0.5)
    assert result.summary.excluded == {"bpb not finite": 1} and result.summary.score_units == "bits per byte"


def test_excess_loss_joins_the_reference_on_sample_id_and_counts_what_is_missing(tmp_path):
    rng = np.random.default_rng(7)
    losses = rng.gamma(4, 0.7, N).round(3).tolist()
    ref_losses = (np.asarray(losses) * rng.uniform(0.5, 1.1, N)).round(3).tolist()
    ref_status = ["ok"] * N
    ref_status[10], ref_status[11], ref_status[12] = "error: bad json", "empty", "error: other"
    ref_ids = list(IDS)
    ref_ids[20] = "elsewhere#20"  # on one side only
    n_tok = [int(x) for x in rng.integers(3, 12, N)]
    ref_n_tok = list(n_tok)
    ref_n_tok[30] += 1  # the reference scored other tokens for this row
    write_scores(tmp_path / "scores", losses, columns={"n_tokens": n_tok, "nll_sum": [a * b for a, b in zip(losses, n_tok)]})
    write_scores(tmp_path / "ref", ref_losses, statuses=ref_status, ids=ref_ids,
                 columns={"n_tokens": [t if s == "ok" else 0 for t, s in zip(ref_n_tok, ref_status)]})
    # the expected scores, from a polars join of the two directories' own rows
    ours = pl.read_parquet(tmp_path / "scores" / "part-*.parquet").filter(pl.col("status") == "ok")
    theirs = pl.read_parquet(tmp_path / "ref" / "part-*.parquet").select("sample_id", "status", "loss", "n_tokens")
    joined = ours.join(theirs, on="sample_id", suffix="_ref").filter(
        (pl.col("status_ref") == "ok") & (pl.col("n_tokens") == pl.col("n_tokens_ref")))
    excess = dict(zip(joined["sample_id"], (joined["loss"] - joined["loss_ref"]).to_numpy()))
    assert len(excess) == N - 5
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), score="excess",
                       reference=[str(tmp_path / "ref")], temperature=0.3)
    result = select(cfg, progress=False)
    _check_selection(tmp_path / "sel", result, excess, 0.1, 0.5, 0.3)
    assert result.summary.excluded == {
        "reference status: empty": 1, "reference status: error": 2, "reference: no row with this sample_id": 1,
        "reference scored other tokens": 1,
    }
    assert result.summary.score_units == "nats per token" and result.summary.reference[0]["dir"] == str(tmp_path / "ref")


def test_excess_across_tokenizers_is_in_bits_per_byte(tmp_path):
    rng = np.random.default_rng(8)
    losses, ref_losses = rng.gamma(4, 0.7, N).round(3).tolist(), rng.gamma(4, 0.6, N).round(3).tolist()
    n_bytes = rng.integers(20, 300, N).tolist()
    write_scores(tmp_path / "scores", losses, columns={"n_bytes": n_bytes})
    write_scores(tmp_path / "ref", ref_losses, tokenizer_fingerprint="tok-b", columns={"n_bytes": n_bytes})
    a = pl.read_parquet(tmp_path / "scores" / "part-*.parquet")
    b = pl.read_parquet(tmp_path / "ref" / "part-*.parquet")
    excess = {i: np.float32(x / (nb * math.log(2)) - y / (nb * math.log(2)))
              for i, x, y, nb in zip(a["sample_id"], a["nll_sum"], b["nll_sum"], a["n_bytes"])}
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), score="excess",
                       reference=[str(tmp_path / "ref")])
    result = select(cfg, progress=False)
    _check_selection(tmp_path / "sel", result, excess, 0.1, 0.5, 1.0)
    assert result.summary.score_units == "bits per byte" and result.summary.excluded == {}

    write_scores(tmp_path / "old-ref", ref_losses, tokenizer_fingerprint="tok-b")  # no n_bytes
    with pytest.raises(HardfocusError, match="no 'n_bytes' column"):
        select(cfg.model_copy(update={"reference": [str(tmp_path / "old-ref")], "output": str(tmp_path / "s2")}),
               progress=False)


def test_mismatched_or_missing_references_are_refused(tmp_path):
    losses = np.linspace(1, 3, N).tolist()
    write_scores(tmp_path / "scores", losses)
    write_scores(tmp_path / "short", losses[:-3])
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), score="excess",
                       reference=[str(tmp_path / "short")])
    with pytest.raises(HardfocusError, match=r"not of the same inputs.*shard.jsonl: 120 vs 117"):
        select(cfg, progress=False)
    with pytest.raises(ValueError, match="--reference"):
        SelectConfig(scores=["s"], output="o", score="excess")
    with pytest.raises(ValueError, match="only used by score excess"):
        SelectConfig(scores=["s"], output="o", reference=["r"])
    with pytest.raises(HardfocusError, match="score it with --ifd"):
        select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "s3"), score="ifd"), progress=False)
    assert not (tmp_path / "sel").exists()


def test_scores_written_before_the_new_columns_select_as_before(tmp_path):
    rng = np.random.default_rng(9)
    losses = np.round(rng.gamma(4, 0.7, N), 2).tolist()
    write_scores(tmp_path / "scores", losses)  # the schema of before: no n_bytes, no IFD
    result = select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel")), progress=False)
    _check_selection(tmp_path / "sel", result, dict(zip(IDS, np.float32(losses))), 0.1, 0.5, 1.0)
    assert result.summary.score == "loss" and result.summary.score_quantiles is None
    assert not list((tmp_path / "sel").glob("score_*"))
    with pytest.raises(HardfocusError, match="no 'n_bytes' column"):
        select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "s2"), score="bpb"), progress=False)
