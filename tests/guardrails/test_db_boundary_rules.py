"""Unit tests of the database-boundary checker, calling its functions directly.

Every violating fixture must produce exactly the findings its ``# expect:`` comments
name (no more, no fewer), and every clean fixture must produce none.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from guardrail_helpers import FIXTURES, REPO_ROOT, fixture_files, load_fixture

VIOLATIONS = fixture_files("violations")
CLEAN = fixture_files("clean")


def _found(checker: ModuleType, source: str, checked_as: str) -> Counter[tuple[int, str]]:
    return Counter((f.line, f.code) for f in checker.check_file(source, checked_as))


@pytest.mark.parametrize("path", VIOLATIONS, ids=lambda p: p.stem)
def test_violation_fixture_reports_exactly_what_it_expects(checker: ModuleType, path: Path) -> None:
    fixture = load_fixture(path)
    assert fixture.expected, f"{path.name} marks no expected finding"
    found = checker.check_file(fixture.source, fixture.checked_as)
    rendered = "\n".join(f.format() for f in found)
    assert _found(checker, fixture.source, fixture.checked_as) == fixture.expected, rendered


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: p.stem)
def test_clean_fixture_passes(checker: ModuleType, path: Path) -> None:
    fixture = load_fixture(path)
    assert not fixture.expected
    found = checker.check_file(fixture.source, fixture.checked_as)
    assert found == [], "\n".join(f.format() for f in found)


def test_every_rule_has_a_violating_fixture(checker: ModuleType) -> None:
    covered = {code for path in VIOLATIONS for _, code in load_fixture(path).expected}
    rules = {rule.code for rule in checker.RULES} - {checker.SYNTAX_ERROR.code}
    assert rules <= covered


def test_finding_format_names_file_line_rule_and_fix(checker: ModuleType) -> None:
    (finding,) = checker.check_source("import psycopg\n", "src/symphony/outbox/x.py")
    text = finding.format()
    assert text.startswith("src/symphony/outbox/x.py:1: DB001 driver-import: ")
    assert "Database.transaction(role)" in text


@pytest.mark.parametrize(
    ("rel_path", "codes"),
    [
        ("src/symphony/outbox/x.py", {"DB001"}),
        ("src/symphony/services/worker/main.py", {"DB001"}),
        ("src/symphony/cli.py", {"DB001"}),
        ("src/symphony/config.py", {"DB001"}),
        ("src/symphony/db/pool.py", set()),
        ("src/symphony/db/tests/test_pool.py", set()),
        ("tests/unit/test_x.py", set()),
        ("scripts/tool.py", set()),
        ("tests/guardrails/fixtures/anything.py", set()),
    ],
)
def test_driver_rule_scope(checker: ModuleType, rel_path: str, codes: set[str]) -> None:
    found = {f.code for f in checker.check_source("import psycopg.sql\n", rel_path)}
    assert found == codes


def test_role_sql_scope_covers_everything_but_db_and_the_fixtures(checker: ModuleType) -> None:
    # The role-switching text is read from a fixture so that this file stays clean.
    source = (FIXTURES / "violations" / "scripts_code.py").read_text(encoding="utf-8")
    statement = next(line for line in source.splitlines() if "conn.execute" in line).strip()
    code = f"def f(conn):\n    {statement}\n"
    for rel_path in (
        "src/symphony/outbox/x.py",
        "tests/unit/test_x.py",
        "scripts/x.py",
        "conftest.py",
        "docs/example.py",
    ):
        assert "DB005" in {f.code for f in checker.check_source(code, rel_path)}, rel_path
    for rel_path in (
        "src/symphony/db/x.py",
        "src/symphony/db/tests/test_x.py",
        "src/symphony/db/test_only.py",
        "tests/guardrails/fixtures/x.py",
    ):
        assert checker.check_source(code, rel_path) == [], rel_path


def test_test_only_module_itself_is_exempt(checker: ModuleType) -> None:
    source = "from . import tests\nimport psycopg\n"
    assert checker.check_source(source, "src/symphony/db/test_only.py") == []


def test_syntax_error_is_a_finding(checker: ModuleType) -> None:
    (finding,) = checker.check_source("def broken(:\n", "src/symphony/outbox/x.py")
    assert (finding.code, finding.line) == ("DB000", 1)


def test_unrelated_dynamic_imports_outside_src_are_not_reported(checker: ModuleType) -> None:
    source = "import importlib\n\ndef f(name):\n    return importlib.import_module(name)\n"
    assert checker.check_source(source, "scripts/x.py") == []
    assert checker.check_source(source, "tests/unit/test_x.py") == []


def test_policy_allowlists_only_the_fixture_directory(checker: ModuleType) -> None:
    from pathlib import PurePosixPath

    assert checker.policy_for(PurePosixPath("tests/guardrails/fixtures/x/y.py")) is None
    assert checker.policy_for(PurePosixPath("tests/guardrails/test_x.py")) is not None
    assert checker.policy_for(PurePosixPath("tests/guardrails/fixtures_extra.py")) is not None


def test_the_repository_itself_is_clean(checker: ModuleType) -> None:
    findings, checked = checker.check_paths(REPO_ROOT, [REPO_ROOT])
    assert checked > 0
    assert findings == [], "\n".join(f.format() for f in findings)


def test_walk_skips_virtualenvs_and_hidden_directories(checker: ModuleType, tmp_path: Path) -> None:
    planted = "import psycopg\n"
    for rel in (".venv/lib/x.py", "env/lib/site.py", "build/lib/x.py", ".git/x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(planted)
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / "src/symphony/build").mkdir(parents=True)
    (tmp_path / "src/symphony/build/__init__.py").write_text(planted)
    findings, checked = checker.check_paths(tmp_path, [tmp_path])
    assert [(f.path, f.code) for f in findings] == [("src/symphony/build/__init__.py", "DB001")]
    assert checked == 1


def test_main_exit_codes(
    checker: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert checker.main(["--root", str(tmp_path)]) == 0
    target = tmp_path / "src" / "symphony" / "outbox" / "x.py"
    target.parent.mkdir(parents=True)
    target.write_text("from __future__ import annotations\n\nimport asyncpg\n")
    assert checker.main(["--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "src/symphony/outbox/x.py:3: DB001 driver-import:" in out
    assert checker.main(["--root", str(tmp_path / "missing")]) == 2
