"""End-to-end tests of ``scripts/guardrails/db-boundary.sh`` on scratch copies of the tree.

Each test copies src/, scripts/ and the configuration into a temporary directory, plants
code there, runs the real script from another working directory and reads its output the
way a developer reads CI: ``file:line: RULE name: message``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from guardrail_helpers import fixture_files, load_fixture, run_script

SCRIPT = "scripts/guardrails/db-boundary.sh"

# Each fixture is planted where its ``# checked-as:`` comment says: shipped code under
# src/ for most, tests/ or scripts/ for the rest.
VIOLATIONS = fixture_files("violations")
CLEAN = fixture_files("clean")
ROLE_SQL_FIXTURE = next(path for path in VIOLATIONS if path.stem == "role_sql")


def _plant(tree: Path, rel_path: str, source: str) -> Path:
    target = tree / rel_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source, encoding="utf-8")
    return target


def test_clean_tree_passes(scratch_tree: Path) -> None:
    result = run_script(scratch_tree, SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "db-boundary: OK" in result.stdout
    assert "Contracts: " in result.stdout and " 0 broken" in result.stdout
    assert "guardrails: all checks passed" in result.stdout


@pytest.mark.parametrize("path", VIOLATIONS, ids=lambda p: p.stem)
def test_planted_violation_fails_naming_rule_and_line(scratch_tree: Path, path: Path) -> None:
    fixture = load_fixture(path)
    _plant(scratch_tree, fixture.checked_as, fixture.source)
    result = run_script(scratch_tree, SCRIPT)
    assert result.returncode != 0, result.stdout
    for line, code in fixture.expected:
        pattern = rf"^{re.escape(fixture.checked_as)}:{line}: {code} [a-z-]+: .+; .+$"
        assert re.search(pattern, result.stdout, re.MULTILINE), (
            f"no {code} at {fixture.checked_as}:{line} in:\n{result.stdout}"
        )
    assert "guardrails FAILED" in result.stdout


def test_driver_import_in_an_existing_module_fails_all_three_checks(scratch_tree: Path) -> None:
    # Appended to a real shipped module rather than a new file: the domain package's
    # __init__ when it exists, else the first shipped module outside the db package.
    package = scratch_tree / "src" / "symphony"
    preferred = package / "outbox" / "__init__.py"
    target = (
        preferred
        if preferred.is_file()
        else next(
            path
            for path in sorted(package.rglob("*.py"))
            if "db" not in path.relative_to(package).parts
        )
    )
    source = target.read_text(encoding="utf-8")
    # Appended after the module's own imports, as a late import would be.
    planted = f"{source.rstrip()}\n\nimport psycopg  # noqa: E402\n"
    target.write_text(planted, encoding="utf-8")
    line = planted.rstrip().count("\n") + 1
    rel = target.relative_to(scratch_tree).as_posix()

    result = run_script(scratch_tree, SCRIPT)

    assert result.returncode != 0
    assert f"{rel}:{line}: DB001 driver-import: " in result.stdout
    assert "Only symphony.db imports the PostgreSQL driver BROKEN" in result.stdout
    assert "TID251" in result.stdout
    for title in ("db-boundary checker", "import-linter contracts", "ruff banned driver API"):
        assert re.search(rf"^--- {title}.*FAILED", result.stdout, re.MULTILINE), title


def test_architecture_contract_catches_rails_importing_the_outbox(scratch_tree: Path) -> None:
    _plant(
        scratch_tree,
        "src/symphony/rails/planted.py",
        "from __future__ import annotations\n\nimport symphony.outbox\n\n__all__ = ['symphony']\n",
    )
    result = run_script(scratch_tree, SCRIPT)
    assert result.returncode != 0
    assert "Rails are a leaf: no outbox, repair or db BROKEN" in result.stdout
    assert "symphony.rails.planted -> symphony.outbox" in result.stdout


def test_clean_fixtures_planted_everywhere_pass(scratch_tree: Path) -> None:
    # The allowed uses (db package, db tests, tests, scripts, the db API from domain
    # code) must not trip any of the three checks.
    for path in CLEAN:
        fixture = load_fixture(path)
        _plant(scratch_tree, fixture.checked_as, fixture.source)
    result = run_script(scratch_tree, SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fixture_directory_is_the_only_allowlisted_path(scratch_tree: Path) -> None:
    role_sql = load_fixture(ROLE_SQL_FIXTURE)
    _plant(scratch_tree, "tests/guardrails/fixtures/violations/role_sql.py", role_sql.source)
    assert run_script(scratch_tree, SCRIPT).returncode == 0
    _plant(scratch_tree, "tests/guardrails/role_sql_copy.py", role_sql.source)
    result = run_script(scratch_tree, SCRIPT)
    assert result.returncode != 0
    assert "tests/guardrails/role_sql_copy.py:" in result.stdout


def test_script_is_fast(scratch_tree: Path) -> None:
    start = time.monotonic()
    result = run_script(scratch_tree, SCRIPT)
    assert result.returncode == 0
    assert time.monotonic() - start < 40
