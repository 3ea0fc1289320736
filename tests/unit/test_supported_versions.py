"""The PostgreSQL versions Symphony accepts are the versions CI tests, and the README says so.

Four places name them and must agree: the Makefile's version steps (`make test` runs
`pytest-pg15` and `pytest-pg16`; the main `pytest` step runs on the embedded server),
scripts/pg_versions.py (where each version's binaries come from), the start-up gate
(symphony.db.compat.MIN_SERVER_VERSION: the oldest accepted is the oldest tested) and the
README's table of versions. Adding a version step without the README row, or lowering the
minimum below the oldest version CI runs, fails here.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType

from tests.support.pg_cluster import embedded_bindir

from symphony.db.compat import MIN_SERVER_VERSION, major

REPO = Path(__file__).resolve().parents[2]


def _target_prerequisites(target: str) -> list[str]:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    found = re.search(rf"^{re.escape(target)}:([^\n]*)$", makefile, re.MULTILINE)
    assert found is not None, f"no '{target}:' rule in the Makefile"
    return found.group(1).split()


def _version_steps() -> set[int]:
    """The major versions `make test` runs the database suites on besides the embedded one."""
    return {int(step.removeprefix("pytest-pg"))
            for step in _target_prerequisites("pytest-versions")
            if re.fullmatch(r"pytest-pg\d+", step)}


def _embedded_major() -> int:
    out = subprocess.run([str(embedded_bindir() / "postgres"), "--version"], check=True,
                         capture_output=True, text=True).stdout
    found = re.search(r"\(PostgreSQL\) (\d+)", out)
    assert found is not None, out
    return int(found.group(1))


def _readme_table() -> dict[str, str]:
    """The README's 'Supported PostgreSQL' table: first cell -> the whole row."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Supported PostgreSQL\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("version", "---"):
            rows[cells[0]] = line
    return rows


def _pg_versions() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pg_versions", REPO / "scripts/pg_versions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_test_runs_every_version_step() -> None:
    assert "pytest" in _target_prerequisites("test")
    assert "pytest-versions" in _target_prerequisites("test")
    assert _version_steps() == {15, 16}


def test_the_oldest_version_ci_runs_is_the_minimum_accepted() -> None:
    tested = _version_steps() | {_embedded_major()}
    assert major(MIN_SERVER_VERSION) == min(tested)
    assert min(tested) * 10000 == MIN_SERVER_VERSION


def test_every_version_step_knows_where_its_binaries_come_from() -> None:
    pg_versions = _pg_versions()
    for version in _version_steps():
        assert pg_versions.bindir(version).name == "bin"


def test_the_readme_table_lists_what_really_runs() -> None:
    rows = _readme_table()
    numbered = {int(first) for first in rows if first.isdigit()}
    embedded = _embedded_major()
    assert numbered == _version_steps() | {embedded}, rows
    assert "(`make pytest`)" in rows[str(embedded)]
    assert "embedded" in rows[str(embedded)]
    for version in _version_steps():
        assert f"(`make pytest-pg{version}`)" in rows[str(version)], rows[str(version)]
    # The row below the minimum says those servers are refused, and with which code.
    older = f"{major(MIN_SERVER_VERSION) - 1} and older"
    assert older in rows, rows
    assert "refused" in rows[older] and "UNSUPPORTED_SERVER_VERSION" in rows[older]
