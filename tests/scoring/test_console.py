"""Ray's own console lines stay out of hardfocus's output unless --verbose; our logs and errors stay in."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hardfocus.console import native_stderr_to_file
from tests.scoring.helpers import make_corpus

RAY_LINES = ("core_worker", "Execution plan", "Progress bars disabled", "Token authentication", "Full logs are in")


@pytest.fixture
def console_logger():
    """A logger writing to the current sys.stderr, as `logging.basicConfig` sets up the CLI's."""
    logger = logging.getLogger("tests.console")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)


@pytest.fixture(autouse=True)
def not_verbose(caplog):
    """hardfocus logging at INFO (as without -v), whatever level an earlier test left on the root logger."""
    caplog.set_level(logging.INFO, logger="scoring")


def test_native_writes_go_to_a_file_and_python_logs_to_the_console(capfd, console_logger):
    with native_stderr_to_file() as path:
        os.write(2, b"from C++\n")
        console_logger.warning("from Python")
        print("also Python", file=sys.stderr)
        assert Path(path).read_text() == "from C++\n"
    err = capfd.readouterr().err
    assert "from Python" in err and "also Python" in err and "from C++" not in err
    assert not Path(path).exists()  # a clean run leaves nothing behind
    os.write(2, b"after\n")  # fd 2 is the console again
    assert "after" in capfd.readouterr().err


def test_a_failed_block_keeps_the_native_log_and_names_it(capfd, caplog):
    with pytest.raises(RuntimeError), native_stderr_to_file() as path:
        os.write(2, b"raylet died\n")
        raise RuntimeError("job failed")
    assert Path(path).read_text() == "raylet died\n"
    assert any(path in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    Path(path).unlink()


@pytest.mark.ray
def test_a_ray_run_prints_hardfocus_lines_and_none_of_rays(tmp_path, tiny_model_dir):
    make_corpus(tmp_path, n_parquet=12, n_jsonl=4)
    cmd = [sys.executable, "-m", "pipelines.cli", "score", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
           "--model", tiny_model_dir, "--dtype", "float32", "--device", "cpu", "--max-tokens", "64"]
    run = subprocess.run(cmd, env=os.environ | {"PYTHONPATH": os.getcwd()}, capture_output=True, text=True,
                         timeout=900)  # a bound for a hang: a loaded CI machine is slow
    assert run.returncode == 0, run.stderr[-3000:]
    console = run.stdout + run.stderr
    assert "scored 17 rows" in console and "started a local Ray" in console
    assert "reading its shards itself" in console  # a Ray of its own with one CPU actor: the one-actor path
    assert [line for line in console.splitlines() if any(s in line for s in RAY_LINES)] == []
