"""Every test the docs name as the proof of a behaviour exists where they say: ``tests/x.py::test_name``, and
``…::test_name`` for another test of the file named just before it on the same line."""

from __future__ import annotations

import ast
import re

from tests.docs import ROOT, pages

_REFERENCE = re.compile(r"`(?:(tests/[\w/]+\.py)|…)::(test_\w+)`")


def _tests_of(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_the_docs_name_is_in_the_file_they_name():
    missing, seen = [], 0
    for page in pages():
        for number, line in enumerate(page.read_text().splitlines(), 1):
            current = None
            for match in _REFERENCE.finditer(line):
                current = match.group(1) or current
                seen += 1
                where = f"{page.relative_to(ROOT)}:{number}"
                if current is None:
                    missing.append(f"{where}: '…::{match.group(2)}' follows no file on its line")
                elif not (ROOT / current).is_file() or match.group(2) not in _tests_of(current):
                    missing.append(f"{where}: {current}::{match.group(2)}")
    assert seen > 50 and missing == []
