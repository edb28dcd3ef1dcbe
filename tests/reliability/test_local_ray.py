"""The local Ray that hardfocus starts (no RAY_ADDRESS): reachable from this machine only, its token file private."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray

# Run in a fresh interpreter (HOME: a temp dir, so Ray writes its token there): start the local Ray as hardfocus
# does, run one task (a worker with its gRPC server), then list the TCP sockets that this process and every
# process under it (GCS, raylet, agents, workers) listen on, from /proc/net/tcp{,6} and each process's fds.
_PROBE = r"""
import json, os, socket, time
from pathlib import Path

import psutil
import ray

from hardfocus.ray_local import init_ray


def listening_inodes():
    found = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            ip_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(ip_hex)  # the kernel's 32-bit words, each in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[int(fields[9])] = (socket.inet_ntop(family, raw), int(port_hex, 16))
    return found


def component(pid):
    if pid == os.getpid():
        return "driver"
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return "?"
    line = " ".join(argv)
    for name in ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "monitor.py", "log_monitor.py",
                 "dashboard.py", "ray_process_reaper.py"):
        if name in line:
            return name
    return "worker" if line.startswith("ray::") else line[:80]


def sockets():
    inodes = listening_inodes()
    out = []
    for pid in [os.getpid()] + [p.pid for p in psutil.Process().children(recursive=True)]:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                out.append([component(pid), *inodes[int(target[8:-1])]])
    return sorted(set(map(tuple, out)))


token = Path.home() / ".ray" / "auth_token"
if os.environ.get("PROBE_OLD_TOKEN"):  # a token an earlier run left readable by everyone
    token.parent.mkdir(mode=0o755)
    token.write_text("0" * 64)
    token.chmod(0o644)
started = init_ray(None)
try:
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
    want = {"driver", "gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "worker"}
    deadline = time.time() + 30
    found = sockets()
    while not want <= {c for c, _, _ in found} and time.time() < deadline:
        time.sleep(0.25)  # the agents come up beside the raylet, not before ray.init returns
        found = sockets()
    print("RESULT " + json.dumps({
        "started": started, "sockets": found,
        "token_mode": token.stat().st_mode & 0o777 if token.exists() else None,
        "dir_mode": token.parent.stat().st_mode & 0o777 if token.parent.exists() else None,
    }))
finally:
    ray.shutdown()
"""


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1: loopback on an IPv6 socket
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.mark.parametrize("old_token", [False, True], ids=["new-token", "world-readable-token"])
def test_local_ray_listens_on_loopback_only_and_keeps_its_token_private(tmp_path, old_token):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env |= {"HOME": str(tmp_path), "PYTHONPATH": os.getcwd()} | ({"PROBE_OLD_TOKEN": "1"} if old_token else {})
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["started"] is True
    components = {c for c, _, _ in result["sockets"]}
    # the probe saw the servers it is about (else "nothing listens on a public address" would be vacuous)
    assert {"driver", "gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "worker"} <= components, result
    exposed = [s for s in result["sockets"] if not _loopback(s[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    # the token of this local Ray (Ray turns token authentication on for it): its owner's only, whether Ray
    # wrote it now or it was there before
    assert result["token_mode"] == 0o600, oct(result["token_mode"] or 0)
    assert result["dir_mode"] & 0o022 == 0, oct(result["dir_mode"])


def test_fit_on_ray_starts_its_local_ray_through_init_ray(monkeypatch, tmp_path):
    """Training without a Ray started first (the ``training`` API on its own) starts the same protected local Ray:
    ``ray.init`` sees init_ray's local start, not a bare ``ray.init(address=None)``."""
    import ray

    from training.config import TrainConfig
    from training.ray_train import fit_on_ray

    class Stop(Exception):
        pass

    calls = []

    def fake_init(*args, **kwargs):
        from ray._private.services import get_node_ip_address

        calls.append(kwargs | {"node_ip": get_node_ip_address()})  # what Ray would take this node's address to be
        raise Stop

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # whatever token Ray's setup writes lands here
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # also when the session's Ray is up:
    monkeypatch.setattr(ray._private.worker, "_global_node", None)  # its node would answer for this one's address
    monkeypatch.setattr(ray, "init", fake_init)
    cfg = TrainConfig(data=[str(tmp_path / "sel")], output=str(tmp_path / "out"), ray_workers=1)
    with pytest.raises(Stop):
        fit_on_ray(cfg, None, "model", bf16=False, progress=False, resume=None)
    assert len(calls) == 1
    assert calls[0].get("address") == "local" and calls[0].get("include_dashboard") is False, calls[0]
    assert calls[0]["node_ip"] == "127.0.0.1", calls[0]


def test_a_local_ray_that_starts_too_slowly_is_one_error_line(monkeypatch, tmp_path):
    """On an overloaded machine Ray's node start-up can time out (seen with two Rays starting at once beside a
    CPU-burning process): ``ray.init`` raises a bare Exception, which was a traceback through Ray. Expected: one
    HardfocusError line saying what happened and that the same command resumes; other errors of ray.init pass."""
    import ray

    from hardfocus.ray_local import init_ray
    from scoring import HardfocusError

    def slow_node(*args, **kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # whatever token Ray's setup writes lands here
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # also when the session's Ray is up
    monkeypatch.setattr(ray, "init", slow_node)
    with pytest.raises(HardfocusError, match="did not start in time") as caught:
        init_ray(None)
    assert "\n" not in str(caught.value) and "run the same command again" in str(caught.value)
    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("another failure")))
    with pytest.raises(RuntimeError, match="another failure"):
        init_ray(None)
