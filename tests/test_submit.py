"""`hardfocus submit`: a scoring job submitted to a real local cluster through the Ray Job Submission SDK."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.ray_cluster import free_port, ray_head
from tests.scoring.helpers import make_corpus, read_scores

pytestmark = pytest.mark.ray


def hardfocus(*args: str, token: bool = True) -> subprocess.Popen:
    # `ray start` enables token authentication; the SDK sends the token once the client opts in
    env = os.environ | {"RAY_AUTH_MODE": "token", "PYTHONPATH": os.getcwd()}
    env.pop("RAY_ADDRESS", None)
    if not token:
        env.pop("RAY_AUTH_MODE")
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(*procs: subprocess.Popen, timeout: int = 400) -> list[subprocess.CompletedProcess]:
    """Wait for each process (killing all if one takes too long); their exit status and output."""
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def test_submit_a_scoring_job_and_get_its_status(tmp_path, tiny_model_dir):
    make_corpus(tmp_path, n_parquet=12, n_jsonl=6)
    config = tmp_path / "score.toml"  # carried to the cluster in the job's working_dir
    config.write_text(f'[score]\nmodel = "{tiny_model_dir}"\ndtype = "float32"\ngroup_column = "domain"\n')
    port = free_port()
    with ray_head(dashboard_port=port) as (_, cluster_dir):
        url = f"http://127.0.0.1:{port}"
        # three independent clients at once: their start-ups (each imports hardfocus) and jobs overlap
        refused, ok, failed = finished(
            hardfocus("submit", "--address", url, "score", str(tmp_path / "in"), "-o", str(tmp_path / "o0"),
                      token=False),  # the client does not send the token: one line saying what to set
            hardfocus("submit", "--address", url, "score", str(tmp_path / "in"), "-o", str(tmp_path / "scores"),
                      "-c", str(config), "--rows-per-unit", "8"),
            hardfocus("submit", "--address", url, "score", str(tmp_path / "missing"), "-o", str(tmp_path / "o2"),
                      "-c", str(config)),
        )
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-3000:]
        assert "Traceback" not in refused.stderr and "set RAY_AUTH_MODE=token" in refused.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "o0").exists()
        assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
        assert "SUCCEEDED" in ok.stdout
        assert "python -m pipelines.cli score" in ok.stdout and "config-1-score.toml" in ok.stdout
        assert "scored 19 rows" in ok.stdout or "19 rows" in ok.stdout  # the job's own log, streamed back
        # the job ran on this cluster: its driver log is in the cluster's session
        job_id = re.search(r"^submitted (\S+):", ok.stdout, flags=re.M).group(1)
        assert (cluster_dir / "session_latest" / "logs" / f"job-driver-{job_id}.log").exists()
        assert failed.returncode == 2, failed.stdout[-2000:]  # the CLI's exit status for a user error, passed through
        assert "does not exist" in failed.stdout and "FAILED" in failed.stdout
    df = read_scores(tmp_path / "scores")
    assert df.height == 19 and df["sample_id"].n_unique() == 19
    manifest = json.loads((tmp_path / "scores" / "manifest.json").read_text())
    assert manifest["rows"] == 19 and manifest["group_column"] == "domain"
