"""`hardfocus run` in the tests: one config over a small real-text corpus (tests/test_run.py, and the same run
with its workdir on s3:// in tests/reliability/test_object_store_training.py), the command, and its stages line."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from pipelines.cli import app
from tests.conftest import real_texts, write_jsonl


def write_run_config(root: Path, model: str) -> Path:
    """corpus/train (80 real-text rows, groups code and prose, 8 of them marked), corpus/heldout (20 rows) and
    run.toml: scoring in-process, drop the top 10% then keep half (40 rows), 3 training steps, evaluation; the
    workdir is root/work."""
    texts = real_texts(100, seed=3)
    rows = [{"text": t, "group": "code" if "def " in t or "import" in t else "prose"} for t in texts]
    for i in range(0, 80, 10):  # a label only the final report reads
        rows[i]["mark"] = "labelled"
    write_jsonl(root / "corpus" / "train" / "a.jsonl", rows[:80])
    write_jsonl(root / "corpus" / "heldout" / "a.jsonl", rows[80:])
    path = root / "run.toml"
    path.write_text(f"""
[run]
workdir = "{root / 'work'}"
data = ["{root / 'corpus' / 'train'}"]
heldout = ["{root / 'corpus' / 'heldout'}"]
model = "{model}"
label_column = "mark"

[score]
executor = "local"
dtype = "float32"
max_tokens = 64

[select]
drop_top = 0.1
keep = 0.5

[train]
max_steps = 3
batch_size = 4
precision = "fp32"
learning_rate = 1e-3

[eval]
dtype = "float32"
max_tokens = 64
executor = "local"
""")
    return path


def invoke_run(*args) -> str:
    """`hardfocus -q run ARGS` in this process; its output (the exit status checked)."""
    result = CliRunner().invoke(app, ["-q", "run", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def stages_line(output: str) -> str:
    """The stages line without the time of each stage run (checked to be there, then dropped)."""
    line = next(line for line in output.splitlines() if line.startswith("stages run:"))
    ran = line.removeprefix("stages run: ").split(";")[0]
    assert ran == "none" or all(re.fullmatch(r"\w+ \((\d+m\d\ds|\d+s)\)", s) for s in ran.split(", ")), line
    return re.sub(r" \((\d+m\d\ds|\d+s)\)", "", line)
