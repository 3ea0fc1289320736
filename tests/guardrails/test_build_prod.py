"""Tests of the production build check: fast unit tests of ``scripts/build_prod_check.py``
and slow end-to-end runs of ``scripts/build-prod.sh`` on scratch copies of the tree."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from guardrail_helpers import BUILD_CHECK_PATH, copy_tree, load_script, run_script

SCRIPT = "scripts/build-prod.sh"
TEST_ONLY_FILES = ("symphony/db/test_only.py", "symphony/db/tests/__init__.py")


@pytest.fixture(scope="module")
def build_check() -> ModuleType:
    return load_script(BUILD_CHECK_PATH, "build_prod_check")


def _write_artefacts(dist: Path, members: list[str]) -> None:
    dist.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dist / "symphony_outbox-0.1.0-py3-none-any.whl", "w") as wheel:
        for member in members:
            wheel.writestr(member, "")
    with tarfile.open(dist / "symphony_outbox-0.1.0.tar.gz", "w:gz") as sdist:
        for member in members:
            info = tarfile.TarInfo(f"symphony_outbox-0.1.0/src/{member}")
            sdist.addfile(info, io.BytesIO(b""))


def _write_src(src: Path, members: list[str]) -> Path:
    for member in members:
        (src / member).parent.mkdir(parents=True, exist_ok=True)
        (src / member).write_text("")
    return src / "symphony"


SHIPPED = ["symphony/__init__.py", "symphony/db/__init__.py", "symphony/db/sql/q.sql"]


@pytest.mark.parametrize(
    "member",
    [
        "symphony/db/test_only.py",
        "symphony/db/test_only.pyc",
        "symphony/db/test_only/__init__.py",
        "symphony/db/tests/__init__.py",
        "symphony/db/tests/test_x.py",
        "symphony_outbox-0.1.0/src/symphony/db/tests/conftest.py",
    ],
)
def test_test_only_members_are_rejected(build_check: ModuleType, member: str) -> None:
    assert build_check.check_artefact_members("wheel", "w.whl", [*SHIPPED, member]) == [member]


def test_shipped_members_are_accepted(build_check: ModuleType) -> None:
    members = [*SHIPPED, "symphony/db/testing_tools.py", "symphony/outbox/tests.py"]
    assert build_check.check_artefact_members("wheel", "w.whl", members) == []


def test_artefacts_with_test_only_files_fail(build_check: ModuleType, tmp_path: Path) -> None:
    src = _write_src(tmp_path / "src", [*SHIPPED, *TEST_ONLY_FILES])
    _write_artefacts(tmp_path / "dist", [*SHIPPED, "symphony/db/test_only.py"])
    assert build_check.cmd_artefacts(tmp_path / "dist", src) == 1


def test_artefacts_missing_a_source_file_fail(build_check: ModuleType, tmp_path: Path) -> None:
    src = _write_src(tmp_path / "src", [*SHIPPED, *TEST_ONLY_FILES])
    _write_artefacts(tmp_path / "dist", SHIPPED[:-1])
    assert build_check.cmd_artefacts(tmp_path / "dist", src) == 1


def test_clean_artefacts_pass(build_check: ModuleType, tmp_path: Path) -> None:
    src = _write_src(tmp_path / "src", [*SHIPPED, *TEST_ONLY_FILES])
    _write_artefacts(tmp_path / "dist", SHIPPED)
    assert build_check.cmd_artefacts(tmp_path / "dist", src) == 0


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("symphony/outbox/x.py", "from symphony.db import test_only\n"),
        ("symphony/db/x.py", "from .test_only import reset\n"),
        ("symphony/rails/x.py", "import importlib\nimportlib.import_module('symphony.db.tests')\n"),
    ],
)
def test_scan_installed_finds_test_only_imports(
    build_check: ModuleType, tmp_path: Path, module: str, source: str
) -> None:
    _write_src(tmp_path, ["symphony/__init__.py"])
    (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / module).write_text(source)
    assert build_check.cmd_scan_installed(tmp_path) == 1


def test_scan_installed_passes_clean_modules(build_check: ModuleType, tmp_path: Path) -> None:
    _write_src(tmp_path, ["symphony/__init__.py"])
    (tmp_path / "symphony/db").mkdir(parents=True)
    (tmp_path / "symphony/db/x.py").write_text("import psycopg\nfrom .role import Role\n")
    assert build_check.cmd_scan_installed(tmp_path) == 0


def test_import_all_refuses_a_non_production_environment(
    build_check: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYMPHONY_ENV", "test")
    assert build_check.cmd_import_all() == 1


# --------------------------------------------------------------------------------------
# End to end: these build, install into a fresh virtualenv and import (tens of seconds).

_STATIC_PLANT = """\
\"\"\"Planted by the build test: a shipped module importing test-only code.\"\"\"

from __future__ import annotations

from symphony.db import test_only

__all__ = ["test_only"]
"""

# Not provable statically (the name comes from the environment at run time): only the
# import-time check can catch it.
_DYNAMIC_PLANT = """\
\"\"\"Planted by the build test: a test-only import no static check can see.\"\"\"

from __future__ import annotations

import importlib
import os

helpers = importlib.import_module(  # noqa: F841
    "symphony.db." + os.environ.get("SYMPHONY_HELPERS", "test_only")
)
"""


def _ensure_test_only_sources(tree: Path) -> None:
    """Make sure the scratch tree has test-only files, so their exclusion is exercised."""
    db = tree / "src" / "symphony" / "db"
    if not (db / "test_only.py").exists():
        (db / "test_only.py").write_text('"""Test-only helpers."""\n')
    if not (db / "tests").is_dir():
        (db / "tests").mkdir()
        (db / "tests" / "__init__.py").write_text("")


def _wheel_names(tree: Path) -> list[str]:
    (wheel,) = sorted((tree / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.integration
def test_build_prod_fails_when_a_shipped_module_imports_test_only(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "repo")
    _ensure_test_only_sources(tree)
    (tree / "src/symphony/outbox").mkdir(parents=True, exist_ok=True)
    (tree / "src/symphony/outbox/planted_static.py").write_text(_STATIC_PLANT)
    (tree / "src/symphony/rails").mkdir(parents=True, exist_ok=True)
    (tree / "src/symphony/rails/planted_dynamic.py").write_text(_DYNAMIC_PLANT)

    result = run_script(tree, SCRIPT, timeout=600)
    out = result.stdout

    assert result.returncode != 0, out
    # The artefacts themselves are still clean: the exclusion holds.
    assert not any(name in _wheel_names(tree) for name in TEST_ONLY_FILES)
    # The static scan names the module and line; the import step names the dynamic one.
    assert "FAIL: installed symphony/outbox/planted_static.py:5: DB006 test-only-import" in out
    assert "FAIL: symphony.rails.planted_dynamic imports test-only code, which is not shipped" in (
        out
    )
    assert "FAIL: symphony.outbox.planted_static imports test-only code" in out
    assert "build-prod FAILED" in out


@pytest.mark.integration
def test_build_prod_passes_on_the_clean_tree(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "repo")
    _ensure_test_only_sources(tree)

    result = run_script(tree, SCRIPT, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    names = _wheel_names(tree)
    assert "symphony/__init__.py" in names
    assert not any(
        name.startswith(("symphony/db/test_only", "symphony/db/tests/")) for name in names
    )
    assert "test-only modules in sys.modules: none" in result.stdout
