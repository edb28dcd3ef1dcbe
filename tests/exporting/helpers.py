"""The export tests' independent computation: the decisions filtered with polars, the source rows read with pyarrow
(and ``json`` for JSON Lines), joined by (shard, row); and selections of made-up scores over a real input shard."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from exporting import ExportConfig, export
from hardfocus.contracts.scores import SOURCE_DIGEST
from hardfocus.errors import HardfocusError
from hardfocus.parts import Stamp
from hardfocus.readers import Shard, read_shard
from hardfocus.readers.shard import sample_digest
from hardfocus.sample_format import Columns
from selection import SelectConfig, select
from tests.selection.fake_scores import write_scores

OURS = ("sample_id", "band", "weight", "score", "loss")


def run_export(selected, output, **kw):
    """``export`` in this process (``executor`` local unless given)."""
    return export(ExportConfig(**{"selected": str(selected), "output": str(output), "executor": "local", **kw}), progress=False)


def decisions(selected) -> pl.DataFrame:
    """Every decision of a selection, with the index of its scores directory (from its part's stamp)."""
    frames = []
    for path in sorted(Path(selected, "decisions").glob("part-*.parquet")):
        stamp = Stamp.of(pq.read_metadata(path).metadata)
        frames.append(pl.read_parquet(path).with_columns(pl.lit(stamp.place["scores"]).alias("scores")))
    return pl.concat(frames).with_columns(pl.col("band").cast(pl.String))


def source_table(path: Path) -> pa.Table:
    """A shard's rows: Parquet as pyarrow reads it, JSON Lines (plain or .zst) parsed line by line."""
    if path.suffix == ".parquet":
        return pq.read_table(path)
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return pa.Table.from_pylist([json.loads(line) for line in data.decode().splitlines() if line.strip()])


def expected_rows(decided: pl.DataFrame, source: pa.Table, band: str) -> list[dict]:
    """The rows an export of ``band`` holds for one shard, in row order: the source row's columns, then ours."""
    chosen = decided if band == "all" else decided.filter(pl.col("band") == band)
    chosen = chosen.sort("row")
    rows = source.take(pa.array(chosen["row"].to_numpy())).to_pylist()
    ours = chosen.select(*OURS, *(["reason"] if band in ("excluded", "all") else [])).to_dicts()
    return [{**r, **o} for r, o in zip(rows, ours)]


def read_parts(paths: list[Path]) -> list[dict]:
    """The rows of exported parts, in part order, through the reader a user would use for each format."""
    out = []
    for p in sorted(paths):
        if p.name.endswith(".parquet"):
            out += pl.read_parquet(p).to_dicts()
        else:
            data = p.read_bytes()
            if p.name.endswith(".zst"):
                data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
            out += pl.read_ndjson(io.BytesIO(data)).to_dicts() if data else []
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every part file's bytes, by name: what two exports of the same selection must share exactly."""
    return {p.name: p.read_bytes() for p in sorted(Path(directory).glob("part-*"))}


def fake_scores(d: Path, shard: Path, n: int, fmt: str = "jsonl", compression: str | None = None,
                statuses: list[str] | None = None, seed: int = 0, columns: dict[str, list] | None = None) -> Path:
    """Scores of the ``n`` rows of ``shard`` (made up losses, in the exact contract), its manifest naming the file as
    scoring would: its URL, size and modification stamp; each row's ``source_digest`` that of its text as the readers
    read it (null where they could not), unless ``columns`` gives them."""
    rng = np.random.default_rng(seed)
    stat = shard.stat()
    info = {"url": str(shard), "size": stat.st_size, "modified": str(stat.st_mtime_ns), "format": fmt,
            "compression": compression}
    columns = dict(columns or {})
    if SOURCE_DIGEST not in columns:
        block = read_shard(Shard(url=str(shard), rel=shard.name, format=fmt, compression=compression, size=stat.st_size),
                           Columns())
        columns[SOURCE_DIGEST] = [None if status else sample_digest(value) for value, status in zip(block.values, block.status)]
    return write_scores(d, rng.gamma(4, 0.7, n).tolist(), rng.choice(["a", "b"], n).tolist(), statuses=statuses,
                        shard=shard.name, rows_per_part=max(n // 3, 1), shard_info=info, columns=columns)


def select_into(scores: list[Path], out: Path, **kw) -> Path:
    """``select`` (no report) of ``scores`` into ``out``; returns ``out``."""
    select(SelectConfig(scores=[str(s) for s in scores], output=str(out), report=False, **kw), progress=False)
    return out


def selection_of(root: Path, shard: Path, n: int, **kw) -> Path:
    """``root/selected``: a selection of made-up scores (:func:`fake_scores`, in ``root/scores``) of ``shard``'s ``n``
    rows; ``statuses`` and ``fmt`` go to the scores, the rest to ``select``."""
    statuses = kw.pop("statuses", None)
    fmt = kw.pop("fmt", "jsonl")
    return select_into([fake_scores(root / "scores", shard, n, fmt=fmt, statuses=statuses)], root / "selected", **kw)


def export_or_refusal(selected: Path, out: Path, **kw):
    """The export, or a one-line :class:`HardfocusError`: anything else (a traceback, a Rust panic) fails the test."""
    try:
        return run_export(selected, out, **kw)
    except HardfocusError as exc:
        assert "\n" not in str(exc)
        return None
    except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException is a BaseException
        pytest.fail(f"the export died with {type(exc).__module__}.{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
