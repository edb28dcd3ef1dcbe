"""The layering the README states: a stage imports from another stage only the shared foundation
(``scoring.foundation``: errors, storage, the lock and stage-directory protocol, the contracts), never its
machinery; the foundation imports nothing above it and no heavy library at import time; ``pipelines/``
wires the stages together."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOUNDATION = "scoring.foundation"
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


def _package_files(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def _top(module: str) -> str:
    return module.split(".")[0]


def _is_foundation(module: str) -> bool:
    return module == FOUNDATION or module.startswith(FOUNDATION + ".")


def _violations(package: str, allowed) -> list[str]:
    bad = []
    for path in _package_files(package):
        for line, module in _imports(path):
            if not allowed(path, module):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


STAGES = ("scoring", "selection", "training", "exporting", "pipelines")


# what training reads of scoring besides the foundation, in one module: raw shards, read and tokenised as scoring
# reads and tokenises them (the same token ids and statuses as their scores/ would hold)
TRAINING_READS = ("scoring.chat", "scoring.sources", "scoring.tokenize")
RAW_SHARDS = ROOT / "training" / "raw_shards.py"


@pytest.mark.parametrize("stage", ["selection", "training"])
def test_a_stage_imports_only_the_foundation_of_another(stage):
    def allowed(path, module):
        top = _top(module)
        if top not in STAGES or top == stage:
            return True
        if path == RAW_SHARDS and module in TRAINING_READS:
            return True
        return _is_foundation(module)  # never scoring's machinery, never another stage, never pipelines

    assert _violations(stage, allowed) == []


# what export reads of scoring besides the foundation: the source rows, numbered as scoring numbers them
EXPORT_READS = ("scoring.source_rows",)


def test_export_imports_only_the_foundation_and_the_source_rows():
    def allowed(path, module):
        top = _top(module)
        if top not in STAGES or top == "exporting":
            return True
        return top == "scoring" and (_is_foundation(module) or module in EXPORT_READS)

    assert _violations("exporting", allowed) == []


@pytest.mark.parametrize("stage", ["scoring", "selection", "training"])
def test_no_stage_imports_the_export(stage):
    assert _violations(stage, lambda path, module: _top(module) != "exporting") == []


def test_scoring_imports_no_later_stage():
    assert _violations("scoring", lambda path, module: _top(module) not in ("selection", "training", "pipelines")) == []


def test_the_foundation_stands_on_its_own():
    def allowed(path, module):
        return _top(module) not in STAGES or _is_foundation(module)

    assert _violations(FOUNDATION, allowed) == []


def test_importing_the_foundation_and_a_stage_loads_no_machinery_of_another():
    """At run time too: a Ray Train worker that imports training's modules must not load scoring's machinery."""
    code = (
        "import sys, importlib, pkgutil\n"
        "import scoring.foundation, training, selection\n"
        "for pkg in (scoring.foundation,):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('heavy', heavy)\n"
        "for name in ('training.job', 'training.sources', 'training.data', 'training.store', 'selection.job'):\n"
        "    importlib.import_module(name)\n"
        "machinery = sorted(m for m in sys.modules if m.startswith('scoring.') and not m.startswith('scoring.foundation'))\n"
        "print('machinery', machinery)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["heavy"] == "[]", "the foundation imports a heavy library at import time"
    assert lines["machinery"] == "[]", "training or selection loads scoring's machinery"
