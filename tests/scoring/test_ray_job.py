"""The Ray Data path: same rows and losses as in-process; SIGKILL mid-run, rerun resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from scoring import ScoreConfig, score
from tests.scoring.helpers import assert_same_scores, make_corpus, read_scores

pytestmark = pytest.mark.ray


def _cfg(tmp_path, model, output: str, **kw) -> ScoreConfig:
    base = dict(
        inputs=[str(tmp_path / "in")], output=str(tmp_path / output), model=model, dtype="float32", device="cpu",
        group_column="domain", max_tokens=64, rows_per_unit=10, token_budget=512,
    )
    return ScoreConfig(**(base | kw))


def test_ray_job_equals_in_process_job(tmp_path, tiny_model_dir):
    make_corpus(tmp_path)
    local = score(_cfg(tmp_path, tiny_model_dir, "local", executor="local"), progress=False)
    on_ray = score(_cfg(tmp_path, tiny_model_dir, "ray", executor="ray", actors=1), progress=False)
    assert on_ray.manifest.rows == local.manifest.rows == 67
    assert on_ray.manifest.rows_by_status == local.manifest.rows_by_status
    assert_same_scores(read_scores(tmp_path / "ray"), read_scores(tmp_path / "local"))


def test_sigkill_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_model_dir):
    """Kill the whole `hardfocus score` run (driver, Ray and actors) after some parts exist, then rerun."""
    make_corpus(tmp_path, n_parquet=150, n_jsonl=90)
    reference = score(_cfg(tmp_path, tiny_model_dir, "reference", executor="local", rows_per_unit=5), progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.cli", "-q", "score", str(tmp_path / "in"), "-o", str(out),
           "--model", tiny_model_dir, "--dtype", "float32", "--device", "cpu", "--group-column", "domain",
           "--max-tokens", "64", "--rows-per-unit", "5", "--token-budget", "512"]
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(list(out.glob("part-*.parquet"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # a Ray worker of the killed run may still finish a part after this: what counts is what the rerun finds
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    total = reference.manifest.parts
    assert 3 <= len(finished) < total and not (out / "manifest.json").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    df = read_scores(out)
    assert df.height == reference.manifest.rows == 241  # 150 + 90 + one bad JSON line
    assert df["sample_id"].n_unique() == df.height  # 0 lost, 0 duplicated
    assert_same_scores(df, read_scores(tmp_path / "reference"))
    import json

    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert runs[-1]["units_scored"] + runs[-1]["units_reused"] == total and runs[-1]["units_reused"] >= len(finished)
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished  # no finished part scored again

    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and json.loads((out / "manifest.json").read_text())["runs"] == runs  # a no-op
