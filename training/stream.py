"""Training rows as a stream of batches: memory bounded by a window, batches grouped by length, an exact resume.

The rows of an epoch are the trainable rows of every part, the parts in an order drawn from
``(seed, epoch)``. They are read in windows of ``shuffle_buffer`` rows (a multiple of the batch size),
and each window is shuffled on its own (a bounded shuffle buffer: only one window of token ids is
held) and cut into batches:

- ``random``: consecutive rows of the shuffled window;
- ``grouped``: as ``transformers``' ``LengthGroupedSampler`` does it, runs of 50 batches' worth of
  shuffled rows are sorted by length (longest first) and cut into batches, then the batches of the
  window are shuffled, so a step's rows have similar lengths (little padding) but the steps do not
  go from long to short. Every row is still in exactly one batch per epoch;
- ``packed``: the ``random`` batches, which the packing collator concatenates into one row (no padding).

Everything is a function of ``(seed, epoch, window)``, so the k-th batch of a run is the same batch
whether the run was interrupted or not: a resume starts the stream at batch ``steps x accumulation``,
and where the rows per epoch are known (in-process) it reads from the window holding that batch,
skipping whole parts unread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.parts import Expected, PartRefused, iter_part
from hardfocus.storage import file_version, redact
from training.data import TokenDataset
from training.sources import TrainingSources, trained_columns, training_rows

Order = Literal["random", "grouped"]
BATCHES_PER_GROUP = 50  # LengthGroupedSampler's megabatch: rows of 50 batches are sorted by length together


class WindowSource(Protocol):
    """Where a stream's rows come from: the rows of an epoch, a window of ``window_rows`` at a time."""

    rows: int | None  # trainable rows per epoch, where known up front (a resume then skips unread)

    def windows(self, epoch: int, window_rows: int, start_row: int) -> Iterator[pa.Table]:
        """Tables of ``window_rows`` rows (the last of the epoch may be shorter), from ``start_row`` (a window's
        first row) of ``epoch``; columns ``input_ids`` list<int32>, ``weight`` float32, ``loss_spans``."""


def window_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, order: Order) -> list[np.ndarray]:
    """The batches of one window: arrays of row indices into it, each row in exactly one."""
    rows = rng.permutation(len(lengths))
    if order == "grouped":
        run = BATCHES_PER_GROUP * batch_size
        rows = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in np.split(rows, list(range(run, len(rows), run)))])
    batches = np.split(rows, list(range(batch_size, len(rows), batch_size)))
    if order == "grouped":
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def window_size(shuffle_buffer: int, batch_size: int) -> int:
    """The rows of a window: the buffer rounded down to whole batches (at least one batch)."""
    return max(batch_size, shuffle_buffer // batch_size * batch_size)


class TrainingStream(torch.utils.data.IterableDataset):
    """Collated batches, epoch after epoch, from batch ``start_batch`` on (an infinite stream: ``max_steps`` ends it).

    A ``torch`` ``IterableDataset`` that yields whole batches (``DataLoader(stream, batch_size=None)``):
    the batch sizes are the stream's, so the last batch of an epoch is shorter, never mixed with the next.
    """

    def __init__(self, source: WindowSource, collate: Callable[[list[dict]], dict], batch_size: int,
                 shuffle_buffer: int, seed: int, order: Order, max_seq_len: int, start_batch: int = 0):
        self.source, self.collate, self.batch_size = source, collate, batch_size
        self.window_rows = window_size(shuffle_buffer, batch_size)
        self.seed, self.order, self.max_seq_len, self.start_batch = seed, order, max_seq_len, start_batch
        self.epochs = 0.0  # epochs taken so far, counting the batches handed out (whole epochs where rows are unknown)

    def __iter__(self) -> Iterator[dict]:
        for rows in self.batch_rows():
            yield self.collate(rows)

    def batch_rows(self) -> Iterator[list[dict]]:
        """The rows of each batch from ``start_batch`` on, as the collator takes them."""
        epoch, window, skip = self._locate(self.start_batch)
        while True:
            produced = False
            for index, table in enumerate(self.source.windows(epoch, self.window_rows, window * self.window_rows),
                                          start=window):
                produced = True
                data = TokenDataset(table)
                lengths = np.minimum(pc.list_value_length(table.column("input_ids")).to_numpy(), self.max_seq_len)
                batches = window_batches(lengths, self.batch_size, np.random.default_rng([self.seed, epoch, index]),
                                         self.order)
                if skip >= len(batches):  # only where the rows per epoch are not known: skipped by counting
                    skip -= len(batches)
                    continue
                done = index * self.window_rows + sum(len(b) for b in batches[:skip])
                for batch in batches[skip:]:
                    done += len(batch)
                    self.epochs = epoch + (done / self.source.rows if self.source.rows else 0.0)
                    yield [data[int(i)] for i in batch]
                skip = 0
            if not produced and window == 0:
                raise HardfocusError("the training data yielded no rows in an epoch: nothing to train on")
            epoch, window = epoch + 1, 0

    def _locate(self, batch: int) -> tuple[int, int, int]:
        """(epoch, window, batches to skip in it) of the stream's ``batch``-th batch."""
        rows = self.source.rows
        if not batch or rows is None:
            return 0, 0, batch
        per_window = self.window_rows // self.batch_size
        full, rest = divmod(rows, self.window_rows)
        epoch, j = divmod(batch, full * per_window + math.ceil(rest / self.batch_size))
        window = min(j // per_window, full)
        return epoch, window, j - window * per_window


class PartWindows:
    """The trainable rows of checked sources' parts (:func:`training.sources.find_sources`), read part by part.

    Each epoch takes the parts in an order drawn from ``(seed, epoch)``; a part is read a record batch
    at a time through :func:`training.sources.training_rows` (the checks of the in-memory path), so memory
    holds one window and one record batch. A part that yields other rows than its footer (or, for
    scores/, its status column) counted when the run started changed meanwhile, and is refused.
    """

    def __init__(self, sources: TrainingSources, seed: int):
        self.parts = [(s.kind, s.path, url, trained_columns(cols), n, version, expected) for s in sources.sources
                      for url, cols, n, version, expected in zip(s.parts, s.columns, s.part_rows, s.part_versions,
                                                                 s.expected, strict=True)]
        self.rows = sources.rows
        self.seed = seed

    def windows(self, epoch: int, window_rows: int, start_row: int) -> Iterator[pa.Table]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.parts))
        pending: list[pa.Table] = []
        held = 0
        for i in order:
            kind, where, url, columns, n, version, expected = self.parts[i]
            if start_row >= n:
                start_row -= n
                continue
            for table in self._rows(kind, where, url, columns, n, version, expected, skip=start_row):
                pending.append(table)
                held += table.num_rows
                while held >= window_rows:
                    window = pa.concat_tables(pending)
                    yield window.slice(0, window_rows)
                    pending, held = [window.slice(window_rows)], held - window_rows
            start_row = 0
        if held:
            yield pa.concat_tables(pending)

    def _rows(self, kind: str, where: str, url: str, columns: tuple[str, ...], expected_rows: int,
              version: tuple[int | None, str | None], expected: Expected | None, skip: int) -> Iterator[pa.Table]:
        fs, path = url_to_fs(url)
        seen = 0
        try:
            info = fs.info(path)
            if (info.get("size"), file_version(fs, path, info)) != version:
                raise HardfocusError(
                    f"'{redact(url)}' is not the file it was when the run started (its size or modification stamp "
                    "changed): it changed while being trained on; rerun the stage that wrote it, then train again"
                )
            for batch in _batches(url, fs, path, columns, expected):
                table = training_rows(batch, kind, where)
                seen += table.num_rows
                if skip >= table.num_rows:
                    skip -= table.num_rows
                    continue
                yield table.slice(skip)
                skip = 0
        except FileNotFoundError as exc:
            raise HardfocusError(f"'{redact(url)}' is gone: it was deleted while being trained on") from exc
        except PartRefused as exc:
            if exc.why == "missing":
                raise HardfocusError(f"'{redact(url)}' is gone: it was deleted while being trained on") from None
            raise
        except (pa.ArrowInvalid, OSError) as exc:
            raise HardfocusError(f"cannot read '{redact(url)}': {exc}; was it written completely?") from exc
        if seen != expected_rows:
            raise HardfocusError(
                f"'{redact(url)}' holds {seen} trainable rows, but {expected_rows} when the run started: it changed while "
                "being trained on; rerun the stage that wrote it, then train again"
            )


def _batches(url: str, fs, path: str, columns: tuple[str, ...], expected: Expected | None) -> Iterator[pa.Table]:
    """A part's columns a record batch at a time: through the verified reader where it has a contract (its digests
    checked once the last batch is read), else as they are (parts written by hand)."""
    if expected is not None:
        yield from iter_part(url, expected, columns)
        return
    with fs.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=8192, columns=list(columns)):
            yield pa.Table.from_batches([batch])


class TableWindows:
    """Rows already in memory (a table in :func:`training.sources.training_rows`' schema) as a window source, for
    benchmarks and tests; the stream's order and grouping are those of parts holding the same rows."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.rows = table.num_rows

    def windows(self, epoch: int, window_rows: int, start_row: int) -> Iterator[pa.Table]:
        for start in range(start_row, self.rows, window_rows):
            yield self.table.slice(start, window_rows)
