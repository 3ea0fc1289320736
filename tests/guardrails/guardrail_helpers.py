"""Shared helpers for the guardrail tests: the checker module, fixtures and scratch trees.

The checker lives in ``scripts/guardrails/`` (it is a CI tool, not part of the product),
so it is loaded from its file rather than imported as a package. The pytest fixtures built
on these helpers are in this directory's ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKER_PATH = REPO_ROOT / "scripts" / "guardrails" / "db_boundary.py"
BUILD_CHECK_PATH = REPO_ROOT / "scripts" / "build_prod_check.py"

_EXPECT = re.compile(r"#\s*expect(-below)?:\s*((?:DB\d{3}\s*)+)")
_CHECKED_AS = re.compile(r"#\s*checked-as:\s*([^\s\"\\]+)")

# What a scratch copy of the repository needs to run the guardrails and the build.
_TREE_ROOT_FILES = ("pyproject.toml", ".importlinter", "Makefile", "README.md", "LICENSE")
_TREE_DIRS = ("src", "scripts")
_IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".venv", ".git", "dist", "build", "*.egg-info", ".*_cache"
)


def load_script(path: Path, name: str) -> ModuleType:
    """Import a standalone script as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before running so dataclasses can resolve the module's annotations.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_checker() -> ModuleType:
    return load_script(CHECKER_PATH, "db_boundary")


@dataclass(frozen=True)
class Fixture:
    """A fixture file, where it is checked as, and the findings it must produce."""

    path: Path
    checked_as: str
    expected: Counter[tuple[int, str]]

    @property
    def source(self) -> str:
        return self.path.read_text(encoding="utf-8")


def load_fixture(path: Path) -> Fixture:
    """Read the ``# checked-as:`` and ``# expect:`` comments of a fixture file.

    Python fixtures are read with the tokenizer so that text inside strings never counts;
    other languages line by line (the markers sit in their comments). A notebook's findings
    are reported at line 1 with the cell named, so its markers expect line 1."""
    source = path.read_text(encoding="utf-8")
    checked_as = f"src/symphony/outbox/{path.name}"
    expected: Counter[tuple[int, str]] = Counter()
    if path.suffix == ".py":
        comments = [
            (token.start[0], token.string)
            for token in tokenize.generate_tokens(io.StringIO(source).readline)
            if token.type == tokenize.COMMENT
        ]
    else:
        comments = list(enumerate(source.splitlines(), start=1))
    for line, comment in comments:
        if match := _CHECKED_AS.search(comment):
            checked_as = match.group(1)
        for match in _EXPECT.finditer(comment):
            target = line + 1 if match.group(1) else line
            if path.suffix == ".ipynb":
                target = 1
            for code in match.group(2).split():
                expected[(target, code)] += 1
    return Fixture(path, checked_as, expected)


def fixture_files(kind: str) -> list[Path]:
    return sorted(path for path in (FIXTURES / kind).iterdir() if path.is_file())


def tool_env() -> dict[str, str]:
    """The environment for running the scripts: this interpreter's bin directory first,
    so that a scratch tree without a .venv finds python3, lint-imports and ruff."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


def copy_tree(destination: Path) -> Path:
    """Copy what the guardrails and the build read into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in _TREE_ROOT_FILES:
        if (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, destination / name)
    for name in _TREE_DIRS:
        shutil.copytree(REPO_ROOT / name, destination / name, ignore=_IGNORED, symlinks=True)
    return destination


def run_script(tree: Path, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one of the repository's shell scripts in ``tree``, from another directory."""
    return subprocess.run(
        ["bash", str(tree / script)],
        cwd=tree.parent,  # the script must find its root itself
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
