"""The export's output directory: a :class:`~hardfocus.stagedir.StageDir` of part files written in place.

Layout: ``export_job.json`` (the identity, first), ``part-*`` (the exported rows), with ``--resample`` a ``spill/``
of phase-one files while the export runs, and ``export.json`` (the marker, last). Every file is a commit (whole or
absent, durable once written); every write first checks, in a task through the lock's fence, that this run still
holds the output's lock.
"""

from __future__ import annotations

import base64
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from exporting.formats import DAMAGED, EXTENSIONS, count_rows, write_table
from exporting.storable import for_parquet, restored
from hardfocus.kinds import EXPORT
from hardfocus.stagedir import StageDir
from hardfocus.storage import TMP_PREFIX

log = logging.getLogger(__name__)

SPILL_DIR = "spill"
_SPILL_KEY, _SCHEMA_KEY = b"hardfocus.spill", b"hardfocus.schema"  # a phase-one file's footer: its groups, its rows' schema


def part_name(fmt: str, *keys: int) -> str:
    """``part-00003-00001.parquet``: a part's name from its keys (shard and piece, or output shard)."""
    return "part-" + "-".join(f"{k:05d}" for k in keys) + EXTENSIONS[fmt]


def spill_name(shard: int, unit: int) -> str:
    return f"{SPILL_DIR}/s{shard:05d}-u{unit:05d}.parquet"


def of_shard(names: set[str], shard: int) -> set[str]:
    """The names among ``names`` of a shard's parts and phase-one files (what its task checks before it writes)."""
    return {n for n in names if n.startswith((f"part-{shard:05d}-", f"{SPILL_DIR}/s{shard:05d}-"))}


class ExportDir(StageDir):
    """An export's output directory on any fsspec filesystem. ``fence``: the lock's fence, in a process that does not
    hold the lock itself (a Ray task), checked before each commit."""

    def __init__(self, url: str, fence=None):
        super().__init__(url, EXPORT, fence)

    def parts(self) -> set[str]:
        """The part files there now (names), finished ones only."""
        return {n for n in self.names() if n.startswith("part-")}

    def spills(self) -> set[str]:
        return {f"{SPILL_DIR}/{n}" for n in self.names(SPILL_DIR) if not n.startswith(TMP_PREFIX)}

    def write_part(self, name: str, table: pa.Table, fmt: str) -> None:
        self.commit(name, lambda f: write_table(table, f, fmt))

    def rows_of(self, name: str, fmt: str) -> int | None:
        """The rows of the part ``name``, or None where it cannot be read (cut short or changed since it was written)."""
        try:
            with self.fs.open(self.join(name), "rb") as f:
                return count_rows(f, fmt)
        except DAMAGED as exc:
            log.warning("%s cannot be read (%s): it is written again", name, " ".join(str(exc).split()))
            return None

    def write_spill(self, name: str, groups: list[tuple[int, pa.Table]], schema: pa.Schema) -> None:
        """A phase-one file: one row group per output shard (``groups``: (shard, its rows)), which shards in its footer,
        and the rows' own schema (the source's metadata kept), which what Parquet cannot store is read back in."""
        stored = for_parquet(schema.empty_table()).schema
        record = {**(schema.metadata or {}), _SPILL_KEY: json.dumps([[b, t.num_rows] for b, t in groups]).encode(),
                  _SCHEMA_KEY: base64.b64encode(schema.serialize().to_pybytes())}

        def write(f) -> None:
            with pq.ParquetWriter(f, stored.with_metadata(record), compression="zstd") as writer:
                for _, table in groups:
                    writer.write_table(for_parquet(table.cast(schema)), row_group_size=max(table.num_rows, 1))

        self.fs.makedirs(self.join(SPILL_DIR), exist_ok=True)
        self.commit(name, write)

    def spill_groups(self, name: str) -> tuple[int, list[list[int]]] | None:
        """(rows, [[output shard, rows], ...] per row group) of a phase-one file, or None where it cannot be read."""
        try:
            with self.fs.open(self.join(name), "rb") as f:
                meta = pq.read_metadata(f)
            groups = json.loads((meta.metadata or {})[_SPILL_KEY])
        except (*DAMAGED, KeyError) as exc:
            log.warning("%s cannot be read (%s): it is written again", name, " ".join(str(exc).split()))
            return None
        if [n for _, n in groups] != [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]:
            return None
        return meta.num_rows, groups

    def spill_schema(self, name: str) -> pa.Schema:
        """The schema of a phase-one file's rows (the source's metadata with it; not the file's footer record)."""
        with self.fs.open(self.join(name), "rb") as f:
            return _rows_schema(pq.read_schema(f))

    def read_row_group(self, name: str, index: int) -> pa.Table:
        with self.fs.open(self.join(name), "rb") as f:
            pf = pq.ParquetFile(f)
            return restored(pf.read_row_group(index), _rows_schema(pf.schema_arrow))

    def remove_spill(self) -> None:
        """The phase-one files, once the shuffled parts they made are all written."""
        path = self.join(SPILL_DIR)
        self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def _rows_schema(stored: pa.Schema) -> pa.Schema:
    """The schema a phase-one file records of its rows (Parquet's own, in files of before it recorded one)."""
    metadata = stored.metadata or {}
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(metadata[_SCHEMA_KEY]))) if _SCHEMA_KEY in metadata else stored
    return schema.with_metadata({k: v for k, v in (schema.metadata or {}).items() if not k.startswith(b"hardfocus.")})
