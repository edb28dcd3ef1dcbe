"""The benchmarks' shared harness and the scoring benchmark's plain-loop arm: what they compute, not how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).parent.parent


@pytest.fixture
def bench():
    from benchmarks import harness

    return harness


def test_ratio_and_load_cells(bench):
    assert bench.ratio(3.0, 2.0) == "1.50x" and bench.ratio(1, 3, digits=1) == "0.3x"
    assert bench.ratio(1.0, 0.0) == bench.ratio(None, 1.0) == bench.ratio(float("nan"), 1.0) == "n/a"
    assert bench.load_cell(0.05) == "0.05"
    assert bench.load_cell(bench.CONTENDED_OTHER_LOAD + 0.01) == "0.21 (contended)"
    assert bench.load_cell(None) == bench.load_cell(float("nan")) == "n/a"


def test_results_table_gives_every_arm_against_the_plain_loop(bench):
    from benchmarks import speed_report

    rows = [_row("a", 400.0), _row("plain", 800.0), _row("c1", 1000.0)]
    table = speed_report.results_table(rows)
    assert "vs plain loop" in table.splitlines()[0]
    cells = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").rsplit(" | ", 1)[1] for line in table.splitlines()[2:]}
    assert cells == {"(a)": "0.50x", "(plain)": "1.00x", "(c1)": "1.25x"}  # tokens/s over the plain loop's 800
    # results from before the plain arm keep their columns
    assert "vs plain loop" not in speed_report.results_table([r for r in rows if r["arm"] != "plain"])


def _row(arm: str, tokens_per_s: float) -> dict:
    return {"arm": arm, "title": f"({arm})", "docs": 3, "scored_tokens": 300, "positions": 320, "setup_s": 1.0,
            "seconds": 300 / tokens_per_s, "other_load": 0.0, "tokens_per_s": tokens_per_s, "useful_gflops": 1.0,
            "utilisation_bf16_peak": 0.1, "speedup_vs_a": tokens_per_s / 400, "extra": {}}


def test_run_measured_reports_the_childs_peak_memory_and_cpu(tmp_path):
    """Measured from a small process, as a benchmark script is: ``ru_maxrss`` of a forked child counts the pages
    it shared with its parent before ``exec``, so from inside this test session (GBs) it would read the parent's."""
    code = "b = bytearray(300_000_000); b[::4096] = b'x' * len(b[::4096]); print('held')"
    driver = ("import json, sys; from pathlib import Path; from benchmarks import harness; "
              f"print(json.dumps(harness.run_measured([sys.executable, '-c', {code!r}], Path({str(tmp_path / 'child.log')!r}), "
              "mem_limit_bytes=4e9)))")
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["returncode"] == 0 and not r["oom"] and "held" in r["log_tail"]
    assert 0.3 <= r["peak_rss_gb"] < 1.0  # its 300 MB (every page touched) plus the interpreter
    assert r["cpu_seconds"] > 0 and r["other_load"] >= 0


def test_run_measured_kills_a_child_past_the_memory_limit(bench, tmp_path):
    code = "import time; b = bytearray(400_000_000); b[::4096] = b'x' * len(b[::4096]); time.sleep(60)"
    r = bench.run_measured([sys.executable, "-c", code], tmp_path / "child.log", mem_limit_bytes=2e8)
    assert r["oom"] and r["returncode"] == -9 and r["seconds"] < 60


def test_tree_cpu_counts_a_descendants_cpu_time(bench):
    """A child burns 0.5 CPU-seconds (by its own clock) and waits: the tree meter sees at least that, and no more
    than that plus its interpreter's start-up."""
    code = ("import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
            "print('done', flush=True)\nsys.stdin.read()")
    tree = bench.TreeCpu(interval=0.05)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"
        used = tree.stop()  # the child is alive: its final CPU time is read
    finally:
        child.communicate("")
    assert 0.5 <= used < 2.0


def test_plain_loop_equals_the_models_own_loss(bench, tiny_model_dir):
    """The plain-loop arm (right padding without a mask, sorted token-budget batches) gives each document's NLL
    sum as the model's own ``labels=`` loss of that document alone."""
    from transformers import AutoModelForCausalLM

    from benchmarks import speed_arms

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rng = np.random.default_rng(3)
    seqs = [rng.integers(3, 290, size=n).astype(np.int32) for n in (40, 7, 23, 40, 2, 31)]
    sums = speed_arms.plain_loop(model, seqs, pad_id=0, token_budget=64)  # several batches, padded ones among them
    with torch.inference_mode():
        want = [float(model(input_ids=torch.tensor(s, dtype=torch.long)[None], labels=torch.tensor(s, dtype=torch.long)[None]).loss)
                * (len(s) - 1) for s in seqs]
    np.testing.assert_allclose(sums, want, rtol=1e-4, atol=1e-4)


def test_every_benchmark_imports_as_a_module_of_the_package_and_leaves_sys_path_alone():
    """`python -m benchmarks.<name>` is the one way to run them: each module imports as part of the package (its
    siblings as ``benchmarks.*``), and importing it changes no ``sys.path``."""
    import importlib

    before = list(sys.path)
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        assert module.__name__ == f"benchmarks.{name}"
    assert sys.path == before
    assert {"harness", "scoring_speed", "training_speed", "selection_speed", "quality"} <= set(names)
