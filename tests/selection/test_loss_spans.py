"""``loss_spans`` (instruction data: loss on the responses only) pass through selection unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hardfocus.contracts.scores import LOSS_SPANS_TYPE, spans_from_mask
from hardfocus.contracts.selected import SELECTED_SCHEMA, check_selected_schema, selected_schema
from scoring import HardfocusError
from selection import SelectConfig, select
from tests.selection.fake_scores import write_scores
from tests.stamps import rewrite_part


def _random_spans(n_tokens: int, rng: np.random.Generator) -> list[dict[str, int]] | None:
    """A conversation's target ranges (one or two response turns), or None (plain text) for some rows."""
    if rng.random() < 0.2:
        return None
    mask = np.zeros(n_tokens, dtype=bool)
    mask[int(rng.integers(1, n_tokens)) :] = True
    if n_tokens > 4 and rng.random() < 0.5:
        mask[int(rng.integers(1, n_tokens - 1))] = False  # a user turn between two responses
    return spans_from_mask(mask)


def _add_spans(scores: Path, seed: int = 0, parts: slice = slice(None)) -> dict[str, list | None]:
    """Rewrite the chosen part files of a fake scores/ with a ``loss_spans`` column; returns spans by sample id."""
    rng = np.random.default_rng(seed)
    by_id = {}
    for part in sorted(scores.glob("part-*.parquet"))[parts]:
        t = pq.read_table(part)
        spans = [_random_spans(len(ids), rng) for ids in t["input_ids"].to_pylist()]
        by_id.update(zip(t["sample_id"].to_pylist(), spans))
        rewrite_part(part, t.append_column(pa.field("loss_spans", LOSS_SPANS_TYPE), pa.array(spans, LOSS_SPANS_TYPE)))
    return by_id


def _losses(n: int, seed: int) -> list[float]:
    return np.round(np.random.default_rng(seed).gamma(4, 0.7, n), 3).tolist()


def test_selected_parts_carry_the_spans_of_the_kept_rows(tmp_path):
    write_scores(tmp_path / "scores", _losses(60, 1), rows_per_part=7)
    spans = _add_spans(tmp_path / "scores")
    assert any(v is None for v in spans.values()) and any(v and len(v) == 2 for v in spans.values())
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), keep=0.5), progress=False)

    parts = sorted((tmp_path / "sel").glob("part-*.parquet"))
    assert len(parts) > 1
    for part in parts:
        schema = pq.read_schema(part)
        assert schema == selected_schema(True, True) and schema.field("loss_spans").type == LOSS_SPANS_TYPE
        check_selected_schema(schema, str(part))
    got = pq.read_table(parts).to_pylist()
    assert len(got) == 30
    assert {r["sample_id"]: r["loss_spans"] for r in got} == {r["sample_id"]: spans[r["sample_id"]] for r in got}
    # and the spans stay with their own tokens
    source = pl.read_parquet(f"{tmp_path}/scores/part-*.parquet").select("sample_id", "input_ids")
    ids = dict(zip(source["sample_id"], source["input_ids"].to_list()))
    assert all(r["input_ids"] == ids[r["sample_id"]] for r in got)


def test_plain_text_scores_keep_the_old_selected_schema(tmp_path):
    write_scores(tmp_path / "scores", _losses(30, 2))
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel")), progress=False)
    for part in sorted((tmp_path / "sel").glob("part-*.parquet")):
        schema = pq.read_schema(part)
        assert "loss_spans" not in schema.names
        assert schema == SELECTED_SCHEMA.remove(SELECTED_SCHEMA.get_field_index("loss_spans"))


def test_parts_of_one_scores_dir_that_disagree_are_refused(tmp_path):
    write_scores(tmp_path / "scores", _losses(30, 3), rows_per_part=7)
    _add_spans(tmp_path / "scores", parts=slice(0, 2))  # 2 of 5 parts
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"))
    names = sorted(p.name for p in (tmp_path / "scores").glob("part-*.parquet"))
    with pytest.raises(HardfocusError, match=f"mixes part files with a loss_spans column.*{names[0]}.*without one.*{names[2]}"):
        select(cfg, progress=False)
    assert not (tmp_path / "sel").exists()


def test_a_plain_text_dir_selected_with_a_conversation_dir_gets_null_spans(tmp_path):
    write_scores(tmp_path / "chat", _losses(30, 4), ids=[f"chat#{i}" for i in range(30)], shard="chat")
    write_scores(tmp_path / "text", _losses(30, 5), ids=[f"text#{i}" for i in range(30)], shard="text")
    spans = _add_spans(tmp_path / "chat")
    cfg = SelectConfig(scores=[str(tmp_path / "chat"), str(tmp_path / "text")], output=str(tmp_path / "sel"), keep=0.6)
    select(cfg, progress=False)
    got = pq.read_table(sorted((tmp_path / "sel").glob("part-*.parquet"))).to_pylist()
    assert {r["sample_id"].split("#")[0] for r in got} == {"chat", "text"}
    for r in got:
        assert r["loss_spans"] == (spans[r["sample_id"]] if r["sample_id"].startswith("chat") else None)
