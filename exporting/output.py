"""The export's output directory: a :class:`~hardfocus.stagedir.StageDir` of part files written in place.

Layout: ``export_job.json`` (the identity, first), ``part-*`` (the exported rows), with ``--resample`` a ``spill/``
of phase-one files while the export runs, and ``export.json`` (the marker, last). Every file is a commit (whole or
absent, durable once written); every write first checks, in a task through the lock's fence, that this run still
holds the output's lock.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from exporting.formats import DAMAGED, EXTENSIONS, count_rows, write_table
from exporting.storable import for_parquet, restored
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest
from hardfocus.kinds import EXPORT
from hardfocus.parts import Expected, check_stamp
from hardfocus.stagedir import StageDir
from hardfocus.storage import TMP_PREFIX, fresh, prefetched, redact

log = logging.getLogger(__name__)

SPILL_DIR = "spill"
_SPILL_KEY, _SCHEMA_KEY = b"hardfocus.spill", b"hardfocus.schema"  # a phase-one file's footer: its groups, its rows' schema


@dataclass(frozen=True)
class PartFile:
    """What the manifest records of a part's file: its size and the XXH3-64 digest of its bytes."""

    bytes: int
    xxh3: str


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
        self._identity: str | None = None

    def parts(self) -> set[str]:
        """The part files there now (names), finished ones only."""
        return {n for n in self.names() if n.startswith("part-")}

    def spills(self) -> set[str]:
        return {f"{SPILL_DIR}/{n}" for n in self.names(SPILL_DIR) if not n.startswith(TMP_PREFIX)}

    def identity(self) -> str:
        """The digest of this export's identity (its job file's), which its Parquet parts are stamped with."""
        if self._identity is None:
            job = self.read_json(self.kind.job)
            self._identity = digest(job["identity"]) if isinstance(job, dict) and isinstance(job.get("identity"), dict) else ""
        return self._identity

    def write_part(self, name: str, table: pa.Table, fmt: str) -> PartFile:
        """Write the part whole (a commit), a Parquet one stamped with this export's identity and its name; returns its
        size and the digest of its bytes, which the manifest records."""
        buffer = io.BytesIO()
        write_table(table, buffer, fmt, stamp=(self.identity(), {"name": name}))
        data = buffer.getvalue()
        self.commit(name, lambda f: f.write(data))
        return PartFile(len(data), xxhash.xxh3_64(data).hexdigest())

    def part_file(self, name: str, fmt: str) -> tuple[int, PartFile] | None:
        """(rows, size and digest) of the part ``name`` an earlier run wrote, or None where it cannot be read (cut short
        or changed since it was written) or, for a Parquet part, is not stamped as this export's part of that name."""
        try:
            with self.fs.open(self.join(name), "rb") as f:
                data = f.read()
            rows = count_rows(data, fmt)
            if fmt == "parquet":
                meta = pq.read_metadata(pa.BufferReader(data))
                check_stamp(name, meta.metadata, meta.num_rows, Expected("export", self.identity(), {"name": name}))
        except (*DAMAGED, HardfocusError) as exc:
            log.warning("%s cannot be kept (%s): it is written again", name, " ".join(str(exc).split()))
            return None
        return rows, PartFile(len(data), xxhash.xxh3_64(data).hexdigest())

    def damaged_parts(self, parts: list, whole: bool) -> list[tuple[str, str]]:
        """(name, why) of each part of a complete export's manifest (``parts``: its records) that is not as it was
        written: missing or of another size (one listing), and with ``whole`` of other bytes (each part read whole and
        its digest compared: what --overwrite asks). A part file the manifest does not record is refused."""
        sizes = self.sizes()
        extra = sorted(set(sizes) - {p.name for p in parts})
        if extra:
            raise HardfocusError(f"{redact(self.url)} holds part files this export did not write (e.g. {extra[0]}): a "
                                 "reader of the export would take their rows too; move them away")
        recorded = [p for p in parts if p.bytes is not None]

        def check(part) -> tuple[str, str] | None:
            if part.name not in sizes:
                return part.name, "missing"
            if sizes[part.name] != part.bytes:
                return part.name, f"{sizes[part.name]} bytes where {part.bytes} were written"
            if whole:
                with self.fs.open(self.join(part.name), "rb") as f:
                    if xxhash.xxh3_64(f.read()).hexdigest() != part.xxh3:
                        return part.name, "its bytes changed since it was written"
            return None

        return [found for found in prefetched(check, recorded) if found is not None]

    def sizes(self) -> dict[str, int]:
        """name -> size of the part files there now (one listing)."""
        fresh(self.fs, self.path)
        return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0) for e in self.fs.ls(self.path, detail=True)
                if posixpath.basename(e["name"].rstrip("/")).startswith("part-")}

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
