"""Every `hardfocus` command in the README and the docs parses against the real CLI, their TOML examples validate,
the config reference is the one generated from the config models, and the docs site builds with no broken link."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer

from pipelines.cli import app
from pipelines.config import build_eval_config, build_score_config, build_select_config, build_train_config
from pipelines.docs import BEGIN, END, config_reference
from pipelines.run_config import load_run_config
from tests.docs import ROOT, pages

TEXTS = {p.relative_to(ROOT).as_posix(): p.read_text() for p in pages()}


def readme_commands() -> list[str]:
    commands = []
    for block in (b for text in TEXTS.values() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("hardfocus "):
                commands.append(line)
    return commands


def test_readme_has_the_commands_of_every_stage():
    used = {shlex.split(c)[1] for c in readme_commands()}
    assert {"run", "score", "select", "report", "train", "eval", "submit"} <= used


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    cli = typer.main.get_command(app)
    args = shlex.split(command)[1:]
    with cli.make_context("hardfocus", list(args), resilient_parsing=False) as ctx:
        sub = cli.get_command(ctx, args[0])
        assert sub is not None, f"unknown command {args[0]}"
        sub.make_context(args[0], list(args[1:]), parent=ctx)  # raises on an unknown flag or a bad value


def test_readme_toml_examples_validate(tmp_path):
    """Every TOML example validates as what it is: a run config, or stage tables (an unknown key is an error)."""
    blocks = [b for text in TEXTS.values() for b in re.findall(r"```toml\n(.*?)```", text, flags=re.S)]
    assert blocks, "the docs show no TOML example"
    stages = {"score": build_score_config, "select": build_select_config, "train": build_train_config,
              "eval": build_eval_config}
    for block in blocks:
        path = tmp_path / "c.toml"
        path.write_text(block)
        raw = tomllib.loads(block)
        if "run" in raw:
            load_run_config(path)
            continue
        assert raw and set(raw) <= set(stages), f"a TOML example with tables {sorted(raw)}:\n{block}"
        for table in raw:
            stages[table](path, {})


def test_config_reference_is_generated_from_the_models():
    text = TEXTS["docs/reference/config.md"]
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == config_reference(), "regenerate it: python -m pipelines.docs --write"


def test_readme_is_a_map():
    """The README stays a map (what, quick start, concepts, one example per stage, where to read on); the reference
    lives in docs/, and every docs page it names exists."""
    readme = TEXTS["README.md"]
    assert len(readme.splitlines()) <= 350
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target


def test_docs_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, or a page missing from the nav, fails the build."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, env=os.environ | {"NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
