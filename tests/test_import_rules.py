"""The layering the architecture page draws: the four stages side by side on one floor, the foundation (``hardfocus``)
under them, ``pipelines`` above. A stage imports the foundation and itself, never another stage and never
``pipelines``; the foundation imports no stage and no heavy library at import time; only ``pipelines`` wires stages
together. No exceptions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOUNDATION = "hardfocus"
STAGES = ("scoring", "selection", "training", "exporting")
ABOVE = ("pipelines", "benchmarks")
HEAVY = ("torch", "transformers", "ray", "polars", "matplotlib")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def _violations(package: str, allowed) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            if not allowed(module):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_the_foundation_and_itself_only(stage):
    def allowed(module: str) -> bool:
        top = _top(module)
        return top not in (*STAGES, *ABOVE) or top == stage

    assert _violations(stage, allowed) == []


def test_the_foundation_imports_no_stage():
    assert _violations(FOUNDATION, lambda module: _top(module) not in (*STAGES, *ABOVE)) == []


def test_every_package_of_the_distribution_is_a_stage_the_foundation_or_pipelines():
    """A new top-level package is placed in the house on purpose (and so under these rules), never by accident."""
    import tomllib

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in found) == sorted([FOUNDATION, *STAGES, "pipelines"])


def test_importing_the_foundation_and_a_stage_loads_no_other_stage():
    """At run time too: a Ray Train worker that imports training's modules must not load another stage, and the
    foundation loads no heavy library."""
    code = (
        "import sys, importlib, pkgutil\n"
        "import hardfocus\n"
        "for m in pkgutil.walk_packages(hardfocus.__path__, 'hardfocus.'):\n"
        "    importlib.import_module(m.name)\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('heavy', heavy)\n"
        "for name in ('training.job', 'training.sources', 'training.data', 'training.store', 'training.raw_shards',\n"
        "             'selection.job', 'exporting.job'):\n"
        "    importlib.import_module(name)\n"
        "others = sorted(m for m in sys.modules if m.split('.')[0] in ('scoring', 'pipelines'))\n"
        "print('others', others)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["heavy"] == "[]", "the foundation imports a heavy library at import time"
    assert lines["others"] == "[]", "training, selection or export loads scoring or pipelines"
