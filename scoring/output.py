"""The scores/ directory: a :class:`~hardfocus.stagedir.StageDir` of part files and shard markers.

Layout: ``job.json`` (the identity, first), ``part-<shard digest>-<start>-<stop>.parquet`` (one per unit),
``done/<shard digest>.json`` (a shard whose parts are all written: its rows, counts and each part's bytes),
``manifest.json`` (last, when every unit is done). Every file is a commit (:mod:`hardfocus.storage`):
whole or absent, durable once written; every part write first checks that this run still holds the output's
lock (in an actor, through the lock's fence), so a run whose lock was taken over stops writing.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from hardfocus.contracts.scores import DONE_DIR
from hardfocus.errors import HardfocusError
from hardfocus.kinds import SCORES
from hardfocus.stagedir import StageDir
from hardfocus.storage import TMP_PREFIX, prefetched, redact

log = logging.getLogger(__name__)


class ScoresDir(StageDir):
    """A scores/ directory on any fsspec filesystem. ``fence``: the lock's fence, in a process that does not
    hold the lock itself (a scoring actor), checked before each commit."""

    def __init__(self, url: str, fence=None):
        super().__init__(url, SCORES, fence)

    def create(self) -> None:
        """Make the directory (and ``done/``) and prove it writable, before any work."""
        try:
            self.fs.makedirs(self.join(DONE_DIR), exist_ok=True)
            probe = self.join(f"{TMP_PREFIX}probe-{uuid.uuid4().hex}")
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except OSError as exc:
            raise HardfocusError(f"cannot write to output directory {redact(self.url)}: {exc}") from exc

    def holds_data(self) -> bool:
        return bool(self.parts() or self.done_names())

    def parts(self, names: list[str] | None = None) -> list[str]:
        """Names of the finished part files (among ``names``, a listing of :meth:`names` already made)."""
        return sorted(n for n in (self.names() if names is None else names) if n.startswith("part-") and n.endswith(".parquet"))

    def done_names(self) -> list[str]:
        return [n for n in self.names(DONE_DIR) if n.endswith(".json") and not n.startswith(TMP_PREFIX)]

    def remove_leftovers(self, names: list[str] | None = None) -> int:
        """Delete temporary files of interrupted writes (see :meth:`parts` for ``names``); returns how many."""
        leftovers = [n for n in (self.names() if names is None else names) if n.startswith(TMP_PREFIX)]
        leftovers += [posixpath.join(DONE_DIR, n) for n in self.names(DONE_DIR) if n.startswith(TMP_PREFIX)]
        self.remove(leftovers)
        return len(leftovers)

    def write_part(self, name: str, table: pa.Table) -> int:
        """A part either exists whole or not at all; returns its size in bytes (recorded in its shard's marker)."""
        written = []

        def write(f) -> None:
            pq.write_table(table, f, compression="zstd")
            written.append(f.tell())

        try:
            self.commit(name, write)
        except HardfocusError as exc:
            raise HardfocusError(f"{exc}; finished parts are kept and only the missing ones are scored") from exc
        return written[0]

    def write_json(self, name: str, obj) -> None:
        self.commit_json(name, obj)

    def part_sizes(self, names: list[str]) -> dict[str, int]:
        """The sizes of these part files as the filesystem has them now (a stat each locally, one listing elsewhere)."""
        if self.is_local:
            return {name: size for name, (size, _) in self.local_part_ends(names).items()}
        self.fs.invalidate_cache(self.path)
        listed = self.fs.ls(self.path, detail=True)
        self.fs.invalidate_cache(self.path)
        wanted = set(names)
        return {posixpath.basename(e["name"]): int(e["size"]) for e in listed if posixpath.basename(e["name"]) in wanted}

    def local_part_ends(self, names: list[str]) -> dict[str, tuple[int, bool]]:
        """name -> (size, whether it ends as a Parquet file does: its footer's length, then ``PAR1``) for the local
        parts that exist: what a part emptied, cut short or zeroed at its end lacks. One open, one fstat and an
        8-byte read each, in this thread (a pool's per-file overhead would cost more than the read)."""
        ends = {}
        for name in names:
            try:
                fd = os.open(self.join(name), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                tail = os.pread(fd, 8, size - 8) if size >= 12 else b""
            finally:
                os.close(fd)
            ends[name] = (size, tail[4:] == b"PAR1" and 0 < int.from_bytes(tail[:4], "little") <= size - 12)
        return ends

    def write_shard_done(self, digest: str, done: dict) -> None:
        """The marker of a shard whose every part is written (``done/<digest>.json``), after its parts."""
        self.commit_json(posixpath.join(DONE_DIR, f"{digest}.json"), done)

    def shard_done_markers(self) -> dict[str, dict]:
        """digest -> marker of every finished shard, read concurrently (an object store answers slowly, not rarely).

        A marker that is not JSON was damaged after it was committed: it is dropped with a warning, and its shard
        is checked part by part and finished again.
        """
        names = self.done_names()

        def read(name: str) -> dict | None:
            with self.fs.open(self.join(posixpath.join(DONE_DIR, name)), "rb") as f:
                data = f.read()
            try:
                marker = json.loads(data)
            except ValueError:
                log.warning("the shard marker %s of %s is damaged (not JSON): that shard is checked and finished again",
                            name, redact(self.url))
                return None
            return marker if isinstance(marker, dict) and isinstance(marker.get("rows"), int) else None

        markers = {n.removesuffix(".json"): m for n, m in zip(names, prefetched(read, names, depth=16))}
        damaged = [d for d, m in markers.items() if m is None]
        if damaged:
            self.remove_shard_done(damaged)
        return {d: m for d, m in markers.items() if m is not None}

    def remove_shard_done(self, digests: list[str]) -> None:
        self.remove([posixpath.join(DONE_DIR, f"{d}.json") for d in digests])

    def urls(self, names: list[str]) -> list[str]:
        return [self.url_of(n) for n in names]
