"""The stage packages' lazy exports: the three name lists in each ``__init__`` agree, and each name resolves."""

import ast
import importlib
import importlib.util
import pathlib

import pytest

PACKAGES = ["scoring", "selection", "training", "exporting"]


def declared_names(package: str) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """``_EXPORTS``, ``__all__`` and the TYPE_CHECKING imports (name -> module), read from the source."""
    path = pathlib.Path(importlib.util.find_spec(package).origin)
    tree = ast.parse(path.read_text())
    exports: dict[str, str] = {}
    all_names: list[str] = []
    type_checking: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "_EXPORTS":
                exports = ast.literal_eval(node.value)
            elif node.targets[0].id == "__all__":
                all_names = ast.literal_eval(node.value)
        elif isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                type_checking |= {alias.name: imp.module for alias in imp.names}
    return exports, all_names, type_checking


@pytest.mark.parametrize("package", PACKAGES)
def test_lazy_exports_agree_resolve_and_list(package):
    exports, all_names, type_checking = declared_names(package)
    assert exports, f"{package}/__init__.py declares no _EXPORTS"
    assert sorted(all_names) == sorted(exports)
    assert type_checking == exports  # what a type checker sees is what runs

    module = importlib.import_module(package)
    listed = dir(module)
    for name, source in exports.items():
        assert name in listed
        assert getattr(module, name) is getattr(importlib.import_module(source), name)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018
