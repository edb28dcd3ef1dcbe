"""RAY_ADDRESS: the same `hardfocus score` command runs on a real (local) Ray cluster started with `ray start`."""

from __future__ import annotations

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

import pytest

from tests.scoring.helpers import make_corpus, read_scores

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A head node from `ray start --block`, in its own process group, so teardown stops this cluster only
    (`ray stop` would stop every Ray on the machine)."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    temp = tempfile.mkdtemp(prefix="hf-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--num-cpus=2", f"--port={_free_port()}", "--include-dashboard=false",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
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
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_score_runs_on_the_cluster_named_by_ray_address(tmp_path, tiny_model_dir, ray_cluster):
    address, cluster_dir = ray_cluster
    make_corpus(tmp_path, n_parquet=20, n_jsonl=10)
    out = tmp_path / "scores"
    # `ray start` enables token authentication; a client naming the address must opt in to send the token
    env = os.environ | {"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "PYTHONPATH": os.getcwd()}
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "-v", "score", str(tmp_path / "in"), "-o", str(out), "--model", tiny_model_dir,
         "--dtype", "float32", "--group-column", "domain", "--rows-per-unit", "8"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"connected to the Ray cluster at {address}" in run.stderr
    # the cluster itself saw our driver and the scoring actor (a fresh local Ray would log elsewhere)
    logs = [p.name for p in (cluster_dir / "session_latest" / "logs").iterdir()]
    assert any(n.startswith("python-core-driver-") for n in logs), logs
    df = read_scores(out)
    assert df.height == 31 and df["sample_id"].n_unique() == 31
    assert json.loads((out / "manifest.json").read_text())["rows"] == 31
