"""A lock on an output directory, so that two runs never write into one: on a local disk and on object stores.

Local paths: ``fcntl.flock`` on the lock file; the kernel releases it when the process dies (even on
SIGKILL), and the file is deleted on release.

Object stores have no ``flock``: the lock is an object holding its owner (host, pid, a random token)
and an expiry, refreshed by a heartbeat thread. It is created with a conditional write
(``If-None-Match: *`` on S3: exactly one of two concurrent runs creates it), refreshed and taken over
with ``If-Match: <etag>`` (compare-and-swap: a run whose lock was taken over learns it at its next
heartbeat instead of overwriting the new owner's). A lock may be taken over when its heartbeat expired,
or when its owner ran on this host and that process is gone (a SIGKILLed run can be rerun at once).
Stores without conditional writes get a best-effort lock: create if absent, then read back and
compare the token. Expiry compares the owner's clock with the reader's: hosts' clocks must agree to
well within the TTL.

``HARDFOCUS_LOCK_TTL_S`` (default 90) and ``HARDFOCUS_LOCK_HEARTBEAT_S`` (default 20) override the timing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

from scoring.foundation.errors import HardfocusError
from scoring.foundation.storage import fs_protocol, is_local

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 90.0
DEFAULT_HEARTBEAT_S = 20.0


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise HardfocusError(f"{name}={value!r}: expected a number of seconds") from None
    if seconds <= 0:
        raise HardfocusError(f"{name}={value!r}: expected a positive number of seconds")
    return seconds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _precondition_failed(exc: BaseException) -> bool:
    """Whether a write failed on its condition (the object exists / changed meanwhile) rather than on I/O."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


class OutputLock:
    """``acquire()`` or raise a :class:`HardfocusError` naming the owner; ``release()`` deletes the lock if it is ours."""

    def __init__(self, fs, path: str, name: str | None = None):
        self.fs, self.path = fs, path
        self.name = name or path  # what the error messages call the locked output
        self.ttl_s = _env_seconds("HARDFOCUS_LOCK_TTL_S", DEFAULT_TTL_S)
        self.heartbeat_s = min(_env_seconds("HARDFOCUS_LOCK_HEARTBEAT_S", DEFAULT_HEARTBEAT_S), self.ttl_s / 3)
        self.token = uuid.uuid4().hex
        self.lost = False  # set when another run took the lock over (our heartbeat had stopped for a TTL)
        self._fd: int | None = None
        self._etag: str | None = None
        self._held = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_local(self) -> bool:
        return is_local(self.fs)

    @property
    def _cas(self) -> bool:
        """S3's conditional writes (``If-Match`` / ``If-None-Match``) through s3fs."""
        return fs_protocol(self.fs) in ("s3", "s3a")

    def acquire(self) -> None:
        if self._held:
            raise RuntimeError("lock already held")
        self.lost = False
        if self.is_local:
            self._acquire_local()
        else:
            self._acquire_remote()
            self._stop.clear()
            self._thread = threading.Thread(target=self._heartbeat, name="hardfocus-lock-heartbeat", daemon=True)
            self._thread.start()
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._fd is not None:
            # unlink while holding the flock: a run that opened the file meanwhile sees another inode and retries
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._mutex:
            if not self.lost:
                try:
                    self._delete_if_ours()
                except OSError as exc:  # it expires by itself
                    log.warning("could not delete the lock %s (%s); it expires after %.0f s", self.path, exc, self.ttl_s)

    def check(self) -> None:
        """Raise if another run took this lock over (this run stalled for longer than the TTL)."""
        if self.lost:
            raise HardfocusError(
                f"another hardfocus run took over the lock of {self.name} after this run's heartbeat stopped for "
                f"{self.ttl_s:.0f} s; this run stops here without writing more"
            )

    # -- local: flock ---------------------------------------------------------------------------------------

    def _acquire_local(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._describe(self._parse(os.pread(fd, 4096, 0)), local=True)
                os.close(fd)
                raise HardfocusError(
                    f"another hardfocus run is writing to {self.name} ({owner}); wait for it to finish or choose another "
                    "--output"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder deleted the file on release between our open and flock: open the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._record(time.time()), 0)
        self._fd = fd

    # -- object stores: a lock object with a heartbeat -------------------------------------------------------

    def _record(self, now: float) -> bytes:
        return json.dumps({
            "host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
            "heartbeat_at": now, "expires_at": now + self.ttl_s, "ttl_s": self.ttl_s,
        }).encode()

    @staticmethod
    def _parse(data: bytes) -> dict | None:
        try:
            record = json.loads(data)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def _describe(self, record: dict | None, local: bool = False) -> str:
        if record is None:
            return "owner unknown"
        owner = f"host {record.get('host')}, pid {record.get('pid')}"
        if local or not isinstance(record.get("expires_at"), int | float):
            return owner
        return f"{owner}; its lock expires at {_iso(record['expires_at'])} unless that run refreshes it"

    def _read(self) -> tuple[dict | None, str | None, bool]:
        """(record, etag, exists) of the lock object as the store has it now."""
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None, False
        record = self._parse(data)
        if record is None:  # not written by hardfocus, or by another version: expires from its modification time
            with contextlib.suppress(Exception):
                modified = self.fs.modified(self.path).timestamp()
                record = {"host": "unknown", "pid": None, "token": None, "expires_at": modified + self.ttl_s}
        return record, info.get("ETag"), True

    def _stale(self, record: dict | None) -> str | None:
        """Why the lock's owner is gone (it may be taken over), or None while it may still be running."""
        if record is None:
            return None
        expires = record.get("expires_at")
        if isinstance(expires, int | float) and time.time() > expires:
            return f"its heartbeat expired at {_iso(expires)}"
        pid = record.get("pid")
        if record.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            return f"its process {pid} on this host is gone"
        return None

    def _put(self, etag: str | None, create: bool) -> None:
        """Write our record: only if absent (``create``), else only over the version ``etag`` where the store can."""
        data = self._record(time.time())
        if self._cas:
            condition = {"mode": "create"} if create else {"IfMatch": etag} if etag else {}
            out = self.fs.pipe_file(self.path, data, **condition)
            self._etag = (out or {}).get("ETag")
            if self._etag is None:
                self._etag = self.fs.info(self.path).get("ETag")
            return
        if create:
            try:
                self.fs.pipe_file(self.path, data, mode="create")
            except (TypeError, NotImplementedError):
                self.fs.invalidate_cache(self.path)
                if self.fs.exists(self.path):
                    raise FileExistsError(self.path) from None
                self.fs.pipe_file(self.path, data)
        else:  # best effort: the record read just before was the one we replace
            self.fs.pipe_file(self.path, data)
        record, _, _ = self._read()
        if (record or {}).get("token") != self.token:
            raise FileExistsError(self.path)  # another run wrote it at the same time

    def _acquire_remote(self) -> None:
        for _ in range(5):
            record, etag, exists = self._read()
            if not exists:
                try:
                    self._put(None, create=True)
                    return
                except OSError as exc:
                    if not _precondition_failed(exc):
                        raise HardfocusError(f"cannot create the lock {self.path} of {self.name}: {exc}") from exc
                    continue  # created by another run just now: read it
            reason = self._stale(record)
            if reason is None:
                raise HardfocusError(
                    f"another hardfocus run is writing to {self.name} ({self._describe(record)}); wait for it to finish "
                    f"or choose another --output. If that run is gone, its lock {self.path} may be deleted by hand"
                )
            log.warning("taking over the lock of %s from %s: %s", self.name, self._describe(record, local=True), reason)
            try:
                self._put(etag, create=False)
                return
            except FileNotFoundError:
                continue  # its owner released it meanwhile
            except OSError as exc:
                if not _precondition_failed(exc):
                    raise HardfocusError(f"cannot take over the lock {self.path} of {self.name}: {exc}") from exc
        raise HardfocusError(f"cannot take the lock {self.path} of {self.name}: other runs keep changing it")

    def _heartbeat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            with self._mutex:
                if self._stop.is_set():
                    return
                try:
                    if self._cas:
                        self._put(self._etag, create=False)
                    else:
                        record, _, _ = self._read()
                        if (record or {}).get("token") != self.token:
                            raise FileExistsError(self.path)
                        self._put(None, create=False)
                    last_ok = time.monotonic()
                except OSError as exc:
                    if isinstance(exc, FileNotFoundError) or _precondition_failed(exc):
                        self.lost = True
                        log.error("the lock of %s was taken over by another run: this run must stop", self.name)
                        return
                    log.warning("could not refresh the lock of %s (%s); %.0f s since the last refresh",
                                self.name, exc, time.monotonic() - last_ok)

    def _delete_if_ours(self) -> None:
        if self._cas and self._etag:
            bucket, key, _ = self.fs.split_path(self.path)
            try:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self._etag)
                self.fs.invalidate_cache(self.path)
                return
            except OSError as exc:
                self.fs.invalidate_cache(self.path)
                if _precondition_failed(exc) or isinstance(exc, FileNotFoundError):
                    return  # not ours any more, or gone
                log.debug("conditional delete of %s failed (%s): reading it back instead", self.path, exc)
        record, _, _ = self._read()  # best effort: read, compare, delete
        if (record or {}).get("token") == self.token:
            self.fs.rm_file(self.path)
            self.fs.invalidate_cache(self.path)
