"""The output lock: who may take it over (the owner's machine, boot and PID namespace; expiry by the store's clock)
and its fence (a writer learns, right before it commits, that the lock changed hands).

Time is controlled, never raced: lock records are written directly, TTLs are small through the environment, and
where an object must be old the test waits until the store itself says it is (its Date against its Last-Modified).
"""

from __future__ import annotations

import json
import os
import pickle
import posixpath
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import fsspec
import pytest

from hardfocus import lock as lock_module
from hardfocus.errors import HardfocusError
from hardfocus.lock import OutputLock
from tests.s3 import names, s3_fs

HOUR = 3600.0
needs_proc = pytest.mark.skipif(not (os.path.exists("/proc/self/ns/pid") and os.path.exists("/proc/sys/kernel/random/boot_id")),
                                reason="needs Linux's /proc (a boot id and PID namespaces)")


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _record(host: str, pid: int, token: str, *, clock_offset_s: float = 0.0, ttl_s: float = 90.0, **extra) -> bytes:
    """A record as hardfocus writes it, by an owner whose clock is ``clock_offset_s`` off ours."""
    now = time.time() + clock_offset_s
    return json.dumps({"host": host, "pid": pid, "token": token, "heartbeat_at": now, "expires_at": now + ttl_s,
                       "ttl_s": ttl_s, **extra}).encode()


def _token(fs, path: str) -> str | None:
    fs.invalidate_cache(path)
    return json.loads(fs.cat_file(path)).get("token")


def _store_age(path: str) -> float:
    """How old the object is by the store's own clock: the Date of a HEAD against its Last-Modified."""
    fs = s3_fs()
    bucket, key, _ = fs.split_path(path)
    head = fs.call_s3("head_object", Bucket=bucket, Key=key)
    return (parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"]) - head["LastModified"]).total_seconds()


def _wait_until_old(path: str, ttl_s: float) -> None:
    """Until the store says the object is older than ``ttl_s`` beyond its timestamps' resolution."""
    deadline = time.monotonic() + 60
    while _store_age(path) <= ttl_s + lock_module.TIMESTAMP_RESOLUTION_S:
        assert time.monotonic() < deadline, "the store's clock did not advance"
        time.sleep(0.1)


class _Clock:
    """The lock module's ``time``, ``offset_s`` off the real one (a reader whose clock is wrong)."""

    def __init__(self, offset_s: float):
        self.offset_s = offset_s

    def time(self) -> float:
        return time.time() + self.offset_s

    def monotonic(self) -> float:
        return time.monotonic()


def _check_in_subprocess(fence: lock_module.Fence) -> str:
    """``fence.check()`` in a new process that has nothing but the pickled fence: "ok" or the error's message."""
    script = ("import pickle, sys\nfrom hardfocus.errors import HardfocusError\n"
              "fence = pickle.loads(sys.stdin.buffer.read())\n"
              "try:\n    fence.check()\n    print('ok')\nexcept HardfocusError as e:\n    print('error:', e)\n")
    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(fence), capture_output=True,
                          env=os.environ | {"PYTHONPATH": os.getcwd()}, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stdout.decode().strip()


# -- whose process is gone: host, boot id and PID namespace -------------------------------------------------------


@needs_proc
@pytest.mark.s3
def test_the_record_names_the_boot_and_the_pid_namespace(tmp_path, s3_url):
    path = f"{s3_url}/.lock".removeprefix("s3://")
    for fs, p in ((s3_fs(), path), (fsspec.filesystem("file"), str(tmp_path / ".lock"))):
        lock = OutputLock(fs, p)
        lock.acquire()
        try:
            record = json.loads(fs.cat_file(p))
            assert record["boot_id"] == _boot_id() and record["pid_namespace"] == os.readlink("/proc/self/ns/pid")
            assert (record["host"], record["pid"], record["token"]) == (socket.gethostname(), os.getpid(), lock.token)
        finally:
            lock.release()


@needs_proc
@pytest.mark.s3
def test_a_live_owner_in_another_pid_namespace_is_not_taken_over(s3_url, caplog):
    """Containers with host networking share the hostname: a pid that does not exist here may be alive there."""
    fs, path = s3_fs(), f"{s3_url}/.lock".removeprefix("s3://")
    host, pid, ns, boot = socket.gethostname(), _dead_pid(), os.readlink("/proc/self/ns/pid"), _boot_id()
    elsewhere = {  # fresh heartbeats, this host's name, a pid that is gone here
        "another PID namespace": {"boot_id": boot, "pid_namespace": "pid:[1]"},
        "another boot": {"boot_id": "0" * 8, "pid_namespace": ns},
        "an owner that names no namespace (an older hardfocus)": {},
    }
    for case, extra in elsewhere.items():
        fs.pipe_file(path, _record(host, pid, "theirs", **extra))
        with pytest.raises(HardfocusError, match=rf"another hardfocus run is writing to .*pid {pid}"):
            OutputLock(s3_fs(), path).acquire()
        assert _token(fs, path) == "theirs", case  # left alone

    # the same record in our namespace and boot: its process is gone, taken over at once
    fs.pipe_file(path, _record(host, pid, "theirs", boot_id=boot, pid_namespace=ns))
    lock = OutputLock(s3_fs(), path)
    with caplog.at_level("WARNING", logger="hardfocus.lock"):
        lock.acquire()
    try:
        assert _token(fs, path) == lock.token
        assert f"its process {pid} on this host is gone" in caplog.text
    finally:
        lock.release()


# -- expiry by the store's clock -----------------------------------------------------------------------------------


@pytest.mark.s3
def test_a_fresh_lock_from_a_host_whose_clock_is_behind_is_not_taken_over(s3_url):
    fs, path = s3_fs(), f"{s3_url}/.lock".removeprefix("s3://")
    fs.pipe_file(path, _record("elsewhere", 1, "theirs", clock_offset_s=-HOUR))  # expires_at an hour "ago"
    with pytest.raises(HardfocusError, match="host elsewhere, pid 1; its lock expires at"):
        OutputLock(s3_fs(), path).acquire()
    assert _token(fs, path) == "theirs"


@pytest.mark.s3
def test_an_old_lock_object_is_taken_over_whatever_its_record_says(s3_url, monkeypatch):
    """Its owner's clock ran an hour ahead (its expires_at lies in the future), but the store last saw it > TTL ago."""
    monkeypatch.setenv("HARDFOCUS_LOCK_TTL_S", "0.5")
    fs, path = s3_fs(), f"{s3_url}/.lock".removeprefix("s3://")
    fs.pipe_file(path, _record("elsewhere", 1, "theirs", clock_offset_s=HOUR, ttl_s=0.5))
    _wait_until_old(path, 0.5)
    lock = OutputLock(s3_fs(), path)
    lock.acquire()
    try:
        assert _token(fs, path) == lock.token
    finally:
        lock.release()


@pytest.mark.s3
@pytest.mark.parametrize("offset_s", [-HOUR, HOUR], ids=["reader-behind", "reader-ahead"])
def test_a_reader_whose_clock_is_wrong_reaches_the_same_verdict(s3_url, monkeypatch, offset_s):
    monkeypatch.setattr(lock_module, "time", _Clock(offset_s))
    fs, path = s3_fs(), f"{s3_url}/.lock".removeprefix("s3://")
    fs.pipe_file(path, _record("elsewhere", 1, "theirs", ttl_s=0.5))  # by a right clock
    with pytest.raises(HardfocusError, match="another hardfocus run is writing to"):  # fresh by the store: refused
        OutputLock(s3_fs(), path).acquire()
    assert _token(fs, path) == "theirs"
    _wait_until_old(path, 0.5)
    lock = OutputLock(s3_fs(), path)
    lock.acquire()  # old by the store: taken over
    try:
        assert _token(fs, path) == lock.token
    finally:
        lock.release()


@pytest.mark.s3
def test_without_a_date_from_the_store_its_clock_is_read_from_a_probe_object(s3_url, monkeypatch):
    """A store (or proxy) that sends no Date header: the store's time is the Last-Modified of an object written now."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    call_s3 = fs._call_s3

    async def without_date(method, *args, **kwargs):
        response = await call_s3(method, *args, **kwargs)
        response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).pop("date", None)
        return response

    monkeypatch.setattr(fs, "_call_s3", without_date)
    path = f"{s3_url}/.lock".removeprefix("s3://")
    s3_fs().pipe_file(path, _record("elsewhere", 1, "theirs", clock_offset_s=-HOUR, ttl_s=0.5))
    with pytest.raises(HardfocusError, match="another hardfocus run is writing to"):
        OutputLock(fs, path).acquire()  # by the owner's clock it expired an hour ago: by the store's it is fresh
    _wait_until_old(path, 0.5)
    lock = OutputLock(fs, path)
    lock.acquire()
    lock.release()
    assert names(s3_url) == []  # no probe left behind, and released


def test_a_store_without_conditional_writes_judges_expiry_by_its_own_times(monkeypatch):
    """The memory filesystem stands for the store: its modification times are set store-side."""
    fs = fsspec.filesystem("memory")
    path = f"/lock-times-{os.getpid()}/.lock"
    fs.pipe_file(path, _record("elsewhere", 1, "theirs", clock_offset_s=-HOUR))
    with pytest.raises(HardfocusError, match="host elsewhere, pid 1; its lock expires at"):
        OutputLock(fs, path).acquire()  # expired by its owner's clock, fresh by the store's
    fs.store[path].modified = datetime.now(UTC) - timedelta(seconds=120)  # the store last saw it 2 min ago
    lock = OutputLock(fs, path)
    lock.acquire()
    try:
        assert _token(fs, path) == lock.token
        assert fs.ls(posixpath.dirname(path), detail=False) == [path]  # the clock probe is gone
    finally:
        lock.release()
    assert not fs.exists(path)


# -- the fence -----------------------------------------------------------------------------------------------------


@pytest.mark.s3
def test_a_fence_on_s3_stops_writers_once_the_lock_was_taken_over(s3_url, monkeypatch):
    monkeypatch.setenv("HARDFOCUS_LOCK_TTL_S", "0.5")
    path = f"{s3_url}/.lock".removeprefix("s3://")
    first = OutputLock(s3_fs(), path, name=s3_url)
    first.acquire()
    fence = first.fence()
    assert fence == pickle.loads(pickle.dumps(fence)) and fence.url == f"s3://{path}" and fence.token == first.token
    fence.check()
    first.check()
    assert _check_in_subprocess(fence) == "ok"  # a writer elsewhere (a Ray actor) with nothing but the fence

    first._stop.set()  # its heartbeat stops (a stalled driver): the lock expires and a second run takes it over
    first._thread.join()
    _wait_until_old(path, 0.5)
    second = OutputLock(s3_fs(), path, name=s3_url)
    second.acquire()
    try:
        with pytest.raises(HardfocusError, match=rf"^the lock of {s3_url} was taken over by another run .*; this run "
                                                 "stops without writing more$"):
            fence.check()
        assert _check_in_subprocess(fence).startswith(f"error: the lock of {s3_url} was taken over by another run")
        with pytest.raises(HardfocusError, match="taken over"):
            first.check()
        assert first.lost
        second.fence().check()  # the new owner's fence passes
    finally:
        first.release()  # leaves the new owner's lock alone
        assert _token(s3_fs(), path) == second.token
        second.release()


@pytest.mark.s3
def test_the_holders_fence_passes_across_heartbeats(s3_url, monkeypatch):
    monkeypatch.setenv("HARDFOCUS_LOCK_TTL_S", "3")
    monkeypatch.setenv("HARDFOCUS_LOCK_HEARTBEAT_S", "0.05")
    fs, path = s3_fs(), f"{s3_url}/.lock".removeprefix("s3://")
    lock = OutputLock(s3_fs(), path)
    lock.acquire()
    try:
        fence = lock.fence()
        first = json.loads(fs.cat_file(path))["heartbeat_at"]
        deadline = time.monotonic() + 60
        while json.loads(fs.cat_file(path))["heartbeat_at"] == first:  # until the heartbeat rewrote it
            assert time.monotonic() < deadline, "the heartbeat never refreshed the lock"
            time.sleep(0.05)
        fence.check()
        lock.check()
        assert lock.fence() == fence and not lock.lost
    finally:
        lock.release()
    with pytest.raises(HardfocusError, match="is gone"):  # released: a late writer stops too
        fence.check()


@pytest.mark.s3
def test_a_lock_object_deleted_by_hand_stops_the_holder(s3_url):
    fs, path = s3_fs(), f"{s3_url}/.lock".removeprefix("s3://")
    lock = OutputLock(s3_fs(), path)
    lock.acquire()
    try:
        fs.rm_file(path)
        with pytest.raises(HardfocusError, match="is gone"):
            lock.check()
        assert lock.lost
    finally:
        lock.release()


def test_a_local_fence_fails_once_another_run_holds_the_lock(tmp_path):
    fs, path = fsspec.filesystem("file"), str(tmp_path / ".lock")
    first = OutputLock(fs, path, name=str(tmp_path))
    first.acquire()
    fence = first.fence()
    assert fence.url == path
    fence.check()
    first.check()
    assert _check_in_subprocess(fence) == "ok"
    first.release()
    with pytest.raises(HardfocusError, match="is gone"):
        fence.check()
    second = OutputLock(fs, path, name=str(tmp_path))
    second.acquire()
    try:
        with pytest.raises(HardfocusError, match=rf"^the lock of {tmp_path} was taken over by another run \(host "):
            fence.check()
        assert _check_in_subprocess(fence).startswith("error: the lock of")
        second.fence().check()
        second.check()
    finally:
        second.release()


def test_each_acquisition_is_a_new_generation(tmp_path):
    """The same OutputLock acquired again: a fence of its earlier acquisition does not pass."""
    lock = OutputLock(fsspec.filesystem("file"), str(tmp_path / ".lock"))
    lock.acquire()
    earlier = lock.fence()
    lock.release()
    lock.acquire()
    try:
        assert lock.fence().token != earlier.token
        with pytest.raises(HardfocusError, match="taken over"):
            earlier.check()
        lock.fence().check()
    finally:
        lock.release()


def test_taking_the_lock_never_truncates_the_file_a_planted_lock_symlink_points_to(tmp_path):
    """`_acquire_local` opens `.NAME.lock` with O_RDWR | O_CREAT (following a symlink), then `ftruncate`s it and
    writes its record: a `.out.lock` symlink left in a shared output parent truncates whatever file it names."""
    from hardfocus.kinds import SCORES
    from hardfocus.stagedir import StageDir

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / ".out.lock").symlink_to(victim)
    out = StageDir(str(tmp_path / "shared" / "out"), SCORES)
    try:
        out.lock()
        out.unlock()
    except HardfocusError:
        pass  # refusing a lock that is a symlink is fine
    assert victim.read_text() == "precious\n"
