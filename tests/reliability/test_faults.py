"""Faults: a killed scoring actor, a killed selection, a killed training run, two runs on one output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import typer.testing

from pipelines.cli import app
from scoring import HardfocusError
from tests.scoring.helpers import assert_same_scores, make_corpus, read_scores
from tests.selection.fake_scores import write_scores
from tests.training.helpers import max_param_diff, mixed_length_sequences, parameters, write_selected
from training.data import load_training_data

ENV = os.environ | {"PYTHONPATH": os.getcwd()}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "-q", *args]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 900) -> None:  # a bound for a hang: loaded CI is slow
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended first: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            children += [child, *descendants(child)]
    return children


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.ray
@pytest.mark.parametrize("actors", [
    pytest.param([], id="one-actor"),  # the default on a local Ray: one actor reads and scores; a new one finishes
    pytest.param(["--actors", "2", "--cpus-per-actor", "0.5"], id="ray-data"),  # Ray Data retries the unit
])
def test_sigkill_one_scoring_actor_mid_job(tmp_path, scored_corpus, actors):
    """The killed actor's work is done again by another: still exactly one row per input row, same losses."""
    s = scored_corpus["settings"]
    common = ["--model", s["model"], "--dtype", s["dtype"], "--group-column", s["group_column"],
              "--max-tokens", str(s["max_tokens"]), "--rows-per-unit", str(s["rows_per_unit"]),
              "--token-budget", str(s["token_budget"]), *actors]
    reference = scored_corpus["result"]
    out = tmp_path / "scores"
    proc = subprocess.Popen(cli("score", str(scored_corpus["inputs"]), "-o", str(out), *common), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 3, proc)
        scorers = [p for p in descendants(proc.pid) if "Scorer" in cmdline(p)]  # ray::ShardsScorer, ray::UnitScorer
        assert scorers, "no scoring actor found"
        os.kill(scorers[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    df = read_scores(out)
    assert df.height == reference.manifest.rows == df["sample_id"].n_unique() == 101
    assert_same_scores(df, read_scores(scored_corpus["reference"]))


def test_two_score_runs_on_one_output(tmp_path, tiny_model_dir):
    """While one process runs (holds the output's lock), a second `hardfocus score` (here, in this process) refuses;
    then it can run."""
    make_corpus(tmp_path, n_parquet=60, n_jsonl=30)
    out = tmp_path / "scores"
    holder = subprocess.Popen(  # the first run, stopped just after it took the output (deterministic, unlike timing)
        [sys.executable, "-c", "import sys, time\nfrom scoring.output import ScoresDir\n"
         f"d = ScoresDir({str(out)!r}); d.lock(); print('locked', flush=True); time.sleep(600)"],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )
    args = ["-q", "score", str(tmp_path / "in"), "-o", str(out), "--model", tiny_model_dir, "--executor", "local",
            "--dtype", "float32"]
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = typer.testing.CliRunner().invoke(app, args)
        assert second.exit_code == 2, second.output  # a user error (a bug would exit 1 with its traceback)
        assert second.stderr.strip().splitlines()[-1].startswith("error: another hardfocus run is writing to")
        assert not list(out.glob("part-*"))  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()
    after = typer.testing.CliRunner().invoke(app, args)  # the lock died with its holder
    assert after.exit_code == 0, after.output
    assert read_scores(out)["sample_id"].n_unique() == 91


def test_kill_select_while_it_writes(tmp_path):
    """No partial selected/ is ever accepted by train; a rerun produces the full result."""
    rng = np.random.default_rng(0)
    n = 300_000
    write_scores(tmp_path / "scores", rng.gamma(4, 0.7, n).tolist(), rng.choice(["a", "b"], n).tolist(),
                 rows_per_part=2000)
    sel = tmp_path / "selected"
    staging = lambda: [p for p in tmp_path.glob(".selected.tmp-*") if list(p.glob("part-*.parquet"))]  # noqa: E731
    for _attempt in range(3):  # on a loaded machine the run may finish between seeing its staging dir and the kill
        proc = subprocess.Popen(cli("select", str(tmp_path / "scores"), "-o", str(sel), "--no-report"), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.time() + 240
        while not staging() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not sel.exists():
            break
        shutil.rmtree(sel)  # it finished first: nothing partial to check, try again
    assert staging(), "the selection never left a staging directory with parts behind"
    assert not sel.exists()
    for partial in staging():  # even pointed at the staging directory itself, training refuses it
        with pytest.raises(HardfocusError, match="did not finish"):
            load_training_data([str(partial)])
    again = typer.testing.CliRunner().invoke(app, ["-q", "select", str(tmp_path / "scores"), "-o", str(sel), "--no-report"])
    assert again.exit_code == 0, again.output  # in this process: saves a CLI start
    assert not list(tmp_path.glob(".selected.tmp-*"))  # the killed run's staging directory was cleared
    summary = json.loads((sel / "summary.json").read_text())
    kept = pl.read_parquet(f"{sel}/part-*.parquet")
    assert kept.height == summary["bands"]["kept"] == int(n * 0.5)
    assert len(load_training_data([str(sel)])) == kept.height


def test_a_part_cut_short_by_a_kill_is_refused_with_what_to_do(tmp_path):
    """A run killed while writing leaves a truncated part: training says the selection did not finish (no crash)."""
    rng = np.random.default_rng(1)
    write_scores(tmp_path / "scores", rng.gamma(4, 0.7, 500).tolist(), ["a"] * 500, rows_per_part=100)
    part = sorted((tmp_path / "scores").glob("part-*.parquet"))[0]
    staging = tmp_path / ".selected.tmp-1"
    staging.mkdir()
    (staging / "part-00000.parquet").write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(HardfocusError, match="did not finish"):
        load_training_data([str(staging)])
    (tmp_path / "tokens").mkdir()  # a directory of token parts (no marker) whose second part is cut short
    (tmp_path / "tokens" / "part-0.parquet").write_bytes(part.read_bytes())
    (tmp_path / "tokens" / "part-1.parquet").write_bytes(part.read_bytes()[:100])
    with pytest.raises(HardfocusError, match="part-1.parquet.*damaged after it was written"):
        load_training_data([str(tmp_path / "tokens")])


def test_kill_train_then_resume_from_the_last_checkpoint(tmp_path, tiny_model_dir):
    data = write_selected(tmp_path / "sel", mixed_length_sequences(64, vocab=290, seed=9), weights=list(np.linspace(0.5, 1.5, 64)))
    args = ["train", data, "--model", tiny_model_dir, "--max-steps", "60", "--save-steps", "10", "--batch-size", "4",
            "--precision", "fp32", "--learning-rate", "1e-3", "--weighting", "static+online", "--save-total-limit", "20"]
    reference = typer.testing.CliRunner().invoke(app, ["-q", *args, "-o", str(tmp_path / "ref")])  # uninterrupted, in-process
    assert reference.exit_code == 0, reference.output
    out = tmp_path / "model"
    proc = subprocess.Popen(cli(*args, "-o", str(out)), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    wait_for(lambda: (out / "checkpoints" / "checkpoint-20" / "trainer_state.json").exists(), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "train_manifest.json").exists()
    from training.checkpoints import resumable_checkpoint  # the newest complete one: a kill may cut the next one short

    last = int(Path(resumable_checkpoint(out / "checkpoints")).name.split("-")[1])
    assert 20 <= last < 60
    resumed = typer.testing.CliRunner().invoke(app, ["-q", *args, "-o", str(out)])  # in this process: saves a CLI start
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["steps"] == 60 and manifest["resumed_from"].endswith(f"checkpoint-{last}")
    assert max_param_diff(parameters(str(out)), parameters(str(tmp_path / "ref"))) < 1e-5
