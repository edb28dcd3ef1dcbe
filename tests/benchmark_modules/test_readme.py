"""``benchmarks/README.md`` cannot drift from the benchmarks: each command in it runs a benchmark module that accepts
the flags given, and each result it links exists."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import shlex
import sys

import pytest

from tests.docs import ROOT

README = ROOT / "benchmarks" / "README.md"
# the headline table's commands (one per row, the second column)
COMMANDS = sorted({row.split(" | ")[1].strip("`") for row in README.read_text().splitlines()
                   if row.startswith("| ") and " | `python -m benchmarks." in row})


class _Parsed(Exception):
    """Raised in place of running the benchmark, once its arguments parsed."""


def test_the_readme_names_every_benchmark_with_a_result():
    """Each module that writes a result is in the table, and every result file linked exists."""
    named = {shlex.split(c)[2].split(".")[1] for c in COMMANDS}
    results = {p.stem.split("-")[0] for p in (ROOT / "benchmarks" / "results").glob("*.md")}
    assert results <= named, f"benchmarks with results but no row in the README: {sorted(results - named)}"
    for link in re.findall(r"\]\((results/[^)]+)\)", README.read_text()):
        assert (README.parent / link).is_file(), link


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_benchmark_command_parses(command, monkeypatch):
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"]
    module = importlib.import_module(argv[2])
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [argv[2], *argv[3:]])
    with pytest.raises(_Parsed):  # a flag the benchmark does not know exits with argparse's error instead
        module.main(argv[3:]) if inspect.signature(module.main).parameters else module.main()
