"""Every `hardfocus` command in the README parses against the real CLI, its TOML examples validate, and
its config reference is the one generated from the config models."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import typer

from pipelines.cli import app
from pipelines.config import build_eval_config, build_score_config, build_select_config, build_train_config
from pipelines.docs import BEGIN, END, config_reference
from pipelines.run_config import load_run_config

README = (Path(__file__).parent.parent / "README.md").read_text()


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
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
    blocks = re.findall(r"```toml\n(.*?)```", README, flags=re.S)
    assert blocks, "the README shows no TOML example"
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
    start, end = README.index(BEGIN), README.index(END) + len(END)
    assert README[start:end] == config_reference(), "regenerate it: python -m pipelines.docs"
