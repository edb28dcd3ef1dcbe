"""Work: one task streams one shard, reading it once, and cuts it into units of ``rows_per_unit`` rows.

A unit ``[k*n, min((k+1)*n, rows))`` of a shard is scored into one part file, written whole or not at
all, which is its own completion marker: a rerun after a crash scores exactly the units whose part is
missing (their rows still stream past, unparsed, because a compressed stream cannot seek), and no row
is written twice. A shard whose every part is written gets ``done/<digest>.json`` with its row count
and the counts of its rows, so the manifest never has to reread the parts.

A task yields one record per unit (``score``: tokenised rows; ``reused``: the counts of a part of an
earlier run) and one ``end`` record with the shard's row count. The scoring side maps ``score`` records
to written parts and passes the others through, so the driver sees one summary per unit and one per
shard, whether the records travel through Ray Data or stay in this process.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hardfocus.contracts.scores import (
    ERROR_PREFIX,
    NON_FINITE_LOSS,
    SOURCE_DIGEST,
    UNCONDITIONED_N_TOKENS,
    UNCONDITIONED_NLL_SUM,
    WINDOW,
    WINDOW_COLUMNS,
    WINDOWS,
    Status,
    mask_from_spans,
    parse_part_name,
    part_place,
    rel_digest,
    score_part_expected,
    scores_table,
)
from hardfocus.errors import HardfocusError
from hardfocus.models import resolve_model
from hardfocus.parts import Expected, PartRefused, read_part, stamped
from hardfocus.readers import Shard, iter_units
from hardfocus.sample_format import Columns
from hardfocus.storage import redact
from hardfocus.tokenizers import load_tokenizer
from scoring.config import ScoreConfig
from scoring.ifd import IFD_TURNS_COLUMN, ifd_ratio, unconditioned_nll
from scoring.output import ScoresDir
from scoring.scorer import Scorer
from scoring.unit_tables import table_from_bytes, table_to_bytes, tokenize_unit

log = logging.getLogger(__name__)

_MAX_ERROR_EXAMPLES = 10
PROGRESS_EVERY_S = 2.0  # how often a unit being scored reports how far it is


def shard_digest(shard: Shard) -> str:
    return rel_digest(shard.rel)


def part_name(shard: Shard, start: int, stop: int) -> str:
    return f"part-{shard_digest(shard)}-{start:010d}-{stop:010d}.parquet"


def expected_parts(shard: Shard, rows: int, rows_per_unit: int) -> list[str]:
    return [part_name(shard, s, min(s + rows_per_unit, rows)) for s in range(0, rows, rows_per_unit)]


@dataclass(frozen=True)
class ShardTask:
    """Score one shard; ``done`` holds the starts of units whose part an earlier run wrote, ``parts`` their names
    as the planner listed them (a shard's last part is shorter: its stop is known from its name only)."""

    shard: Shard
    done: tuple[int, ...] = ()
    parts: tuple[str, ...] = ()

    def to_row(self) -> dict:
        return {"task": json.dumps(asdict(self))}

    @staticmethod
    def from_json(text: str) -> ShardTask:
        d = json.loads(text)
        return ShardTask(Shard(**d["shard"]), tuple(d["done"]), tuple(d.get("parts", ())))


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


# ---- counts of a unit's rows, merged per shard and over the whole directory ----------------------------


def status_counts(status: list[str], n_tokens, truncated, documents: int | None = None) -> dict:
    """What a unit's rows hold, in :class:`hardfocus.contracts.scores.ScoreCounts`' terms (no duplicate ids);
    ``documents``: the input rows they come from, where a row is a window (default: one row per input row)."""
    by_status: dict[str, int] = {}
    for s in status:
        kind = "error" if s.startswith(ERROR_PREFIX) else s
        by_status[kind] = by_status.get(kind, 0) + 1
    errors = sorted({s for s in status if s.startswith(ERROR_PREFIX)})[:_MAX_ERROR_EXAMPLES]
    return {
        "rows": len(status), "documents": len(status) if documents is None else documents,
        "rows_by_status": by_status, "error_examples": errors,
        "tokens": int(np.sum(n_tokens)), "truncated": int(np.sum(truncated)),
    }


def merge_counts(a: dict, b: dict) -> dict:
    by_status = dict(a["rows_by_status"])
    for k, v in b["rows_by_status"].items():
        by_status[k] = by_status.get(k, 0) + v
    return {
        "rows": a["rows"] + b["rows"],
        "documents": documents_of(a) + documents_of(b),
        "rows_by_status": dict(sorted(by_status.items())),
        "error_examples": sorted(set(a["error_examples"]) | set(b["error_examples"]))[:_MAX_ERROR_EXAMPLES],
        "tokens": a["tokens"] + b["tokens"],
        "truncated": a["truncated"] + b["truncated"],
    }


def documents_of(counts: dict) -> int:
    """The input rows of some counts (markers of before windows have none: one row per input row then)."""
    documents = counts.get("documents")
    return counts["rows"] if documents is None else documents


EMPTY_COUNTS = {"rows": 0, "documents": 0, "rows_by_status": {}, "error_examples": [], "tokens": 0, "truncated": 0}


def documents_in(table: pa.Table) -> int:
    """The documents a table of windows holds: its rows of window 0."""
    return int(pc.sum(pc.equal(table[WINDOW], 0)).as_py() or 0)


def part_counts(out: ScoresDir, name: str, expected: Expected, windowed: bool = False) -> tuple[dict, int, int | None]:
    """The counts of a part an earlier run wrote (three small columns read through the verified reader, and the window
    columns of ``windowed`` parts), the rows its stamp says it holds, and for windows the rows its documents say they
    have (a part that lost some is not whole)."""
    columns = ["status", "n_tokens", "truncated", *([WINDOW, WINDOWS] if windowed else [])]
    t = read_part(out.url_of(name), expected, columns)
    documents = documents_in(t) if windowed else None
    declared = int(pc.sum(pc.filter(t[WINDOWS], pc.equal(t[WINDOW], 0))).as_py() or 0) if windowed else None
    counts = status_counts(t["status"].to_pylist(), t["n_tokens"].to_numpy(), t["truncated"].to_numpy(), documents)
    return counts, t.num_rows, declared


def reusable_parts(out: ScoresDir, task: ShardTask, n: int, job: str, overwrite: bool = False,
                   windowed: bool = False) -> dict[int, tuple[str, dict, int]]:
    """unit start -> (part name, its counts, its bytes) of the parts an earlier run wrote for this task's shard that
    the verified reader takes (:mod:`hardfocus.parts`: this job's stamp in this place, whole, unchanged) and that hold
    the rows their name says; a missing or damaged one is left out, so its unit is scored again (the new part
    replaces it). A part of another job or place (the shard changed since, a part copied in) is refused, or with
    ``overwrite`` the shard's old parts are all removed and every unit is scored again."""
    reused = {}
    names = _part_names(task, n)
    for start, name in zip(task.done, names):
        bounds = parse_part_name(name)
        expected = score_part_expected(job, part_place(task.shard, *(bounds[1:] if bounds else (start, -1))))
        try:
            counts, rows, declared = part_counts(out, name, expected, windowed)
            size = out.part_sizes([name]).get(name, 0)
        except PartRefused as exc:
            if exc.why in ("missing", "damaged"):
                log.warning("%s: scoring its rows again", exc)
                continue
            if not overwrite:
                raise HardfocusError(f"{redact(out.url)} holds part {name} of {redact(task.shard.url)} that is not this "
                                     f"job's: {exc}; or choose another --output, or pass --overwrite to score the shard "
                                     "again") from None
            log.warning("%s; scoring the shard again", exc)
            out.remove(list(names))
            return {}
        documents = None if bounds is None else bounds[2] - bounds[1]
        if documents is None or counts["documents"] != documents or counts["rows"] != rows or (
                windowed and declared != rows):
            log.warning("part %s of %s holds %d rows of %d input rows, not what its name and stamp say: scoring its "
                        "rows again", name, redact(out.url), counts["rows"], counts["documents"])
            continue
        reused[start] = (name, counts, size)
    return reused


def _part_names(task: ShardTask, n: int) -> tuple[str, ...]:
    return task.parts or tuple(part_name(task.shard, start, start + n) for start in task.done)


# ---- the reading side: one shard in, one record per unit out -------------------------------------------


def _record(task: str, kind: str, start: int = 0, stop: int = 0, consumed: float = 0.0, tokenized: bytes = b"",
            counts: dict | None = None, error: str | None = None, begin: float = 0.0, size: int = 0) -> dict:
    """One record of a task; the same flat columns for every kind, so Ray Data blocks share one schema.

    ``begin`` and ``consumed``: the shares of the shard's bytes read before and after the unit's rows.
    """
    return {"task": task, "kind": kind, "start": start, "stop": stop, "begin": begin, "consumed": consumed,
            "tokenized": tokenized, "counts": json.dumps(counts or EMPTY_COUNTS), "error": error, "bytes": size}


def read_shard_task(row: dict, cfg: ScoreConfig, model_fingerprint: str, job: str = ""):
    """Ray Data ``flat_map`` entry point (and the local executor's): a task in, its unit records out.

    A :class:`HardfocusError` (a missing column, ``--on-error stop``) travels as an ``error`` record:
    Ray keeps only the text of an exception's cause across processes; the driver raises it as itself.
    """
    task = ShardTask.from_json(row["task"])
    out = ScoresDir(cfg.output)
    rows, begin = 0, 0.0
    try:
        tokenizer = load_tokenizer(_checkpoint_path(cfg.model, model_fingerprint))
        reused = reusable_parts(out, task, cfg.rows_per_unit, job, cfg.overwrite,  # damaged parts are scored again
                                windowed=cfg.long_documents == "windows")
        for unit in iter_units(task.shard, columns_of(cfg), cfg.rows_per_unit, frozenset(reused), cfg.max_row_bytes):
            rows = unit.stop
            if unit.block is None:
                name, counts, size = reused[unit.start]
                if name != part_name(task.shard, unit.start, unit.stop):
                    raise HardfocusError(redact(
                        f"part {name} of {out.url} does not hold rows {unit.start}-{unit.stop}; did {task.shard.url} "
                        "change? Pass --overwrite to score it again"
                    ))
                yield _record(row["task"], "reused", unit.start, unit.stop, unit.consumed, counts=counts, begin=begin,
                              size=size)
                begin = unit.consumed
                continue
            tokenized = tokenize_unit(task.shard, unit.start, unit.block, cfg, tokenizer)
            yield _record(row["task"], "score", unit.start, unit.stop, unit.consumed, table_to_bytes(tokenized),
                          begin=begin)
            begin = unit.consumed
        stale = [s for s, name in zip(task.done, _part_names(task, cfg.rows_per_unit))
                 if s >= rows and out.exists(name)]  # not those --overwrite removed
        if stale:
            raise HardfocusError(redact(
                f"{out.url} holds parts of {task.shard.url} past its last row ({rows}; e.g. rows from {stale[0]}): the "
                "shard changed since they were scored. Choose another --output, or pass --overwrite"
            ))
        if rows == 0 and cfg.on_error == "stop":
            raise HardfocusError(redact(
                f"input shard {task.shard.url} has no rows; remove it, or pass --on-error record to go on"
            ))
    except HardfocusError as exc:
        yield _record(row["task"], "error", error=redact(str(exc)))
        return
    yield _record(row["task"], "end", stop=rows, consumed=1.0)


# ---- the scoring side: tokenised units in, part files out ------------------------------------------------


def _node_name() -> str:
    """This host, and the Ray node inside an actor (several Ray nodes may share a host)."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except ImportError:
        node = None
    return socket.gethostname() + (f"/{node[:8]}" if node else "")


class UnitScorer:
    """Scores tokenised units and writes each as one part file (a Ray actor, or a plain object)."""

    def __init__(self, cfg: ScoreConfig, model_fingerprint: str, torch_threads: int | None, compiled: bool = False,
                 fence=None, job: str = ""):
        self.cfg, self.job = cfg, job
        self.out = ScoresDir(cfg.output, fence=fence)  # each part write checks the run still holds the lock
        self.node = _node_name()
        self.init_error = None
        try:
            self.scorer = Scorer(
                _checkpoint_path(cfg.model, model_fingerprint),
                dtype=cfg.dtype,
                device=cfg.device,
                token_budget=cfg.token_budget,
                chunk_tokens=cfg.chunk_tokens,
                torch_threads=torch_threads,
                compiled=compiled,
            )
        except HardfocusError as exc:  # a model it refuses: the first record says so (Ray would report a dead actor)
            self.scorer, self.init_error = None, str(exc)

    def score_unit(self, shard: Shard, start: int, tokenized: pa.Table) -> Generator[dict, None, tuple[dict, int, int]]:
        """Score, write the part (whole or not at all); returns (the part's counts, rows scored, its bytes).

        Yields ``{"rows", "tokens", "share"}`` (scored so far; share of the unit's tokens) every
        ``PROGRESS_EVERY_S`` while the model runs, so that a long unit shows progress before its part lands.
        """
        status = tokenized.column("status").to_pylist()
        ids = tokenized.column("input_ids").to_pylist()
        spans = tokenized.column("loss_spans").to_pylist() if "loss_spans" in tokenized.column_names else None
        todo = [i for i, s in enumerate(status) if s is None]
        nll_sum = np.full(len(status), np.nan)
        n_tokens = np.zeros(len(status), dtype=np.int64)
        if todo:
            masks = None if spans is None else [mask_from_spans(spans[i], len(ids[i])) for i in todo]
            sequences = [np.asarray(ids[i], dtype=np.int32) for i in todo]
            total, done_rows, done_tokens, last = sum(len(q) for q in sequences), 0, 0, time.perf_counter()
            for batch, sums, counts in self.scorer.iter_batches(sequences, masks):
                rows = [todo[i] for i in batch]
                nll_sum[rows], n_tokens[rows] = sums, counts
                done_rows += len(batch)
                done_tokens += int(sum(len(sequences[i]) for i in batch))
                if time.perf_counter() - last >= PROGRESS_EVERY_S and done_rows < len(todo):
                    last = time.perf_counter()
                    yield {"rows": done_rows, "tokens": int(n_tokens.sum()), "share": done_tokens / max(total, 1)}
        ifd = IFD_TURNS_COLUMN in tokenized.column_names
        if ifd:
            u_nll_sum, u_n_tokens = unconditioned_nll(
                self.scorer.score, ids, tokenized.column(IFD_TURNS_COLUMN).to_pylist(), todo, len(status)
            )
            for i in todo:  # both passes score the same tokens by construction: a difference is a layout bug
                if u_n_tokens[i] != n_tokens[i]:
                    status[i] = Status.IFD_UNMATCHED.value
                elif not np.isfinite(u_nll_sum[i]):
                    nll_sum[i] = u_nll_sum[i]  # reported below as a non-finite loss
        for i in todo:
            if status[i] is None and not np.isfinite(nll_sum[i]):
                if self.cfg.on_error == "stop":
                    raise HardfocusError(
                        f"{redact(shard.url)} row {start + i}: the model's loss is not finite ({nll_sum[i]}); check the model "
                        "and the dtype, or pass --on-error record"
                    )
                status[i] = NON_FINITE_LOSS
        ok = np.array([s is None for s in status])
        loss = np.where(ok, nll_sum / np.maximum(n_tokens, 1), np.nan)
        status = [Status.OK.value if s is None else s for s in status]
        truncated = tokenized.column("truncated")
        windowed = WINDOW in tokenized.column_names
        documents = documents_in(tokenized) if windowed else len(status)
        # a window's bytes are its text's, scored or not (a one-token tail too), so a document's windows sum to its
        # size; a row's otherwise go with its loss
        has_bytes = np.array([len(i) > 0 for i in ids]) if windowed else ok
        table = scores_table(
            {
                "sample_id": tokenized.column("sample_id"),
                "shard": tokenized.column("shard"),
                "row": tokenized.column("row"),
                "group": tokenized.column("group"),
                "n_tokens": n_tokens.astype(np.int32),
                "loss": pa.array(loss.astype(np.float32), mask=~ok),
                "nll_sum": pa.array(nll_sum, mask=~ok),
                "truncated": truncated,
                "status": status,
                **({"input_ids": tokenized.column("input_ids")} if self.cfg.keep_input_ids else {}),
                **({} if spans is None else {"loss_spans": tokenized.column("loss_spans")}),
                "n_bytes": pa.array(tokenized.column("n_bytes").to_numpy(zero_copy_only=False), mask=~has_bytes),
                SOURCE_DIGEST: tokenized.column(SOURCE_DIGEST),
                **({} if not ifd else {
                    UNCONDITIONED_NLL_SUM: pa.array(u_nll_sum, mask=~ok),
                    UNCONDITIONED_N_TOKENS: pa.array(u_n_tokens.astype(np.int32), mask=~ok),
                    "ifd": pa.array(ifd_ratio(nll_sum, n_tokens, u_nll_sum, u_n_tokens).astype(np.float32), mask=~ok),
                }),
                **({name: tokenized[name] for name in WINDOW_COLUMNS} if windowed else {}),
            },
            with_input_ids=self.cfg.keep_input_ids,
            with_loss_spans=spans is not None,
        )
        stop = start + documents
        table = stamped(table, "scores", self.job, part_place(shard, start, stop))
        size = self.out.write_part(part_name(shard, start, stop), table)
        counts = status_counts(status, n_tokens, truncated.to_numpy(zero_copy_only=False), documents)
        return counts, len(todo), size

    def __call__(self, record: dict) -> Iterator[dict]:
        """Ray Data ``flat_map`` entry point (and the local executor's): a unit record in, its summary out,
        after ``progress`` records while it is scored.

        Records other than ``score`` pass through; ``scored`` is the rows the model ran on. A ``progress``
        record's ``consumed`` is the share of the shard's bytes that its scored share of the unit stands for.
        """
        started = time.perf_counter()
        summary = {k: record[k] for k in ("task", "kind", "start", "stop", "consumed", "counts", "error")}
        summary["scored"], summary["seconds"], summary["node"], summary["bytes"] = 0, 0.0, self.node, record.get("bytes", 0)
        if self.init_error:
            yield summary | {"kind": "error", "error": self.init_error}
            return
        if record["kind"] != "score":
            yield summary
            return
        begin = record["begin"]
        unit = self.score_unit(
            ShardTask.from_json(record["task"]).shard, record["start"], table_from_bytes(record["tokenized"])
        )
        try:
            while True:
                done = next(unit)
                yield summary | {
                    "kind": "progress", "scored": done["rows"], "seconds": time.perf_counter() - started,
                    "consumed": begin + done["share"] * (record["consumed"] - begin),
                    "counts": json.dumps(EMPTY_COUNTS | {"tokens": done["tokens"]}),
                }
        except StopIteration as finished:
            counts, scored, size = finished.value
        except HardfocusError as exc:
            yield summary | {"kind": "error", "error": str(exc)}
            return
        yield summary | {"counts": json.dumps(counts), "scored": scored, "seconds": time.perf_counter() - started,
                         "bytes": size}
