"""A real local Ray cluster from `ray start --head`, for the tests that need one (RAY_ADDRESS, Ray Jobs)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(dashboard_port: int | None = None, resources: dict | None = None):
    """Yield (address, temp dir) of a head node from `ray start --block`, in its own process group, so
    teardown stops this cluster only (`ray stop` would stop every Ray on the machine). With
    ``dashboard_port`` the dashboard (and so the Job Submission API) listens there; ``resources`` are
    the node's custom resources."""
    ray = _ray_command()
    temp = tempfile.mkdtemp(prefix="hf-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    dashboard = (
        [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
        if dashboard_port else ["--include-dashboard=false"]
    )
    # the cluster's environment: a job's entrypoint `python` is this interpreter, as on a real cluster's nodes
    env = _cluster_env()
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--num-cpus=2", f"--port={free_port()}", *dashboard, *_agent_port_flag(),
         f"--temp-dir={temp}", "--disable-usage-stats", *_resources_flag(resources)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env,
    )
    address, seen = None, []
    for line in head.stdout:  # the head prints its address once it is up
        seen.append(line)
        if found := re.search(r"--address='([^']+)'", line):
            address = found.group(1)
            break
    assert address, "".join(seen)
    try:
        yield address, Path(temp)
    finally:
        _stop_group(head)
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def ray_worker_node(address: str, resources: dict | None = None, num_cpus: int = 2):
    """A second node joining the cluster at ``address`` (`ray start --address --block`), on this machine,
    with its own raylet and object store; stopped with its process group on exit."""
    node = subprocess.Popen(
        [_ray_command(), "start", f"--address={address}", "--block", f"--num-cpus={num_cpus}", "--disable-usage-stats",
         *_agent_port_flag(), *_resources_flag(resources)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=_cluster_env() | {"RAY_AUTH_MODE": "token"},  # the head enabled token authentication; the token is shared
    )
    seen = []
    for line in node.stdout:  # it prints this once its raylet has joined
        seen.append(line)
        if "Ray runtime started" in line:
            break
    assert node.poll() is None, "".join(seen)
    try:
        yield
    finally:
        _stop_group(node)


def _ray_command() -> str:
    return shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"


def _cluster_env() -> dict:
    """The cluster's environment: a job's entrypoint `python` is this interpreter, as on a real cluster's nodes.

    Draining is off: on SIGTERM a node first asks the GCS to drain it and waits up to 30 s (Ray's default, for
    Kubernetes pods); the GCS got the same SIGTERM, so that wait always ran out (33 s of every teardown)."""
    return os.environ | {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                         "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


def _agent_port_flag() -> list[str]:
    """A free port for the node's dashboard agent, which serves the Job Submission API: its fixed default (52365)
    is taken by any other Ray on this machine (the session's, a benchmark's), and then no job can be submitted."""
    return [f"--dashboard-agent-listen-port={free_port()}"]


def _resources_flag(resources: dict | None) -> list[str]:
    return [f"--resources={json.dumps(resources)}"] if resources else []


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of a `ray start --block` (Ray stops its node), SIGKILL if it lingers."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
