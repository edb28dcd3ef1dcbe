"""A SIGKILLed export, rerun, writes every row exactly once: the same files, byte for byte, as a run never stopped
(its parts are deterministic, each a commit). The kill lands wherever the run happens to be when the test sees it
has begun writing; a run that finished first (a loaded machine) is run again, so no timing is assumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from selection import SelectConfig, select
from tests.exporting.helpers import fake_scores, run_export, snapshot

ROWS = 3000


@pytest.fixture(scope="module")
def big_selection(tmp_path_factory) -> Path:
    """A JSON Lines shard of 3000 rows, scores for it (made up, in the exact contract) and a selection of them."""
    root = tmp_path_factory.mktemp("kill")
    shard = root / "in" / "docs.jsonl"
    shard.parent.mkdir()
    shard.write_text("".join(json.dumps({"text": f"document {i} " * (1 + i % 7), "i": i}) + "\n" for i in range(ROWS)))
    fake_scores(root / "scores", shard, ROWS)
    select(SelectConfig(scores=[str(root / "scores")], output=str(root / "selected"), temperature=0.3, report=False),
           progress=False)
    return root / "selected"


def _killed_run(selected: Path, out: Path, args: list[str]) -> None:
    """Run the CLI, SIGKILL it once it has written something and before it finishes (again if it finished first)."""
    cmd = [sys.executable, "-m", "pipelines.cli", "-q", "export", str(selected), "-o", str(out), "--executor", "local", *args]
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    for _attempt in range(5):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if any(out.glob("part-*")) or any(out.glob("spill/*.parquet")):
                break
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (out / "export.json").exists():
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
            return
        shutil.rmtree(out)  # it finished before the kill: nothing interrupted to check, try again
    pytest.fail("every run finished before it could be killed")


@pytest.mark.parametrize("args", [["--band", "all", "--shard-rows", "20"],
                                  ["--resample", "2", "--seed", "3", "--shard-rows", "20"]], ids=["direct", "resample"])
def test_sigkill_mid_export_then_rerun_writes_every_row_once(big_selection, tmp_path, args):
    out = tmp_path / "out"
    _killed_run(big_selection, out, args)
    options = dict(zip([a.removeprefix("--").replace("-", "_") for a in args[::2]], args[1::2]))
    kw = {"band": options.get("band", "kept"), "shard_rows": int(options["shard_rows"]),
          **({"resample": float(options["resample"]), "seed": int(options["seed"])} if "resample" in options else {})}
    resumed = run_export(big_selection, out, **kw)
    reference = run_export(big_selection, tmp_path / "reference", **kw)
    assert snapshot(out) == snapshot(tmp_path / "reference")
    assert resumed.manifest.model_dump(exclude={"versions"}) == reference.manifest.model_dump(exclude={"versions"})
    rows = pl.concat([pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])
    if "resample" in kw:
        kept = json.loads((big_selection / "summary.json").read_text())["bands"]["kept"]
        assert rows["sample_id"].n_unique() <= kept and rows.height == resumed.manifest.rows
    else:
        assert rows.height == rows["sample_id"].n_unique() == ROWS  # each row once
        assert sorted(rows["i"].to_list()) == list(range(ROWS))
    assert not (out / "spill").exists() and not list(out.glob(".tmp-*"))
