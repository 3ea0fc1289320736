"""Checks of the production build, run by ``scripts/build-prod.sh``.

The production artefacts must not carry test-only code: ``symphony/db/test_only.py`` runs
SQL with no role, and ``symphony/db/tests/`` are the db layer's tests. This script has
three subcommands, one per stage of the build check:

``artefacts DIST``
    Inspect the wheel and the sdist in DIST: neither may contain test-only files, and the
    wheel must ship every file of ``src/symphony`` that is not test-only (SQL included).

``scan-installed SITE``
    Read the syntax tree of every installed ``symphony`` module under SITE (a clean
    virtualenv's site-packages) and fail on any import of the test-only modules, in any
    form the database-boundary checker knows (static, relative, dynamic).

``import-all``
    Run inside the clean virtualenv with ``SYMPHONY_ENV=production``: import every shipped
    module (``pkgutil.walk_packages``), load every console-script entry point, and fail if
    any import fails or if a test-only module ends up in ``sys.modules``; read the operator
    dashboard's files (package data) the way the server does. A module that
    imports the (unshipped) test-only code fails here even if the static scan missed it.
    This subcommand uses the standard library only and is meant to run with ``python -I``,
    so that nothing but the installed wheel can be imported.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import pkgutil
import re
import sys
import tarfile
import traceback
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from types import ModuleType

DISTRIBUTION = "symphony-outbox"
PACKAGE = "symphony"
TEST_ONLY_MODULES = ("symphony.db.test_only", "symphony.db.tests")
DASHBOARD_MODULE = "symphony.services.api.dashboard"

# A test-only path inside an artefact, wherever the package sits (wheel: symphony/...,
# sdist: symphony_outbox-X/src/symphony/...). Compiled files and a package form count too.
TEST_ONLY_PATH = re.compile(r"(?:^|/)symphony/db/(?:test_only(?:\.py[cio]?|/|$)|tests(?:/|$))")


def _fail(message: str) -> None:
    print(f"FAIL: {message}")


def _is_test_only_module(name: str) -> bool:
    return any(name == module or name.startswith(f"{module}.") for module in TEST_ONLY_MODULES)


# --------------------------------------------------------------------------------------
# artefacts


def _single(dist: Path, pattern: str) -> Path | None:
    found = sorted(dist.glob(pattern))
    if len(found) != 1:
        _fail(f"expected exactly one {pattern} in {dist}, found {[p.name for p in found]}")
        return None
    return found[0]


def _wheel_members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def _sdist_members(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as archive:
        return archive.getnames()


def _shippable_sources(src_package: Path) -> set[str]:
    """Files of src/symphony that the wheel must contain, as wheel paths (symphony/...)."""
    expected: set[str] = set()
    for path in src_package.rglob("*"):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}:
            continue
        wheel_path = PurePosixPath(PACKAGE, path.relative_to(src_package).as_posix()).as_posix()
        if not TEST_ONLY_PATH.search(wheel_path):
            expected.add(wheel_path)
    return expected


def check_artefact_members(kind: str, name: str, members: Iterable[str]) -> list[str]:
    """Return the test-only paths among an artefact's members (empty when clean)."""
    leaked = sorted(member for member in members if TEST_ONLY_PATH.search(member))
    for member in leaked:
        _fail(f"{kind} {name} contains test-only file {member}")
    return leaked


def cmd_artefacts(dist: Path, src_package: Path) -> int:
    """Inspect the wheel and sdist in ``dist``."""
    wheel = _single(dist, "*.whl")
    sdist = _single(dist, "*.tar.gz")
    if wheel is None or sdist is None:
        return 1
    ok = True

    wheel_members = _wheel_members(wheel)
    if check_artefact_members("wheel", wheel.name, wheel_members):
        ok = False
    missing = sorted(_shippable_sources(src_package) - set(wheel_members))
    for path in missing:
        _fail(f"wheel {wheel.name} is missing {path} (present in src, not test-only)")
    ok = ok and not missing
    modules = sum(1 for member in wheel_members if member.endswith(".py"))
    print(
        f"wheel {wheel.name}: {len(wheel_members)} files, {modules} Python modules, "
        f"every shippable file of {src_package.as_posix()} present: {not missing}"
    )

    sdist_members = _sdist_members(sdist)
    if check_artefact_members("sdist", sdist.name, sdist_members):
        ok = False
    print(f"sdist {sdist.name}: {len(sdist_members)} entries")

    if ok:
        print("no test-only file (symphony/db/test_only.py, symphony/db/tests/) in either artefact")
    return 0 if ok else 1


# --------------------------------------------------------------------------------------
# scan-installed


def _load_boundary_checker() -> ModuleType:
    # The boundary checker is a sibling script, not an installed package.
    guardrails = Path(__file__).resolve().parent / "guardrails"
    sys.path.insert(0, str(guardrails))
    try:
        return importlib.import_module("db_boundary")
    finally:
        sys.path.remove(str(guardrails))


def cmd_scan_installed(site: Path) -> int:
    """Statically scan the installed package for imports of test-only code."""
    package_dir = site / PACKAGE
    if not package_dir.is_dir():
        _fail(f"{package_dir} does not exist: is the wheel installed in this site-packages?")
        return 1
    checker = _load_boundary_checker()
    files = sorted(package_dir.rglob("*.py"))
    findings = []
    for file in files:
        rel = file.relative_to(site).as_posix()
        if TEST_ONLY_PATH.search(rel):
            _fail(f"test-only file installed: {rel}")
            findings.append(rel)
            continue
        # Checked as if in src/, so that relative imports resolve to symphony.* names.
        for finding in checker.check_source(file.read_text(encoding="utf-8"), f"src/{rel}"):
            if finding.code == checker.TEST_ONLY_IMPORT.code or (
                finding.code == checker.DYNAMIC_IMPORT.code and "test-only" in finding.message
            ):
                _fail(f"installed {finding.format().removeprefix('src/')}")
                findings.append(finding)
    print(f"scanned {len(files)} installed modules under {package_dir}: {len(findings)} problem(s)")
    return 1 if findings else 0


# --------------------------------------------------------------------------------------
# import-all


def _describe_import_error(module: str, error: BaseException) -> str:
    missing = getattr(error, "name", None) or ""
    text = str(error)
    if _is_test_only_module(missing) or "test_only" in text:
        return (
            f"{module} imports test-only code, which is not shipped ({type(error).__name__}: "
            f"{text}); production code must use symphony.db's public API"
        )
    return f"{module} failed to import: {type(error).__name__}: {text}"


def cmd_import_all() -> int:
    """Import every shipped module in this (clean, production) interpreter."""
    env = os.environ.get("SYMPHONY_ENV")
    if env != "production":
        _fail(f"SYMPHONY_ENV must be 'production' for this check (it is {env!r})")
        return 1
    failures: list[str] = []

    try:
        package = importlib.import_module(PACKAGE)
    except Exception as error:  # any failure to import is a finding
        _fail(_describe_import_error(PACKAGE, error))
        return 1
    location = Path(package.__file__ or "").resolve()
    print(f"{PACKAGE} imported from {location.parent}")
    if not location.is_relative_to(Path(sys.prefix).resolve()):
        failures.append(f"{PACKAGE} was imported from outside this environment ({location})")

    def on_walk_error(name: str) -> None:
        error = sys.exc_info()[1]
        failures.append(_describe_import_error(name, error or ImportError(name)))

    names = [
        info.name for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}.", on_walk_error)
    ]
    imported = [PACKAGE]
    skipped: list[str] = []
    for name in sorted(names):
        if name.rpartition(".")[2] == "__main__":
            # Importing a __main__ module runs the program; its imports are covered by the
            # static scan and by the modules it imports, which are walked here too.
            skipped.append(name)
            continue
        try:
            importlib.import_module(name)
        except BaseException as error:  # SystemExit at import is a finding too
            failures.append(_describe_import_error(name, error))
            if not isinstance(error, ImportError):
                traceback.print_exception(error)
            continue
        imported.append(name)

    entry_points = list(importlib.metadata.distribution(DISTRIBUTION).entry_points)
    for entry_point in entry_points:
        try:
            entry_point.load()
        except BaseException as error:  # as above
            failures.append(
                f"entry point {entry_point.name} = {entry_point.value} does not load: "
                + _describe_import_error(entry_point.value, error)
            )

    # The dashboard's files are package data, read through importlib.resources: the page
    # would be blank (and every asset a 500) if the wheel left them out.
    dashboard_files: list[str] = []
    try:
        dashboard = importlib.import_module(DASHBOARD_MODULE)
        for name in (dashboard.PAGE, *dashboard.ASSETS):
            if not dashboard.asset(name):
                failures.append(f"dashboard file {name} is empty in the installed package")
            dashboard_files.append(name)
    except Exception as error:  # a missing file or module is a finding
        failures.append(f"the dashboard's files cannot be read from the installed package: "
                        f"{type(error).__name__}: {error}")

    leaked = sorted(name for name in sys.modules if _is_test_only_module(name))
    for name in leaked:
        failures.append(f"test-only module {name} was imported by shipped code")

    print(f"imported {len(imported)} shipped modules with SYMPHONY_ENV=production:")
    for name in imported:
        print(f"  {name}")
    if skipped:
        print(f"not imported (they run a program when imported): {', '.join(skipped)}")
    print(f"loaded {len(entry_points)} entry point(s): {', '.join(e.name for e in entry_points)}")
    print(f"dashboard files readable from the installed package: {', '.join(dashboard_files)}")
    print(f"test-only modules in sys.modules: {leaked or 'none'}")
    for failure in failures:
        _fail(failure)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Checks of the production build.")
    commands = parser.add_subparsers(dest="command", required=True)
    artefacts = commands.add_parser("artefacts", help="inspect the wheel and sdist")
    artefacts.add_argument("dist", type=Path)
    artefacts.add_argument("--src", type=Path, default=Path("src") / PACKAGE)
    scan = commands.add_parser("scan-installed", help="AST scan of the installed package")
    scan.add_argument("site", type=Path)
    commands.add_parser("import-all", help="import every shipped module (clean venv)")
    args = parser.parse_args(argv)

    if args.command == "artefacts":
        return cmd_artefacts(args.dist, args.src)
    if args.command == "scan-installed":
        return cmd_scan_installed(args.site)
    return cmd_import_all()


if __name__ == "__main__":
    sys.exit(main())
