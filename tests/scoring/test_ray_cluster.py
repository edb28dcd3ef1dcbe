"""RAY_ADDRESS: the same `hardfocus score` command runs on a real (local) Ray cluster started with `ray start`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.ray_cluster import ray_head
from tests.scoring.helpers import make_corpus, read_scores

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_cluster():
    with ray_head() as cluster:
        yield cluster


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
