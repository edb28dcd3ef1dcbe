"""Write what selection decided, part by part: for each score part its ``decisions/`` part (a row per scored row)
and, where it has kept rows, a training part (the kept rows with ``loss_rank`` and ``weight``, ``input_ids`` and
``loss_spans`` carried over), into a selected/ being staged (:meth:`hardfocus.stagedir.StageDir.staged`:
a temporary directory renamed into place locally, the output itself on an object store, ``summary.json`` last).

Each score part is read once, for both. Parts are independent: each is a :class:`PartJob` (its slice of the
decided arrays, ~25 bytes per row) written by :func:`write_part`, on a thread pool here (Parquet reads, zstd and
writes release the GIL: ``workers`` at a time, each holding one part's rows) or, when a Ray cluster is configured,
as a Ray Data job over the parts (``ray_address`` / ``$RAY_ADDRESS``): the same function, so the same bytes. On a
cluster the output must be on storage every node sees (a shared filesystem or an object store), as for every
stage. Every file write first checks that this run still holds the output's lock: the driver's lock here, its
fence (:meth:`~hardfocus.stagedir.StageDir.fence`) on a Ray worker.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import posixpath
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from tqdm.auto import tqdm

from hardfocus.contracts.decisions import (
    DECISION_BANDS,
    DECISIONS_DIR,
    EXCLUDED,
    KEPT,
    WINDOW_FIELDS,
    decisions_part_name,
    decisions_place,
    decisions_schema,
)
from hardfocus.contracts.selected import selected_schema, training_part_name
from hardfocus.errors import HardfocusError
from hardfocus.parts import Expected, read_part, stamped
from hardfocus.stagedir import StageDir
from hardfocus.storage import fs_url, is_local, redact
from selection.bands import BANDS
from selection.scores import ScoreParts

log = logging.getLogger(__name__)

_UNSET = 255
_EXCLUDED = DECISION_BANDS.index(EXCLUDED)
_KEPT = DECISION_BANDS.index(KEPT)
_BAND_NAMES = pa.array(DECISION_BANDS, pa.string())
_DECISION_WINDOW_COLUMNS = tuple(f.name for f in WINDOW_FIELDS)  # the contract's, read from the score parts
# the decisions' columns of few distinct values: Parquet's dictionary encoding of the others (ids, scores) costs
# more than it saves (a third of the part's bytes and of the time to write it)
DECISIONS_DICTIONARY_COLUMNS = ("shard", "group", "band", "reason", "document_id", "window", "windows")
# no one filters a part by the min and max of its token ids: statistics of these would cost 5% of its write
_UNFILTERED_COLUMNS = ("input_ids", "loss_spans")
# what a Ray worker imports beside the foundation: this package
_PACKAGES = [os.path.dirname(os.path.abspath(__file__))]
_PARTS_PER_RAY_TASK = 8  # a Ray Data task costs ~20 ms of overhead, a part ~50 ms of work
_MIN_PARTS_PER_DATASET = 4096  # the object store holds one dataset's jobs at a time: ~200 MB at 2,000 rows a part


@dataclass(frozen=True)
class Decided:
    """Every row's decision as arrays sorted by global row: the ranked rows (band: an index into DECISION_BANDS,
    rank, score, loss, weight: NaN outside kept) and the excluded ones (with their reason)."""

    rows: np.ndarray
    band: np.ndarray
    rank: np.ndarray
    score: np.ndarray
    loss: np.ndarray
    weight: np.ndarray
    excluded_rows: np.ndarray
    reasons: pl.Series

    @classmethod
    def of(cls, ranked: pl.DataFrame, weight: np.ndarray, excluded: pl.DataFrame, column: str) -> Decided:
        """``ranked`` sorted by ``_row`` (as ranking leaves it), ``weight`` aligned with it (NaN outside kept).
        The arrays are views of the frame's columns where polars allows it: no second copy of a corpus' rows."""
        if not ranked["_row"].is_sorted():
            raise ValueError("ranked rows must be sorted by _row")
        excluded = excluded.sort("_row")
        for what, rows in (("ranked", ranked["_row"]), ("excluded", excluded["_row"])):
            if rows.n_unique() != len(rows):  # a row decided twice would be written twice and counted twice
                raise HardfocusError(f"selection {what} a row twice (e.g. row {rows.filter(rows.is_duplicated())[0]}): "
                                     "a bug; please report it")
        band = ranked["band"].to_physical().to_numpy()  # BANDS' codes are DECISION_BANDS' first three
        assert BANDS.categories.to_list() == list(DECISION_BANDS[:3])
        return cls(
            rows=ranked["_row"].to_numpy(), band=band, rank=ranked["loss_rank"].to_numpy(),
            score=ranked[column].to_numpy(), loss=ranked["loss"].to_numpy(), weight=weight,
            excluded_rows=excluded["_row"].to_numpy(), reasons=excluded["reason"],
        )


@dataclass(frozen=True)
class Layout:
    """What the writers of all parts share: the columns of the outputs, and the excluded rows' reasons."""

    has_input_ids: bool
    has_loss_spans: bool  # the training parts carry loss_spans (null for the rows of parts without them)
    windowed: bool  # the decisions carry the window columns
    reasons: tuple[str, ...]  # PartJob.reason indexes these


@dataclass(frozen=True)
class PartJob:
    """One score part's share of the write pass, sliced out of :class:`Decided`: all its writer needs."""

    index: int  # its place among the score parts: decisions/part-<index>
    url: str
    rows: int
    ranked: np.ndarray  # part-local row of each ranked row, ascending
    band: np.ndarray  # and its band, rank, score, loss and weight
    rank: np.ndarray
    score: np.ndarray
    loss: np.ndarray
    weight: np.ndarray
    excluded: np.ndarray  # part-local rows excluded, ascending
    reason: np.ndarray  # each one's reason: an index into Layout.reasons
    kept_part: int | None  # the number of its training part; None: it keeps no row
    place: dict  # the decisions part's place in its stamp: its index, its scores directory, its score part
    selection: str  # the digest of the selection's identity, which both its parts are stamped with
    expected: Expected  # what the score part must be (the verified reader checks it)
    loss_spans: bool  # this part has the column


def ray_cluster(address: str | None) -> str | None:
    """The Ray cluster to write on: ``address``, else ``$RAY_ADDRESS``; None where neither names one ("local",
    Ray's word for a new local Ray, is none): then the parts are written on a thread pool in this process."""
    address = address or os.environ.get("RAY_ADDRESS")
    return address if address and address != "local" else None


def write_selection(parts: ScoreParts, decided: Decided, stage: StageDir, selection: str, progress: bool = True,
                    workers: int | None = None, ray_address: str | None = None) -> int:
    """Write every score part's decisions and kept rows; returns how many training parts were written.

    Every row of every part must be either ranked or excluded, once: a row in neither (or both) is refused, so
    ``decisions/`` accounts for each scored row. Each write first checks that this run still holds the lock.
    ``selection``: the digest of the selection's identity, recorded in each decisions part's footer (with the part's
    place), so a part of another selection, or put in another part's place, is refused when read.
    On a Ray cluster (``ray_address`` / ``$RAY_ADDRESS``, see :func:`ray_cluster`) as a Ray Data job, else on a
    pool of ``workers`` threads (default: min(4, CPUs)).
    """
    offsets = np.asarray(parts.offsets + [sum(parts.rows)], dtype=np.int64)
    r_bounds = np.searchsorted(decided.rows, offsets)
    e_bounds = np.searchsorted(decided.excluded_rows, offsets)
    kept_per_part = np.diff(np.searchsorted(decided.rows[decided.band == _KEPT], offsets))
    kept_index = np.cumsum(kept_per_part > 0) - 1
    places = _decisions_places(parts)
    reasons = tuple(sorted(decided.reasons.unique().to_list()))
    reason_codes = decided.reasons.replace_strict(reasons, list(range(len(reasons))), return_dtype=pl.Int32).to_numpy()
    layout = Layout(parts.has_input_ids, parts.has_loss_spans,
                    windowed=bool(set(_DECISION_WINDOW_COLUMNS) <= parts.common_columns), reasons=reasons)

    def job(index: int) -> PartJob:
        (r0, r1), (e0, e1), offset = r_bounds[index : index + 2], e_bounds[index : index + 2], int(offsets[index])
        return PartJob(
            index=index, url=parts.urls[index], rows=parts.rows[index],
            ranked=decided.rows[r0:r1].astype(np.int64) - offset, band=decided.band[r0:r1],
            rank=decided.rank[r0:r1], score=decided.score[r0:r1], loss=decided.loss[r0:r1],
            weight=decided.weight[r0:r1], excluded=decided.excluded_rows[e0:e1].astype(np.int64) - offset,
            reason=reason_codes[e0:e1], kept_part=int(kept_index[index]) if kept_per_part[index] else None,
            place=places[index], selection=selection, expected=parts.expected[index],
            loss_spans=bool(parts.has_loss_spans and parts.part_has_loss_spans[index]),
        )

    stage.fs.makedirs(posixpath.join(stage.path, DECISIONS_DIR), exist_ok=True)
    address, workers = ray_cluster(ray_address), workers or min(4, os.cpu_count() or 1)
    t0 = time.perf_counter()
    with tqdm(total=len(parts.urls), unit="parts", disable=not progress, mininterval=1.0) as bar:
        if address is not None:
            _write_on_ray(address, map(job, range(len(parts.urls))), layout, stage, bar)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(lambda i: write_part(job(i), layout, stage.fs, stage.path, stage.check_lock),
                                  range(len(parts.urls))):
                    bar.update()
            # Arrow's allocator (mimalloc) keeps about one part's peak per thread meanwhile, reused by the next part
            # (releasing it after each part cost a fifth of the pass: the next part's pages faulted in again)
            pa.default_memory_pool().release_unused()
    written = int((kept_per_part > 0).sum())
    log.info("wrote %d decisions parts and %d training parts in %.1f s (%s)", len(parts.urls), written,
             time.perf_counter() - t0, f"Ray Data on {redact(address)}" if address else f"{workers} threads")
    return written


def _decisions_places(parts: ScoreParts) -> list[dict]:
    """Per score part, its decisions part's place: its index, its scores directory's index, the score part's name."""
    dirs = [d for d, manifest in enumerate(parts.manifests) for _ in range(manifest.parts)]
    return [decisions_place(i, d, posixpath.basename(url)) for i, (d, url) in enumerate(zip(dirs, parts.urls))]


# ---- on Ray ----------------------------------------------------------------------------------------------------


def _write_on_ray(address: str, jobs: Iterator[PartJob], layout: Layout, stage: StageDir, bar: tqdm) -> None:
    """The jobs as Ray Data datasets of a few thousand parts each (their decisions in the object store one
    dataset at a time), :data:`_PARTS_PER_RAY_TASK` parts to a task, each written by :func:`_write_on_worker`."""
    import ray

    from hardfocus.console import native_stderr_to_file, quiet_ray_data_console
    from hardfocus.ray_local import init_ray

    started = init_ray(address, packages=_PACKAGES)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # selection shows one progress bar instead
    try:
        quiet_ray_data_console()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        per_dataset = max(_MIN_PARTS_PER_DATASET, 64 * cpus)
        write = {"layout": layout, "url": fs_url(stage.fs, stage.path), "fence": stage.fence()}
        with native_stderr_to_file():
            while chunk := [{"job": pickle.dumps(j, protocol=pickle.HIGHEST_PROTOCOL)}
                            for _, j in zip(range(per_dataset), jobs)]:
                ds = ray.data.from_items(chunk, override_num_blocks=math.ceil(len(chunk) / _PARTS_PER_RAY_TASK))
                results = iter(ds.map(_write_on_worker, fn_kwargs=write, num_cpus=1).iter_rows())
                try:
                    for result in results:
                        if result["error"]:
                            raise HardfocusError(result["error"])
                        bar.update()
                finally:
                    results.close()  # stop the dataset (after an error) while Ray is up
    finally:
        ctx.enable_progress_bars = saved
        if started:
            ray.shutdown()


def _write_on_worker(row: dict, layout: Layout, url: str, fence) -> dict:
    """A Ray Data row: one pickled :class:`PartJob`, written into the output at ``url`` (its fence checked before
    each write); a refusal comes back as ``error``, for the driver to raise."""
    job: PartJob = pickle.loads(row["job"])
    fs, root = url_to_fs(url)
    try:
        write_part(job, layout, fs, root, fence.check if fence is not None else lambda: None)
    except HardfocusError as exc:
        return {"index": job.index, "error": str(exc)}
    except OSError as exc:  # the output's storage, seen from this node
        return {"index": job.index, "error": f"cannot write the selection's part {job.index} into {redact(url)} "
                f"from a Ray worker: {' '.join(str(exc).split()) or type(exc).__name__}; is the output on storage "
                "every node sees?"}
    return {"index": job.index, "error": ""}


# ---- one part ----------------------------------------------------------------------------------------------------


def write_part(job: PartJob, layout: Layout, fs, root: str, check_lock: Callable[[], None]) -> None:
    """Read the part once; write its decisions, then its training part (if it keeps a row), under ``root`` on
    ``fs``, calling ``check_lock`` before each file."""
    n = job.rows
    band = np.full(n, _UNSET, dtype=np.uint8)
    band[job.ranked] = job.band
    both = (band[job.excluded] != _UNSET).any()
    band[job.excluded] = _EXCLUDED
    if both or (band == _UNSET).any():
        raise HardfocusError(f"selection decided {len(job.ranked)} ranked and {len(job.excluded)} excluded rows of the "
                             f"{n} of {redact(job.url)}: a row without exactly one decision (a bug)")
    training = ["sample_id", "shard", "row", "group", "loss", *(["input_ids"] if layout.has_input_ids else []),
                *(["loss_spans"] if job.loss_spans else [])]
    source = read_part(job.url, job.expected, training + list(_DECISION_WINDOW_COLUMNS if layout.windowed else ()))
    loss = source["loss"].to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if not np.array_equal(loss[job.ranked], job.loss):
        raise HardfocusError(f"rows of {redact(job.url)} differ from the ones ranked: it changed meanwhile; "
                             "rerun `hardfocus select`")
    decisions = stamped(_decisions_table(job, layout, source, band), "decisions", job.selection, job.place)
    check_lock()
    _write(fs, posixpath.join(root, DECISIONS_DIR, decisions_part_name(job.index)), decisions,
           use_dictionary=[c for c in DECISIONS_DICTIONARY_COLUMNS if c in decisions.column_names])
    del decisions
    if job.kept_part is not None:
        is_kept = job.band == _KEPT  # the ranked rows are in row order: so are the kept ones
        kept = _kept_table(layout, source.select(training).take(pa.array(job.ranked[is_kept])),
                           job.rank[is_kept], job.weight[is_kept], job.loss_spans)
        kept = stamped(kept, "selected", job.selection, {"index": job.kept_part})
        check_lock()
        _write(fs, posixpath.join(root, training_part_name(job.kept_part)), kept,
               write_statistics=[c for c in kept.column_names if c not in _UNFILTERED_COLUMNS])
        del kept


def _write(fs, path: str, table: pa.Table, **options) -> None:
    if is_local(fs):
        pq.write_table(table, path, compression="zstd", **options)
    else:
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, compression="zstd", **options)


def _decisions_table(job: PartJob, layout: Layout, source: pa.Table, band: np.ndarray) -> pa.Table:
    n = job.rows
    unranked = np.ones(n, dtype=bool)
    unranked[job.ranked] = False

    def spread(values: np.ndarray, mask: np.ndarray) -> pa.Array:  # the ranked rows' values, null where mask
        full = np.zeros(n, dtype=np.float32)
        full[job.ranked] = values
        return pa.array(full, pa.float32(), mask=mask)

    if len(job.excluded):  # each excluded row's reason, looked up in the few there are; null elsewhere
        codes = np.zeros(n, dtype=np.int32)
        codes[job.excluded] = job.reason
        reason = pc.take(pa.array(layout.reasons, pa.string()), pa.array(codes, mask=band != _EXCLUDED))
    else:
        reason = pa.nulls(n, pa.string())
    table = {
        "sample_id": source["sample_id"], "shard": source["shard"], "row": source["row"], "group": source["group"],
        "loss": source["loss"].cast(pa.float32()),
        "score": spread(job.score, unranked),
        "band": pa.DictionaryArray.from_arrays(pa.array(band.view(np.int8)), _BAND_NAMES),
        "reason": reason,
        "rank": spread(job.rank, unranked),
        "weight": spread(job.weight, band != _KEPT),
        **({c: source[c] for c in _DECISION_WINDOW_COLUMNS} if layout.windowed else {}),
    }
    return pa.table(table, schema=decisions_schema(layout.windowed))


def _kept_table(layout: Layout, source: pa.Table, rank: np.ndarray, weight: np.ndarray, part_spans: bool) -> pa.Table:
    schema = selected_schema(layout.has_input_ids, layout.has_loss_spans)
    if layout.has_loss_spans:  # plain-text parts selected with conversation parts: null = every token a target
        spans = source["loss_spans"] if part_spans else pa.nulls(source.num_rows, schema.field("loss_spans").type)
    return pa.table(
        {
            "sample_id": source["sample_id"], "shard": source["shard"], "row": source["row"], "group": source["group"],
            "loss": source["loss"].cast(pa.float32()),
            "loss_rank": pa.array(rank.astype(np.float32, copy=False)),
            "weight": pa.array(weight.astype(np.float32, copy=False)),
            **({"input_ids": source["input_ids"]} if layout.has_input_ids else {}),
            **({"loss_spans": spans} if layout.has_loss_spans else {}),
        },
        schema=schema,
    )
