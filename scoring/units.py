"""Units of work: row ranges of shards, each tokenised by a task and scored into one part file.

A unit's part file is written atomically and is its own completion marker, so a rerun after a
crash scores exactly the units whose part is missing, and no row is written twice.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa

from scoring.config import ScoreConfig
from scoring.errors import HardfocusError
from scoring.model import load_tokenizer, resolve_model
from scoring.output import ScoresDir
from scoring.schema import (
    NON_FINITE_LOSS,
    Status,
    is_input_error,
    loss_spans_array,
    mask_from_spans,
    scores_table,
)
from scoring.scorer import Scorer
from scoring.sources import Columns, Shard, read_rows
from scoring.tokenize import tokenize_block


@dataclass(frozen=True)
class Unit:
    """Rows ``[start, stop)`` of one shard, scored into ``part``."""

    shard: Shard
    start: int
    stop: int

    @property
    def part(self) -> str:
        digest = hashlib.sha1(self.shard.rel.encode()).hexdigest()[:12]
        return f"part-{digest}-{self.start:010d}-{self.stop:010d}.parquet"

    def to_row(self) -> dict:
        return {"unit": asdict(self)}

    @staticmethod
    def from_row(row: dict) -> Unit:
        d = row["unit"]
        return Unit(Shard(**d["shard"]), d["start"], d["stop"])


def plan_units(shard_rows: list[tuple[Shard, int]], rows_per_unit: int) -> list[Unit]:
    return [
        Unit(shard, start, min(start + rows_per_unit, rows))
        for shard, rows in shard_rows
        for start in range(0, rows, rows_per_unit)
    ]


def columns_of(cfg: ScoreConfig) -> Columns:
    return cfg.columns(cfg.id_column, cfg.group_column)


@lru_cache(maxsize=4)
def _checkpoint_path(spec: str, fingerprint: str) -> str:
    """Resolve the model on this node and make sure it is the very model the driver planned with."""
    resolved = resolve_model(spec)
    if resolved.fingerprint != fingerprint:
        raise RuntimeError(
            f"model '{spec}' resolves to different weights on this node ({resolved.fingerprint} != {fingerprint})"
        )
    return resolved.path


def read_and_tokenize(unit: Unit, cfg: ScoreConfig, model_fingerprint: str) -> pa.Table:
    """Read a unit's rows and tokenise them: one row per input row, with status where unscoreable."""
    block = read_rows(unit.shard, unit.start, unit.stop, columns_of(cfg))
    if len(block) != unit.stop - unit.start:
        raise RuntimeError(f"{unit.shard.url} rows {unit.start}..{unit.stop}: read {len(block)} rows; did the shard change?")
    tokenizer = load_tokenizer(_checkpoint_path(cfg.model, model_fingerprint))
    tok = tokenize_block(tokenizer, block, cfg.format, cfg.max_tokens, cfg.add_special_tokens, cfg.chat_template)
    rows = np.arange(unit.start, unit.stop, dtype=np.int64)
    if cfg.on_error == "stop":
        for row, status in zip(rows, tok.status):
            if status is not None and is_input_error(status):
                raise HardfocusError(
                    f"{unit.shard.url} row {row}: {status}; fix the input, or pass --on-error record to score the "
                    "other rows and record this one's status"
                )
    sample_ids = [i if i is not None else f"{unit.shard.rel}#{r}" for i, r in zip(block.ids, rows)]
    return pa.table(
        {
            "sample_id": pa.array(sample_ids, pa.string()),
            "shard": pa.array([unit.shard.rel] * len(rows), pa.string()),
            "row": pa.array(rows, pa.int64()),
            "group": pa.array(block.groups, pa.string()),
            "truncated": pa.array(tok.truncated, pa.bool_()),
            "status": pa.array(tok.status, pa.string()),
            "input_ids": pa.array(tok.input_ids, pa.list_(pa.int32())),
            **({} if tok.targets is None else {"loss_spans": loss_spans_array(tok.targets)}),
        }
    )


def table_to_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


class UnitScorer:
    """Scores tokenised units and writes each as one part file (a Ray actor, or a plain object)."""

    def __init__(self, cfg: ScoreConfig, model_fingerprint: str, torch_threads: int | None, compiled: bool = False):
        self.cfg = cfg
        self.out = ScoresDir(cfg.output)
        self.scorer = Scorer(
            _checkpoint_path(cfg.model, model_fingerprint),
            dtype=cfg.dtype,
            device=cfg.device,
            token_budget=cfg.token_budget,
            chunk_tokens=cfg.chunk_tokens,
            torch_threads=torch_threads,
            compiled=compiled,
        )

    def score_unit(self, unit: Unit, tokenized: pa.Table) -> dict:
        """Score, write the part atomically, and return counts for progress."""
        started = time.perf_counter()
        status = tokenized.column("status").to_pylist()
        ids = tokenized.column("input_ids").to_pylist()
        spans = tokenized.column("loss_spans").to_pylist() if "loss_spans" in tokenized.column_names else None
        todo = [i for i, s in enumerate(status) if s is None]
        nll_sum = np.full(len(status), np.nan)
        n_tokens = np.zeros(len(status), dtype=np.int64)
        if todo:
            masks = None if spans is None else [mask_from_spans(spans[i], len(ids[i])) for i in todo]
            sums, counts = self.scorer.score([np.asarray(ids[i], dtype=np.int32) for i in todo], masks)
            nll_sum[todo], n_tokens[todo] = sums, counts
        for i in todo:
            if not np.isfinite(nll_sum[i]):
                if self.cfg.on_error == "stop":
                    raise HardfocusError(
                        f"{unit.shard.url} row {int(tokenized.column('row')[i].as_py())}: the model's loss is not finite "
                        f"({nll_sum[i]}); check the model and the dtype, or pass --on-error record"
                    )
                status[i] = NON_FINITE_LOSS
        ok = np.array([s is None for s in status])
        loss = np.where(ok, nll_sum / np.maximum(n_tokens, 1), np.nan)
        table = scores_table(
            {
                "sample_id": tokenized.column("sample_id"),
                "shard": tokenized.column("shard"),
                "row": tokenized.column("row"),
                "group": tokenized.column("group"),
                "n_tokens": n_tokens.astype(np.int32),
                "loss": pa.array(loss.astype(np.float32), mask=~ok),
                "nll_sum": pa.array(nll_sum, mask=~ok),
                "truncated": tokenized.column("truncated"),
                "status": [Status.OK.value if s is None else s for s in status],
                **({"input_ids": tokenized.column("input_ids")} if self.cfg.keep_input_ids else {}),
                **({} if spans is None else {"loss_spans": tokenized.column("loss_spans")}),
            },
            with_input_ids=self.cfg.keep_input_ids,
            with_loss_spans=spans is not None,
        )
        self.out.write_part(unit.part, table)
        return {
            "part": unit.part,
            "rows": len(status),
            "scored": len(todo),
            "tokens": int(n_tokens.sum()),
            "seconds": time.perf_counter() - started,
        }

    def __call__(self, row: dict) -> dict:
        """Ray Data entry point: one tokenised unit in, one summary row out.

        A :class:`HardfocusError` (``--on-error stop``) travels as the row's ``error``: Ray keeps only
        the text of an exception's cause across processes, and the driver should raise it as itself.
        """
        if row.get("error"):
            return {**_EMPTY_SUMMARY, "error": row["error"]}
        try:
            return {**self.score_unit(Unit.from_row(row), table_from_bytes(row["tokens"])), "error": None}
        except HardfocusError as exc:
            return {**_EMPTY_SUMMARY, "error": str(exc)}


_EMPTY_SUMMARY = {"part": "", "rows": 0, "scored": 0, "tokens": 0, "seconds": 0.0}


def tokenize_row(row: dict, cfg: ScoreConfig, model_fingerprint: str) -> dict:
    """Ray Data entry point: a unit in, the unit plus its tokenised rows (Arrow IPC bytes) out."""
    try:
        tokens = table_to_bytes(read_and_tokenize(Unit.from_row(row), cfg, model_fingerprint))
    except HardfocusError as exc:
        return {"unit": row["unit"], "tokens": b"", "error": str(exc)}
    return {"unit": row["unit"], "tokens": tokens, "error": None}
