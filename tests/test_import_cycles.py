"""No file circles: no eatlab module imports (directly or through others) a module that imports it back.

import-linter's layer contracts check packages against each other; this checks files, lazy imports inside
functions included (a circle through a lazy import still couples the two files, issue 23 item 9)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

EATLAB = Path(__file__).resolve().parents[1] / "eatlab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(EATLAB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each eatlab module -> the eatlab modules it imports anywhere in its file (`from pkg import mod` counts)."""
    files = {_module_name(p): p for p in EATLAB.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def test_no_file_circles():
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None


def test_spacy_features_no_longer_imports_the_trainer():
    graph = import_graph()
    assert "eatlab.extractors.train_spacy" not in graph["eatlab.extractors.spacy_features"]
    assert "eatlab.extractors.spacy_features" in graph["eatlab.extractors.train_spacy"]
