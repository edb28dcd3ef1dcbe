"""RAY_ADDRESS: the same `hardfocus score` command runs on a real (local) Ray cluster started with `ray start`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.ray_cluster import free_port, ray_head
from tests.s3 import s3_environment_before_ray
from tests.scoring.helpers import make_corpus, read_scores

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster(request):
    """(address, temp dir, dashboard port) of one head for this module: a custom resource ``scorer`` (the two-node
    test puts an actor on each node with it) and the dashboard (its state API says where the actors ran); started
    after the S3 server, whose endpoint its workers inherit."""
    s3_environment_before_ray(request)
    dashboard = free_port()
    with ray_head(dashboard_port=dashboard, resources={"scorer": 1}) as (address, cluster_dir):
        yield address, cluster_dir, dashboard


def _driver_logs(cluster_dir) -> set[str]:
    return {p.name for p in (cluster_dir / "session_latest" / "logs").iterdir() if p.name.startswith("python-core-driver-")}


def test_score_runs_on_the_cluster_named_by_ray_address(tmp_path, tiny_model_dir, ray_cluster):
    address, cluster_dir, _ = ray_cluster
    drivers_before = _driver_logs(cluster_dir)
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
    # a cluster is not the Ray of its own that the one-actor path is for (RAY_ADDRESS, and every submitted job): the
    # Ray Data job, whose read tasks run on any node
    assert "Ray: 1 scoring actor(s)" in run.stderr and "reading its shards itself" not in run.stderr
    # the cluster itself saw our driver (a fresh local Ray would log elsewhere): a driver log that was not there before
    assert _driver_logs(cluster_dir) - drivers_before, sorted(_driver_logs(cluster_dir))
    df = read_scores(out)
    assert df.height == 31 and df["sample_id"].n_unique() == 31
    assert json.loads((out / "manifest.json").read_text())["rows"] == 31


# The driver: a process of its own, since Ray reads RAY_AUTH_MODE when it is imported.
_TWO_NODE_DRIVER = """
import json, sys
import ray
from ray.util.state import list_actors
from scoring import ScoreConfig, score
cfg, dashboard = json.loads(sys.argv[1]), f"http://127.0.0.1:{sys.argv[2]}"
# both actors up before any unit is handed out (else a fast job may end before the second one starts)
ray.data.DataContext.get_current().wait_for_min_actors_s = 300
earlier = {a.actor_id for a in list_actors(address=dashboard, limit=1000)}  # the cluster ran jobs before this one
result = score(ScoreConfig(**cfg), progress=False)
actors = [a.node_id for a in list_actors(address=dashboard, detail=True, limit=1000)
          if "MapWorker" in a.class_name and a.actor_id not in earlier]
print(json.dumps({"nodes": result.manifest.runs[-1].nodes, "parts": result.manifest.parts, "actors": actors}))
"""


@pytest.mark.s3
def test_two_nodes_one_actor_each_write_to_s3_the_scores_of_one_process(tmp_path, scored_corpus, s3_url, ray_cluster):
    """A head and a second node (their own raylets and object stores), a scoring actor on each (a custom
    resource per node), output on S3 so that no shared local disk is assumed."""
    from tests.ray_cluster import ray_worker_node
    from tests.s3 import download, upload
    from tests.scoring.helpers import assert_same_scores

    inputs = upload(scored_corpus["inputs"], f"{s3_url}/in")
    reference = scored_corpus["result"]
    cfg = scored_corpus["settings"] | dict(inputs=[inputs], output=f"{s3_url}/scores", actors=2, cpus_per_actor=1,
                                           resources_per_actor={"scorer": 1})
    # `ray start` enables token authentication; a client naming the address must opt in to send the token
    env = os.environ | {"RAY_AUTH_MODE": "token", "PYTHONPATH": os.getcwd()}
    address, _, dashboard = ray_cluster
    with ray_worker_node(address, resources={"scorer": 1}):
        run = subprocess.run([sys.executable, "-c", _TWO_NODE_DRIVER, json.dumps(cfg | {"ray_address": address}),
                              str(dashboard)], env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(got["actors"]) == 2 and None not in got["actors"] and len(set(got["actors"])) == 2  # one on each node
    assert sum(got["nodes"].values()) == got["parts"] == reference.manifest.parts
    assert {n.split("/")[1] for n in got["nodes"]} <= {a[:8] for a in got["actors"]}
    assert_same_scores(read_scores(download(f"{s3_url}/scores", tmp_path / "scores")), read_scores(scored_corpus["reference"]))
