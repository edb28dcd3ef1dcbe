"""The Ray Data path: same rows and losses as in-process; SIGKILL mid-run, rerun resumes exactly."""

from __future__ import annotations

import json
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


def test_ray_job_equals_in_process_job(tmp_path, tiny_model_dir, local_ray):
    make_corpus(tmp_path)
    local = score(_cfg(tmp_path, tiny_model_dir, "local", executor="local"), progress=False)
    on_ray = score(_cfg(tmp_path, tiny_model_dir, "ray", executor="ray", actors=1), progress=False)
    assert on_ray.manifest.rows == local.manifest.rows == 67
    assert on_ray.manifest.rows_by_status == local.manifest.rows_by_status
    assert_same_scores(read_scores(tmp_path / "ray"), read_scores(tmp_path / "local"))


def test_sigkill_then_rerun_loses_and_duplicates_nothing(tmp_path, scored_corpus, local_ray):
    """Kill the whole `hardfocus score` run (driver, the Ray it started and its actors) after some parts exist, then
    rerun: the library call the command makes, in this process on the session's Ray (saves a CLI and a Ray start)."""
    reference, s = scored_corpus["result"], scored_corpus["settings"]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.cli", "-q", "score", str(scored_corpus["inputs"]), "-o", str(out),
           "--model", s["model"], "--dtype", s["dtype"], "--device", s["device"], "--group-column", s["group_column"],
           "--max-tokens", str(s["max_tokens"]), "--rows-per-unit", str(s["rows_per_unit"]),
           "--token-budget", str(s["token_budget"])]
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

    cfg = ScoreConfig(inputs=[str(scored_corpus["inputs"])], output=str(out), **s)  # the command's flags
    rerun = score(cfg, progress=False)
    df = read_scores(out)
    assert df.height == reference.manifest.rows == 101  # 60 + 40 + one bad JSON line
    assert df["sample_id"].n_unique() == df.height  # 0 lost, 0 duplicated
    assert_same_scores(df, read_scores(scored_corpus["reference"]))
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert len(runs) == 1 and rerun.units_scored == runs[-1]["units_scored"]  # the killed run recorded no run
    assert runs[-1]["units_scored"] + runs[-1]["units_reused"] == total and runs[-1]["units_reused"] >= len(finished)
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == finished  # no finished part scored again

    third = score(cfg, progress=False)
    assert third.units_scored == 0 and json.loads((out / "manifest.json").read_text())["runs"] == runs  # a no-op
