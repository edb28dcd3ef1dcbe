"""The scores/ directory: part files written atomically, a lock against concurrent runs, the job identity.

Layout: ``part-*.parquet`` (one per unit), ``job.json`` (what the parts were computed with),
``manifest.json`` (written last, when every unit is done), ``.lock`` (local paths only).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from scoring.errors import HardfocusError
from scoring.sources import is_local

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
_TMP_PREFIX = ".tmp-"


class ScoresDir:
    """A scores/ directory on any fsspec filesystem."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.path = url_to_fs(url)
        self._lock_handle = None

    def join(self, name: str) -> str:
        return posixpath.join(self.path, name)

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    def create(self) -> None:
        try:
            self.fs.makedirs(self.path, exist_ok=True)
            probe = self.join(f"{_TMP_PREFIX}probe-{uuid.uuid4().hex}")
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except OSError as exc:
            raise HardfocusError(f"cannot write to output directory {self.url}: {exc}") from exc

    def lock(self) -> None:
        """Hold an exclusive lock for this run; a second run on the same directory refuses.

        ``flock`` is released by the kernel when the process dies, so a SIGKILLed run leaves no stale lock.
        """
        if not self.is_local:
            log.warning("output %s is not local: no lock against concurrent runs", self.url)
            return
        handle = open(os.path.join(self.path, ".lock"), "w")  # noqa: SIM115 - held for the run's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise HardfocusError(
                f"another hardfocus run is writing to {self.url}; wait for it to finish or choose another --output"
            ) from None
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def parts(self) -> list[str]:
        """Names of the finished part files."""
        return sorted(
            posixpath.basename(p)
            for p in self.fs.glob(self.join("part-*.parquet"))
        )

    def remove_leftovers(self) -> int:
        """Delete temporary files of interrupted writes; returns how many."""
        leftovers = self.fs.glob(self.join(f"{_TMP_PREFIX}*"))
        for p in leftovers:
            self.fs.rm_file(p)
        return len(leftovers)

    def write_part(self, name: str, table: pa.Table) -> None:
        """Write to a temporary name, then rename: a part either exists whole or not at all."""
        self.write_atomic(name, lambda f: pq.write_table(table, f, compression="zstd"))

    def write_atomic(self, name: str, write) -> None:
        tmp = self.join(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{name}")
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
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return json.loads(f.read())

    def remove(self, names: list[str]) -> None:
        """Delete these files; names that do not exist are ignored."""
        for name in names:
            if self.fs.exists(self.join(name)):
                self.fs.rm_file(self.join(name))

    def part_rows(self, name: str) -> int:
        with self.fs.open(self.join(name), "rb") as f:
            return pq.read_metadata(f).num_rows

    def urls(self, names: list[str]) -> list[str]:
        return [self.url.rstrip("/") + "/" + n for n in names]
