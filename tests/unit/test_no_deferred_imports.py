"""Shipped modules import each other at the top, never inside a function.

An import written inside a function is how an import circle hides from the reader (and from a
first look at a module's head): the `acyclic_siblings` contract in `.importlinter` sees such
imports too, but would accept one that only defers a one-way import. Keeping every import of
`symphony` at module level keeps each module's dependencies in one place, its head. The one
exception is the test-only module, whose helper reads a private counter of `symphony.db`'s
database module after the package has loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "symphony"
ALLOWED = {("db/test_only.py", "symphony.db")}


def _deferred_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for scope in ast.walk(tree):
        if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(scope):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("symphony"):
                found.append((node.lineno, str(node.module)))
            elif isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names
                          if a.name.startswith("symphony")]
    return found


def test_no_shipped_module_imports_symphony_inside_a_function() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("db/tests/"):
            continue   # not shipped
        offenders += [f"{relative}:{line} imports {module}"
                      for line, module in _deferred_imports(path)
                      if (relative, module) not in ALLOWED]
    assert offenders == []


def test_the_check_sees_an_import_inside_a_method(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("class C:\n    def __init__(self):\n"
                      "        from symphony.outbox.ingest import EnqueueGroup\n")
    assert _deferred_imports(module) == [(3, "symphony.outbox.ingest")]
