"""A lock on an output directory, so that two runs never write into one: on a local disk and on object stores.

Local paths: ``fcntl.flock`` on the lock file; the kernel releases it when the process dies (even on
SIGKILL), and the file is deleted on release. The holder writes its record (owner, token) into the file.

Object stores have no ``flock``: the lock is an object holding its owner's record (host, boot id, PID
namespace, pid, a random token), refreshed (rewritten) by a heartbeat thread. It is created with a
conditional write (``If-None-Match: *`` on S3: exactly one of two concurrent runs creates it), refreshed
and taken over with ``If-Match: <etag>`` (compare-and-swap: a run whose lock was taken over learns it at
its next heartbeat instead of overwriting the new owner's). Stores without conditional writes get a
best-effort lock: create if absent, then read back and compare the token.

A lock may be taken over when

* it expired: the store's modification time of the lock object is older than the owner's TTL by the
  *store's* clock. The store's "now" is the HTTP ``Date`` of the very response that returned the lock
  object and its ``Last-Modified`` (one GET on S3: both stamped by the store, so neither the owner's nor
  the reader's clock enters the verdict, and the record, its ETag and its age belong to one version).
  Where a store sends no ``Date``, or is not S3, its "now" is the modification time of a small probe
  object written next to the lock. The record's ``expires_at`` is for humans (and for stores that report
  no modification times at all, where the owner's clock must then agree with the reader's); or
* its owner is a process of this very machine and PID namespace that is gone: host, boot id and PID
  namespace all equal the reader's (and are known), and the pid does not exist (a SIGKILLed run can be
  rerun at once). A process in another container sharing the hostname, or of an earlier boot, is judged
  by expiry alone.

Fencing: each acquisition gets a new token (the lock's generation). :meth:`OutputLock.fence` gives a
picklable :class:`Fence` (the lock's URL and token) that any process can :meth:`~Fence.check` right before
it commits a write: it raises once the lock was taken over, released or deleted.

``HARDFOCUS_LOCK_TTL_S`` (default 90) and ``HARDFOCUS_LOCK_HEARTBEAT_S`` (default 20) override the timing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import posixpath
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.storage import TMP_PREFIX, fs_protocol, fs_url, is_local

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 90.0
DEFAULT_HEARTBEAT_S = 20.0
# S3 stamps Last-Modified and Date in whole seconds: an age read from them may be up to this much too large
TIMESTAMP_RESOLUTION_S = 1.0
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


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


def boot_id() -> str | None:
    """This machine's boot id (Linux), or None where the system has none."""
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip() or None
    except OSError:
        return None


def pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]`` on Linux), or None where it cannot be read."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _same_pid_space(record: dict) -> bool:
    """Whether the record's pid names a process of this machine, this boot and this PID namespace."""
    boot, namespace = boot_id(), pid_namespace()
    return (boot is not None and namespace is not None and record.get("host") == socket.gethostname()
            and record.get("boot_id") == boot and record.get("pid_namespace") == namespace)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _timestamp(value) -> float | None:
    """Seconds since the epoch of a datetime, an HTTP date or a number; None if it is none of them."""
    if isinstance(value, str):
        try:
            value = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _precondition_failed(exc: BaseException) -> bool:
    """Whether a write failed on its condition (the object exists / changed meanwhile) rather than on I/O."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _parse(data: bytes) -> dict | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _owner(record: dict | None) -> str:
    if record is None:
        return "owner unknown"
    owner = f"host {record.get('host')}, pid {record.get('pid')}"
    if record.get("host") == socket.gethostname() and not _same_pid_space(record):
        owner += " (another PID namespace or boot of this host)"
    return owner


def _read_record(fs, path: str) -> tuple[bool, dict | None]:
    """(exists, record) of the lock at ``path`` as it is now: the lock file's content, or the lock object."""
    if is_local(fs):
        try:
            with open(path, "rb") as f:
                return True, _parse(f.read(65536))
        except FileNotFoundError:
            return False, None
    fs.invalidate_cache(path)
    try:
        return True, _parse(fs.cat_file(path))
    except FileNotFoundError:
        return False, None


def _fence_verdict(fs, path: str, token: str, name: str) -> str | None:
    """Why a holder of ``token`` must not write any more (the lock changed hands or is gone), or None."""
    exists, record = _read_record(fs, path)
    if not exists:
        return f"the lock of {name} is gone (released, or deleted by hand); this run stops without writing more"
    if (record or {}).get("token") != token:
        return (f"the lock of {name} was taken over by another run ({_owner(record)}); this run stops without "
                "writing more")
    return None


@dataclass(frozen=True)
class Fence:
    """The generation of a held lock, for the processes that write under it (picklable: a URL and a token).

    :meth:`check` right before committing a write: it raises once the lock carries another token or is gone.
    """

    url: str  # the lock: ``protocol://path`` on a store, the bare path locally
    token: str
    name: str = ""  # what the messages call the locked output

    def check(self) -> None:
        fs, path = url_to_fs(self.url)
        reason = _checked_verdict(fs, path, self.token, self.name or posixpath.dirname(self.url))
        if reason is not None:
            raise HardfocusError(reason)


def _checked_verdict(fs, path: str, token: str, name: str) -> str | None:
    """:func:`_fence_verdict`, or a :class:`HardfocusError` when the lock cannot be read."""
    try:
        return _fence_verdict(fs, path, token, name)
    except OSError as exc:
        raise HardfocusError(f"cannot read the lock {path} of {name} to check it before writing: {exc}") from exc


class _Seen(NamedTuple):
    """The lock object as the store had it at one moment."""

    record: dict | None  # None: not written by hardfocus (or another version)
    etag: str | None
    modified: float | None  # its modification time, by the store's clock (None: the store does not tell)
    now: float | None  # the store's time when it was read

    @property
    def age(self) -> float | None:
        return None if self.modified is None or self.now is None else self.now - self.modified


class OutputLock:
    """``acquire()`` or raise a :class:`HardfocusError` naming the owner; ``release()`` deletes the lock if it is ours."""

    def __init__(self, fs, path: str, name: str | None = None):
        self.fs, self.path = fs, path
        self.name = name or path  # what the error messages call the locked output
        self.ttl_s = _env_seconds("HARDFOCUS_LOCK_TTL_S", DEFAULT_TTL_S)
        self.heartbeat_s = min(_env_seconds("HARDFOCUS_LOCK_HEARTBEAT_S", DEFAULT_HEARTBEAT_S), self.ttl_s / 3)
        self.token = uuid.uuid4().hex  # the lock's generation: a new one at each acquire()
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

    @property
    def url(self) -> str:
        return fs_url(self.fs, self.path)

    def acquire(self, wait: bool = False) -> None:
        """Take the lock, or refuse naming its owner; with ``wait`` (local disks only), wait for it instead."""
        if self._held:
            raise RuntimeError("lock already held")
        self.lost = False
        self.token = uuid.uuid4().hex  # a fence of an earlier acquisition must not pass
        if self.is_local:
            self._acquire_local(wait)
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

    def fence(self) -> Fence:
        """This acquisition's fence, for the writers of the run (see :class:`Fence`)."""
        if not self._held:
            raise RuntimeError("lock not held")
        return Fence(self.url, self.token, self.name)

    def check(self) -> None:
        """Raise if this run must not write any more: another run took its lock over, or the lock is gone.

        Reads the lock (one small GET on a store), so that it holds right before a write commits.
        """
        if self.lost:
            raise HardfocusError(
                f"another hardfocus run took over the lock of {self.name} after this run's heartbeat stopped for "
                f"{self.ttl_s:.0f} s; this run stops here without writing more"
            )
        if not self._held:
            return
        reason = _checked_verdict(self.fs, self.path, self.token, self.name)
        if reason is not None:
            self.lost = True  # release() leaves the lock alone
            raise HardfocusError(reason)

    # -- local: flock ---------------------------------------------------------------------------------------

    def _acquire_local(self, wait: bool = False) -> None:
        while True:
            try:  # never through a link: a planted .NAME.lock symlink would have us truncate the file it names
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                if not os.path.islink(self.path):
                    raise
                raise HardfocusError(
                    f"the lock file {self.path} of {self.name} is a symbolic link, not a lock hardfocus made ({exc}): "
                    "remove it"
                ) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise HardfocusError(f"the lock file {self.path} of {self.name} is not a regular file: remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(_parse(os.pread(fd, 4096, 0)))
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
            "host": socket.gethostname(), "boot_id": boot_id(), "pid_namespace": pid_namespace(), "pid": os.getpid(),
            "token": self.token, "heartbeat_at": now, "expires_at": now + self.ttl_s, "ttl_s": self.ttl_s,
        }).encode()

    def _ttl_of(self, record: dict | None) -> float:
        """The owner's TTL (its heartbeat keeps within it), else ours."""
        ttl = (record or {}).get("ttl_s")
        if isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl > 0:
            return float(ttl)
        return self.ttl_s

    def _describe(self, seen: _Seen) -> str:
        owner = _owner(seen.record)
        if seen.modified is not None:
            expires = seen.modified + self._ttl_of(seen.record)
        else:
            expires = (seen.record or {}).get("expires_at")
            if not isinstance(expires, int | float):
                return owner
        return f"{owner}; its lock expires at {_iso(expires)} unless that run refreshes it"

    def _read(self) -> _Seen | None:
        """The lock object as the store has it now (None if there is none)."""
        if self._cas:
            return self._read_s3()
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        modified = now = None
        with contextlib.suppress(OSError, NotImplementedError):  # the store may report no times
            modified = _timestamp(self.fs.modified(self.path))
        if modified is not None:
            now = self._store_now()
        return _Seen(_parse(data), info.get("ETag"), modified, now)

    def _read_s3(self) -> _Seen | None:
        """One GET: the record, its ETag and Last-Modified, and the store's Date of the response."""
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)

        async def get():
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)  # s3fs' async call_s3
            try:
                return response, await response["Body"].read()
            finally:
                response["Body"].close()

        self.fs.invalidate_cache(self.path)
        try:
            response, data = sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        headers = {k.lower(): v for k, v in (response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}).items()}
        modified = _timestamp(response.get("LastModified") or headers.get("last-modified"))
        now = _timestamp(headers.get("date"))
        if now is None and modified is not None:
            now = self._store_now()
        return _Seen(_parse(data), response.get("ETag"), modified, now)

    def _store_now(self) -> float | None:
        """The store's clock: the modification time of a probe object written next to the lock (None if unknown)."""
        probe = posixpath.join(posixpath.dirname(self.path), f"{TMP_PREFIX}lock-clock-{uuid.uuid4().hex[:12]}")
        try:
            self.fs.pipe_file(probe, b"")
        except (OSError, NotImplementedError):  # read-only: expiry falls back to the owner's clock
            return None
        try:
            self.fs.invalidate_cache(probe)
            return _timestamp(self.fs.modified(probe))
        except (OSError, NotImplementedError):  # a store that reports no times
            return None
        finally:
            with contextlib.suppress(OSError, NotImplementedError):
                self.fs.rm_file(probe)

    def _stale(self, seen: _Seen) -> str | None:
        """Why the lock's owner is gone (it may be taken over), or None while it may still be running."""
        record = seen.record or {}
        ttl = self._ttl_of(seen.record)
        age = seen.age
        if age is not None:
            if age > ttl + TIMESTAMP_RESOLUTION_S:
                return f"it was last refreshed {age:.0f} s ago by the store's clock, more than its TTL of {ttl:g} s"
        else:  # the store reports no modification times: the owner's clock against ours
            expires = record.get("expires_at")
            if isinstance(expires, int | float) and time.time() > expires:
                return f"its heartbeat expired at {_iso(expires)} (by this host's clock)"
        pid = record.get("pid")
        if isinstance(pid, int) and _same_pid_space(record) and not _pid_alive(pid):
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
        if (_read_record(self.fs, self.path)[1] or {}).get("token") != self.token:
            raise FileExistsError(self.path)  # another run wrote it at the same time

    def _acquire_remote(self) -> None:
        for _ in range(5):
            try:
                seen = self._read()
            except OSError as exc:
                raise HardfocusError(f"cannot read the lock {self.path} of {self.name}: {exc}") from exc
            if seen is None:
                try:
                    self._put(None, create=True)
                    return
                except OSError as exc:
                    if not _precondition_failed(exc):
                        raise HardfocusError(f"cannot create the lock {self.path} of {self.name}: {exc}") from exc
                    continue  # created by another run just now: read it
            reason = self._stale(seen)
            if reason is None:
                raise HardfocusError(
                    f"another hardfocus run is writing to {self.name} ({self._describe(seen)}); wait for it to finish "
                    f"or choose another --output. If that run is gone, its lock {self.path} may be deleted by hand"
                )
            log.warning("taking over the lock of %s from %s: %s", self.name, _owner(seen.record), reason)
            try:
                self._put(seen.etag, create=False)
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
                        exists, record = _read_record(self.fs, self.path)
                        if not exists:
                            raise FileNotFoundError(self.path)
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
        if (_read_record(self.fs, self.path)[1] or {}).get("token") == self.token:  # best effort: read, compare, delete
            self.fs.rm_file(self.path)
            self.fs.invalidate_cache(self.path)


@contextlib.contextmanager
def waiting_lock(path) -> Iterator[None]:
    """An exclusive ``flock`` on a local file that waits for its holder instead of refusing: for a cache entry that
    two runs may both need (a converted model, a downloaded one), made once by whichever comes first."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
