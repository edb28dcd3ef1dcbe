"""The scores/ directory: part files written atomically, a lock against concurrent runs, the job identity.

Layout: ``part-*.parquet`` (one per unit), ``job.json`` (what the parts were computed with),
``manifest.json`` (written last, when every unit is done), ``.lock`` (while a run writes: see :mod:`scoring.foundation.lock`).

On a local disk a file is written under a temporary name and renamed; on an object store, where a
rename is copy + delete, it is written under its final name in one PUT (s3fs commits a multipart
upload at close), which appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import uuid
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from scoring.foundation.errors import HardfocusError
from scoring.foundation.lock import OutputLock
from scoring.foundation.storage import is_local, prefetched

log = logging.getLogger(__name__)

SCORES_JOB_FILE = "job.json"
SCORES_MANIFEST_FILE = "manifest.json"
DONE_DIR = "done"  # one marker per finished shard

T = TypeVar("T")
R = TypeVar("R")
_TMP_PREFIX = ".tmp-"


class ScoresDir:
    """A scores/ directory on any fsspec filesystem."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = url_to_fs(url)
        self._lock: OutputLock | None = None

    def join(self, name: str) -> str:
        return posixpath.join(self.path, name)

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    def create(self) -> None:
        try:
            self.fs.makedirs(self.join(DONE_DIR), exist_ok=True)
            probe = self.join(f"{_TMP_PREFIX}probe-{uuid.uuid4().hex}")
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except OSError as exc:
            raise HardfocusError(f"cannot write to output directory {self.url}: {exc}") from exc

    def lock(self) -> None:
        """Hold an exclusive lock for this run; a second run on the same directory refuses, naming the owner.

        Locally a ``flock`` (released by the kernel when the process dies, so a SIGKILLed run leaves no
        stale lock); on object stores a lock object with a heartbeat, taken over once its owner is gone.
        """
        lock = OutputLock(self.fs, self.join(".lock"), self.url)
        lock.acquire()
        self._lock = lock

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _fresh(self) -> None:
        """Forget cached listings of this directory and below (s3fs caches them): other processes write here."""
        self.fs.invalidate_cache(self.path)
        cache = getattr(self.fs, "dircache", None)
        if cache:
            prefix = self.path.rstrip("/") + "/"
            for key in [k for k in list(cache) if k.startswith(prefix)]:
                cache.pop(key, None)

    def names(self, folder: str = "") -> list[str]:
        """Names of the entries of this directory (or of ``folder`` in it), fresh, without their details.

        A plain listing: ``glob`` asks for every entry's details (a ``stat`` each locally, a dict each everywhere)
        and then matches them, 6x the time and 900 MB more for a million parts (``benchmarks/scoring_units.py``).
        """
        path = self.join(folder) if folder else self.path
        if self.is_local:
            try:
                return os.listdir(path)
            except FileNotFoundError:
                return []
        self._fresh()
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        finally:
            self._fresh()  # s3fs keeps what it listed, with details: a million parts' worth
        return [posixpath.basename(p.rstrip("/")) for p in entries]

    def parts(self, names: list[str] | None = None) -> list[str]:
        """Names of the finished part files (among ``names``, a listing of :meth:`names` already made)."""
        return sorted(n for n in (self.names() if names is None else names) if n.startswith("part-") and n.endswith(".parquet"))

    def remove_leftovers(self, names: list[str] | None = None) -> int:
        """Delete temporary files of interrupted writes (see :meth:`parts` for ``names``); returns how many."""
        leftovers = [self.join(n) for n in (self.names() if names is None else names) if n.startswith(_TMP_PREFIX)]
        leftovers += [self.join(posixpath.join(DONE_DIR, n)) for n in self.names(DONE_DIR) if n.startswith(_TMP_PREFIX)]
        for p in leftovers:
            self.fs.rm_file(p)
        return len(leftovers)

    def write_part(self, name: str, table: pa.Table) -> None:
        """A part either exists whole or not at all (see :meth:`write_atomic`)."""
        self.write_atomic(name, lambda f: pq.write_table(table, f, compression="zstd"))

    def write_atomic(self, name: str, write) -> None:
        """``write(file)`` to ``name``: a temporary file renamed into place locally, one PUT on an object store.

        On an object store the bytes are collected first, so an exception inside ``write`` uploads nothing
        (closing an fsspec file commits what was written so far).
        """
        if self._lock is not None:
            self._lock.check()
        if not self.is_local:
            buffer = io.BytesIO()
            write(buffer)
            try:
                self.fs.pipe_file(self.join(name), buffer.getvalue())
            except OSError as exc:
                raise HardfocusError(
                    f"cannot write {name} to {self.url}: {exc}; fix the storage and rerun: "
                    "finished parts are kept and only the missing ones are scored"
                ) from exc
            return
        folder, base = posixpath.split(name)
        tmp = self.join(posixpath.join(folder, f"{_TMP_PREFIX}{uuid.uuid4().hex}-{base}"))
        try:
            with self.fs.open(tmp, "wb") as f:
                write(f)
            self.fs.mv(tmp, self.join(name))
        except OSError as exc:  # a full disk, a quota, a file-size limit, a vanished mount
            with contextlib.suppress(OSError):
                self.fs.rm_file(tmp)
            raise HardfocusError(
                f"cannot write {name} to {self.url}: {exc}; free space (or fix the storage) and rerun: "
                "finished parts are kept and only the missing ones are scored"
            ) from exc

    def write_json(self, name: str, obj) -> None:
        data = json.dumps(obj, indent=2, sort_keys=False, default=str).encode()
        self.write_atomic(name, lambda f: f.write(data))

    def read_json(self, name: str):
        path = self.join(name)
        self._fresh()
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return json.loads(f.read())

    def remove(self, names: list[str]) -> None:
        """Delete these files; names that do not exist are ignored."""
        self._fresh()
        for name in names:
            if self.fs.exists(self.join(name)):
                self.fs.rm_file(self.join(name))

    def read_part(self, name: str, columns: list[str]) -> pa.Table:
        with self.fs.open(self.join(name), "rb") as f:
            return pq.read_table(f, columns=columns)

    def write_shard_done(self, digest: str, done: dict) -> None:
        """The marker of a shard whose every part is written (``done/<digest>.json``), after its parts."""
        self.write_json(posixpath.join(DONE_DIR, f"{digest}.json"), done)

    def shard_done_markers(self) -> dict[str, dict]:
        """digest -> marker of every finished shard, read concurrently (an object store answers slowly, not rarely)."""
        paths = [self.join(posixpath.join(DONE_DIR, n)) for n in self.names(DONE_DIR)
                 if n.endswith(".json") and not n.startswith(_TMP_PREFIX)]

        def read(path: str) -> dict:
            with self.fs.open(path, "rb") as f:
                return json.loads(f.read())

        return {posixpath.basename(p).removesuffix(".json"): m for p, m in zip(paths, prefetched(read, paths, depth=16))}

    def remove_shard_done(self, digests: list[str]) -> None:
        self.remove([posixpath.join(DONE_DIR, f"{d}.json") for d in digests])

    def urls(self, names: list[str]) -> list[str]:
        return [self.url.rstrip("/") + "/" + n for n in names]
