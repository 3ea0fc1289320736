"""Database-boundary checker for Symphony Outbox.

PostgreSQL is the authority of this system, and ``symphony.db`` is the one place that
talks to it: it owns the driver, the pool, the roles and the SQL. This checker reads the
syntax tree of every Python file in the repository and reports each place where code
outside ``src/symphony/db/`` reaches past that boundary. It is stdlib only, so CI can run
it before anything else is installed.

Rules (``DBnnn name``) and where they apply:

* DB000 syntax-error      -- a file that does not parse cannot be checked (everywhere).
* DB001 driver-import     -- importing a PostgreSQL driver or pool (psycopg, psycopg_pool,
  psycopg2, asyncpg, pg8000, ...), statically, through importlib/__import__/runpy/pkgutil,
  through exec/eval of constant code, or by reading it out of ``sys.modules``
  (``src/`` outside ``src/symphony/db/``).
* DB002 dynamic-import    -- a dynamic import (or exec/eval/compile) whose module name is
  not a constant, so it cannot be proven to load neither a driver nor test-only code.
  A name with a constant prefix that settles the package, such as
  ``f"symphony.rails.{name}"``, is proven safe and not reported (all of ``src/``
  except ``src/symphony/db/tests/`` and ``src/symphony/db/test_only.py``).
* DB003 driver-type       -- naming the driver's connection, cursor or pool types
  (``Connection``, ``AsyncCursor``, ``ConnectionPool(...)``, ...) as a name, an attribute,
  an imported name or inside a string annotation (``src/`` outside the db package).
* DB004 raw-sql           -- running SQL on a raw pool, connection or cursor. Heuristic,
  documented at ``RAW_HANDLE_METHODS`` below (``src/`` outside the db package).
* DB005 role-sql          -- role-switching SQL in any string, in every Python file of the
  repository (tests and scripts included) except ``src/symphony/db/``; and anywhere in the
  text of every other file there, whatever its language (SQL, shell, YAML, TOML, Makefiles,
  notebooks' cells, ...). SQL files are read with their comments blanked, as PostgreSQL
  reads them; documentation (``*.md``, ``*.rst``, ``*.txt``) describes the rule and runs
  nothing, so it is skipped like a docstring; binary files are skipped.
* DB006 test-only-import  -- importing ``symphony.db.test_only`` or ``symphony.db.tests``
  from anywhere but ``tests/`` and ``src/symphony/db/tests/`` (the rest of the db
  package included).
* DB007 db-upward-import  -- ``symphony.db`` importing any other part of ``symphony``;
  the db layer is the bottom of the stack (``src/symphony/db/`` outside its tests).

Docstrings are documentation, not code, so the role-SQL rule skips them; every other
string constant is checked. The checker's own violating fixtures live in one allowlisted
directory, ``tests/guardrails/fixtures/``, and are checked by the guardrail tests instead.

Usage::

    python scripts/guardrails/db_boundary.py [--root DIR] [PATH ...]

Exit status: 0 when clean, 1 when there are findings, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

# --------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class Rule:
    """One guardrail rule: a stable code, a readable name and what to do instead."""

    code: str
    name: str
    fix: str


DB_API_FIX = (
    "go through symphony.db: open a transaction with Database.transaction(role) and run "
    "named queries with tx.fetch_all/tx.fetch_one/tx.execute (SQL lives in "
    "src/symphony/db/sql/)"
)

SYNTAX_ERROR = Rule("DB000", "syntax-error", "fix the syntax so the file can be checked")
DRIVER_IMPORT = Rule("DB001", "driver-import", DB_API_FIX)
DYNAMIC_IMPORT = Rule(
    "DB002",
    "dynamic-import",
    "import the module statically, or give the name a constant prefix that settles the "
    'package (e.g. f"symphony.rails.{name}")',
)
DRIVER_TYPE = Rule(
    "DB003",
    "driver-type",
    "depend on symphony.db's Database and its transaction object instead of driver "
    "connection, cursor or pool types (rename an unrelated type of the same name)",
)
RAW_SQL = Rule("DB004", "raw-sql", DB_API_FIX)
ROLE_SQL = Rule(
    "DB005",
    "role-sql",
    "roles are switched only inside symphony.db: use Database.transaction(Role.X), "
    "which applies the role for that transaction",
)
TEST_ONLY_IMPORT = Rule(
    "DB006",
    "test-only-import",
    "test-only code is not shipped; import it only from tests/ or src/symphony/db/tests/",
)
DB_UPWARD_IMPORT = Rule(
    "DB007",
    "db-upward-import",
    "symphony.db is the bottom layer: pass what it needs in as arguments "
    "(or move the code into symphony.db) instead of importing upward",
)

RULES: tuple[Rule, ...] = (
    SYNTAX_ERROR,
    DRIVER_IMPORT,
    DYNAMIC_IMPORT,
    DRIVER_TYPE,
    RAW_SQL,
    ROLE_SQL,
    TEST_ONLY_IMPORT,
    DB_UPWARD_IMPORT,
)


@dataclass(frozen=True, order=True)
class Finding:
    """A rule broken at one line of one file."""

    path: str
    line: int
    code: str
    name: str
    message: str

    def format(self) -> str:
        """Render as ``file:line: CODE name: message`` (the form editors and CI link)."""
        return f"{self.path}:{self.line}: {self.code} {self.name}: {self.message}"


# --------------------------------------------------------------------------------------
# What is forbidden

# Top-level packages of PostgreSQL drivers and pools. Any submodule counts too.
DRIVER_PACKAGES = frozenset(
    {
        "psycopg",
        "psycopg_pool",
        "psycopg_binary",
        "psycopg_c",
        "psycopg2",
        "psycopg2cffi",
        "asyncpg",
        "aiopg",
        "pg8000",
    }
)

# Modules that exist only for tests and are excluded from the wheel.
TEST_ONLY_MODULES = ("symphony.db.test_only", "symphony.db.tests")

DB_PACKAGE = "symphony.db"

# The driver's connection, cursor and pool types. Exact identifiers only: generic words
# such as Pipeline, Copy or Transaction are left out because domain code uses them too.
DRIVER_TYPE_NAMES = frozenset(
    {
        "Connection",
        "AsyncConnection",
        "BaseConnection",
        "Cursor",
        "AsyncCursor",
        "BaseCursor",
        "ClientCursor",
        "AsyncClientCursor",
        "ServerCursor",
        "AsyncServerCursor",
        "RawCursor",
        "AsyncRawCursor",
        "RawServerCursor",
        "AsyncRawServerCursor",
        "ConnectionPool",
        "AsyncConnectionPool",
        "NullConnectionPool",
        "AsyncNullConnectionPool",
        "BasePool",
        "PGconn",
    }
)

# DB004 heuristic. A call is raw SQL when any of these holds:
#   1. the method is DB-API specific (ANY_RECEIVER_METHODS) -- nothing else in this code
#      base has a ``.cursor()`` or ``.fetchall()``;
#   2. the method is in RAW_HANDLE_METHODS and the receiver is *named* like a raw handle:
#      an identifier one of whose ``_``-separated words is conn/connection/pool/cur/cursor
#      (optionally prefixed a/pg/db/raw/rw/ro/admin and/or pluralised or numbered), e.g.
#      ``conn``, ``self._pool``, ``db_conn``, ``pgconn``, ``acur``, or a call such as
#      ``pool.connection()``;
#   3. a string argument of an execute/fetch/query-like method reads as SQL text
#      (SQL_TEXT), whatever the receiver -- SQL belongs in src/symphony/db/sql/.
# Our own API (``db.transaction(Role.X)``, ``tx.fetch_all("query_name", params)``,
# ``db.fetch_one(Role.X, "query_name", {...})``) matches none of these: receivers named
# db/tx are not handles and query names are not SQL text.
ANY_RECEIVER_METHODS = frozenset(
    {
        "cursor",
        "executemany",
        "executescript",
        "fetchone",
        "fetchall",
        "fetchmany",
        "getconn",
        "putconn",
        "copy_expert",
        "copy_from",
        "copy_to",
        "mogrify",
    }
)
RAW_HANDLE_METHODS = ANY_RECEIVER_METHODS | frozenset(
    {
        "execute",
        "connection",
        "copy",
        "pipeline",
        "fetch",
        "fetchrow",
        "fetchval",
        "query",
        "acquire",
        "transaction",
        "stream",
        "commit",
        "rollback",
        "notifies",
    }
)
SQL_TEXT_METHODS = frozenset(
    {
        "execute",
        "executemany",
        "executescript",
        "query",
        "fetch",
        "fetchrow",
        "fetchval",
        "fetch_one",
        "fetch_all",
        "fetch_val",
        "mogrify",
        "copy",
        "stream",
    }
)
_RAW_HANDLE_WORD = re.compile(
    r"(?:a|pg|db|raw|rw|ro|admin)?(?:conn|connection|pool|cur|cursor|curs|cnx)(?:s|\d+)?"
)
SQL_TEXT = re.compile(
    r"""^\s*(?:
        SELECT\b | INSERT\s+INTO\b | UPDATE\s+\S+\s+SET\b | DELETE\s+FROM\b
      | WITH\s+(?:RECURSIVE\s+)?\S+\s+AS\b | MERGE\s+INTO\b
      | (?:CREATE|ALTER|DROP)\s+\w+ | TRUNCATE\b | GRANT\b | REVOKE\b
      | SET\s+\w+ | RESET\s+\w+ | BEGIN\b | START\s+TRANSACTION\b | COMMIT\b | ROLLBACK\b
      | LOCK\s+TABLE\b | COPY\s+\S+ | CALL\s+\w+ | DO\s+\$ | NOTIFY\b | LISTEN\b
      | VACUUM\b | EXPLAIN\b | PREPARE\s+\w+ | DECLARE\s+\w+ | DISCARD\b
    )""",
    re.IGNORECASE | re.VERBOSE,
)

# DB005. SQL comments count as whitespace in PostgreSQL, so they are blanked out before
# matching; identifiers may be double-quoted; set_config's name may be quoted any way.
_SQL_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_SQL_LINE_COMMENT = re.compile(r"--[^\n]*")
ROLE_SQL_TEXT = re.compile(
    r"""
      \b(?:RE)?SET\s+(?:(?:LOCAL|SESSION)\s+)?"?ROLE"?(?!\w)
    | \b(?:RE)?SET\s+(?:(?:LOCAL|SESSION)\s+)?SESSION\s+AUTHORIZATION\b
    | \bset_config\s*\(\s*(?:E|U&)?(?:'|"|\$\w*\$)\s*role\s*(?:'|"|\$\w*\$)
    """,
    re.IGNORECASE | re.VERBOSE,
)

# Callables that import (or locate, for find_spec) a module named by their first argument.
DYNAMIC_IMPORTERS = frozenset(
    {"import_module", "__import__", "find_spec", "run_module", "resolve_name"}
)
# Modules those callables come from, to follow ``from importlib import import_module as x``.
_DYNAMIC_IMPORTER_HOMES = frozenset({"importlib", "builtins", "runpy", "pkgutil"})
# Builtins that run code given as a string.
CODE_RUNNERS = frozenset({"exec", "eval", "compile"})

# Paths (relative to the repository root).
SRC = PurePosixPath("src")
DB_DIR = PurePosixPath("src/symphony/db")
DB_TESTS_DIR = PurePosixPath("src/symphony/db/tests")
DB_TEST_ONLY_FILE = PurePosixPath("src/symphony/db/test_only.py")
TESTS_DIR = PurePosixPath("tests")
# The only allowlisted directory: the guardrail tests' fixtures break every rule on
# purpose. Keep this narrow; nothing else is exempt from the role-SQL rule.
FIXTURES_DIR = PurePosixPath("tests/guardrails/fixtures")

# Directories never walked: hidden ones (.git, .venv, caches), any virtualenv (it has a
# pyvenv.cfg) and the names below. build/, dist/ and venv/ are skipped only at the root,
# so that no package can hide from the checker by its name.
SKIPPED_DIR_NAMES = frozenset({"__pycache__", "node_modules", "site-packages"})
SKIPPED_ROOT_DIR_NAMES = frozenset({"build", "dist", "venv"})


# --------------------------------------------------------------------------------------
# Which rules apply where


@dataclass(frozen=True)
class Policy:
    """The rules that apply to one file."""

    driver_rules: bool  # DB001-DB004
    dynamic_rule: bool  # DB002 (shipped code only)
    role_sql: bool  # DB005
    test_only: bool  # DB006
    db_upward: bool  # DB007


def _is_under(path: PurePosixPath, directory: PurePosixPath) -> bool:
    return path == directory or directory in path.parents


def policy_for(rel_path: PurePosixPath) -> Policy | None:
    """Return the rules for a repository-relative path, or None if it is exempt."""
    if _is_under(rel_path, FIXTURES_DIR):
        return None
    if _is_under(rel_path, DB_TESTS_DIR) or rel_path == DB_TEST_ONLY_FILE:
        return None
    if _is_under(rel_path, DB_DIR):
        return Policy(
            driver_rules=False, dynamic_rule=True, role_sql=False, test_only=True, db_upward=True
        )
    if _is_under(rel_path, SRC):
        return Policy(
            driver_rules=True, dynamic_rule=True, role_sql=True, test_only=True, db_upward=False
        )
    if _is_under(rel_path, TESTS_DIR):
        return Policy(
            driver_rules=False, dynamic_rule=False, role_sql=True, test_only=False, db_upward=False
        )
    # scripts/ and anything else in the repository: not shipped, but still no role SQL
    # and no reaching for test-only code.
    return Policy(
        driver_rules=False, dynamic_rule=False, role_sql=True, test_only=True, db_upward=False
    )


def module_name_for(rel_path: PurePosixPath) -> tuple[str, bool] | None:
    """Dotted module name of a file under ``src/`` and whether it is a package."""
    if not _is_under(rel_path, SRC) or rel_path.suffix != ".py":
        return None
    parts = list(rel_path.relative_to(SRC).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


# --------------------------------------------------------------------------------------
# Constant folding: what text can a string expression hold?
#
# A folded value is a list of parts; ``None`` stands for text that cannot be known
# statically. Adjacent known parts are merged, so each ``str`` is a maximal known run.

Parts = list[str | None]


def _merge(parts: Iterable[str | None]) -> Parts:
    merged: Parts = []
    for part in parts:
        if part is None:
            if not merged or merged[-1] is not None:
                merged.append(None)
        elif part == "":
            continue
        elif merged and merged[-1] is not None:
            merged[-1] = f"{merged[-1]}{part}"
        else:
            merged.append(part)
    return merged or [""]


def _exact(parts: Parts) -> str | None:
    if len(parts) == 1 and parts[0] is not None:
        return parts[0]
    return None


class Folder:
    """Folds string expressions using literals and names assigned a constant exactly once."""

    def __init__(self, tree: ast.AST) -> None:
        self.names: dict[str, str] = {}
        stores: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                stores[node.id] = stores.get(node.id, 0) + 1
        # Source order lets a constant refer to an earlier one (A = "SET"; B = A + " ...").
        assignments = [
            node for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AnnAssign)
        ]
        assignments.sort(key=lambda node: (node.lineno, node.col_offset))
        for node in assignments:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is None or len(targets) != 1:
                continue
            target = targets[0]
            if isinstance(target, ast.Name) and stores.get(target.id) == 1:
                value = _exact(self.fold(node.value))
                if value is not None:
                    self.names[target.id] = value

    def fold(self, node: ast.AST) -> Parts:
        """Return the known and unknown parts of the text ``node`` evaluates to."""
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                return [node.value]
            if isinstance(node.value, bytes):
                return [node.value.decode("latin-1")]
            return [None]
        if isinstance(node, ast.JoinedStr):
            return _merge(part for value in node.values for part in self._fold_fstring_part(value))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return _merge([*self.fold(node.left), *self.fold(node.right)])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return self._fold_percent(node)
        if isinstance(node, ast.Name) and node.id in self.names:
            return [self.names[node.id]]
        if isinstance(node, ast.Call):
            return self._fold_call(node)
        return [None]

    def _fold_fstring_part(self, node: ast.AST) -> Parts:
        if isinstance(node, ast.FormattedValue):
            if node.format_spec is not None:
                return [None]
            inner = _exact(self.fold(node.value))
            if inner is None:
                return [None]
            if node.conversion in (-1, ord("s")):
                return [inner]
            return [repr(inner) if node.conversion == ord("r") else ascii(inner)]
        return self.fold(node)

    def _fold_percent(self, node: ast.BinOp) -> Parts:
        template = _exact(self.fold(node.left))
        if template is None:
            return [None]
        if isinstance(node.right, ast.Tuple):
            args = [_exact(self.fold(element)) for element in node.right.elts]
            if any(arg is None for arg in args):
                return [None]
            values: object = tuple(args)
        else:
            values = _exact(self.fold(node.right))
            if values is None:
                return [None]
        try:
            return [template % values]
        except (TypeError, ValueError, KeyError):
            return [None]

    def _fold_call(self, node: ast.Call) -> Parts:
        func = node.func
        if not isinstance(func, ast.Attribute):
            return [None]
        receiver = _exact(self.fold(func.value))
        if receiver is None:
            return [None]
        if func.attr == "join" and len(node.args) == 1 and not node.keywords:
            items = node.args[0]
            if isinstance(items, ast.List | ast.Tuple) and not any(
                isinstance(item, ast.Starred) for item in items.elts
            ):
                joined: Parts = []
                for index, item in enumerate(items.elts):
                    joined.extend([receiver] if index else [])
                    joined.extend(self.fold(item))
                return _merge(joined)
            return [None]
        if func.attr == "format":
            args = [_exact(self.fold(arg)) for arg in node.args]
            kwargs: dict[str, str] = {}
            for kw in node.keywords:
                value = _exact(self.fold(kw.value))
                if kw.arg is None or value is None:
                    return [None]
                kwargs[kw.arg] = value
            if any(arg is None for arg in args):
                return [None]
            try:
                return [receiver.format(*args, **kwargs)]
            except (IndexError, KeyError, ValueError, AttributeError):
                return [None]
        if (
            func.attr in {"upper", "lower", "casefold", "strip", "lstrip", "rstrip"}
            and not node.args
            and not node.keywords
        ):
            return [str(getattr(receiver, func.attr)())]
        return [None]


def _normalise_sql(text: str) -> str:
    return _SQL_LINE_COMMENT.sub(" ", _SQL_BLOCK_COMMENT.sub(" ", text))


def role_sql_in(parts: Parts) -> str | None:
    """Return the role-switching SQL found in any known run of ``parts``, if any."""
    for part in parts:
        if part is None:
            continue
        match = ROLE_SQL_TEXT.search(_normalise_sql(part))
        if match:
            return " ".join(match.group(0).split())
    return None


# --------------------------------------------------------------------------------------
# Module names


def is_driver_module(name: str) -> bool:
    """True for a PostgreSQL driver package or any of its submodules."""
    return name.split(".", 1)[0] in DRIVER_PACKAGES


def test_only_module(name: str) -> str | None:
    """Return which test-only module ``name`` is or lies inside, if any."""
    for module in TEST_ONLY_MODULES:
        if name == module or name.startswith(f"{module}."):
            return module
    return None


def _is_db_upward(name: str) -> bool:
    return (
        name.startswith("symphony.")
        and name != DB_PACKAGE
        and not name.startswith(f"{DB_PACKAGE}.")
    )


def _could_become(prefix: str, module: str) -> bool:
    """Can a module name that starts with ``prefix`` be ``module`` or lie inside it?"""
    return module.startswith(prefix) or prefix.startswith(f"{module}.")


# --------------------------------------------------------------------------------------
# The checker


class FileChecker(ast.NodeVisitor):
    """Applies one file's policy to its syntax tree and collects findings."""

    def __init__(
        self,
        rel_path: str,
        policy: Policy,
        module: tuple[str, bool] | None,
    ) -> None:
        self.rel_path = rel_path
        self.policy = policy
        # The file's own package, for resolving relative imports (None outside src/).
        self.package: str | None = None
        if module is not None:
            name, is_package = module
            self.package = name if is_package else name.rpartition(".")[0]
        self.findings: list[Finding] = []
        self.folder = Folder(ast.Module(body=[], type_ignores=[]))
        self._docstrings: set[int] = set()
        # Local name -> importer it is bound to (``from importlib import import_module as x``).
        self._dynamic_aliases: dict[str, str] = {name: name for name in DYNAMIC_IMPORTERS}
        self._shadowed_runners: set[str] = set()

    # -- entry points ------------------------------------------------------------------

    def check(self, tree: ast.Module) -> list[Finding]:
        """Check a parsed module and return the findings."""
        self.folder = Folder(tree)
        self._collect_docstrings(tree)
        self._collect_aliases(tree)
        self.visit(tree)
        return self.findings

    def report(self, node: ast.AST, rule: Rule, detail: str) -> None:
        """Record that ``rule`` is broken at ``node``."""
        line = getattr(node, "lineno", 1)
        self.findings.append(
            Finding(self.rel_path, line, rule.code, rule.name, f"{detail}; {rule.fix}")
        )

    # -- preparation -------------------------------------------------------------------

    def _collect_docstrings(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    self._docstrings.add(id(body[0].value))

    def _collect_aliases(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    bound = alias.asname or alias.name
                    if (
                        node.module.split(".")[0] in _DYNAMIC_IMPORTER_HOMES
                        and alias.name in DYNAMIC_IMPORTERS
                    ):
                        self._dynamic_aliases[bound] = alias.name
                    elif bound in CODE_RUNNERS:
                        # e.g. ``from re import compile``: not the builtin.
                        self._shadowed_runners.add(bound)

    # -- static imports ----------------------------------------------------------------

    def _resolve_relative(self, level: int, module: str | None) -> str | None:
        if self.package is None:
            return None
        parts = self.package.split(".") if self.package else []
        if level - 1 > len(parts):
            return None
        base = parts[: len(parts) - (level - 1)]
        if module:
            base = [*base, *module.split(".")]
        return ".".join(base)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_imported_module(node, alias.name, how=f"import {alias.name}")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        dots = "." * node.level
        source = f"{dots}{node.module or ''}"
        if node.level == 0:
            base: str | None = node.module or ""
        else:
            base = self._resolve_relative(node.level, node.module)
        for alias in node.names:
            how = f"from {source} import {alias.name}"
            if base is None:
                # A relative import we cannot resolve (outside src/): judge it by name.
                if alias.name == "test_only" or (node.module or "").split(".")[-1] == "test_only":
                    self._report_test_only(node, "symphony.db.test_only", how)
                continue
            self._check_imported_module(node, base, how=how)
            if alias.name != "*":
                # The imported name may be a submodule (from symphony.db import test_only).
                # Only the test-only rule and, under the bare symphony package, the
                # upward rule look at it: a driver's attributes are already covered.
                submodule = f"{base}.{alias.name}"
                if base == "symphony" or test_only_module(submodule) is not None:
                    self._check_imported_module(node, submodule, how=how, submodule=True)
            if (
                self.policy.driver_rules
                and alias.name in DRIVER_TYPE_NAMES
                and not is_driver_module(base)
            ):
                self.report(
                    node,
                    DRIVER_TYPE,
                    f"imports the driver type name '{alias.name}' from '{base}'",
                )
        self.generic_visit(node)

    def _check_imported_module(
        self, node: ast.AST, name: str, how: str, submodule: bool = False
    ) -> None:
        if self.policy.driver_rules and is_driver_module(name) and not submodule:
            self.report(
                node,
                DRIVER_IMPORT,
                f"'{how}' imports the PostgreSQL driver '{name}' outside symphony.db",
            )
        if self.policy.test_only:
            found = test_only_module(name)
            if found is not None:
                self._report_test_only(node, found, how)
        if self.policy.db_upward and _is_db_upward(name):
            self.report(node, DB_UPWARD_IMPORT, f"'{how}' makes symphony.db import '{name}'")

    def _report_test_only(self, node: ast.AST, module: str, how: str) -> None:
        if not self.policy.test_only:
            return
        self.report(node, TEST_ONLY_IMPORT, f"'{how}' imports the test-only module '{module}'")

    # -- names and attributes ----------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if self.policy.driver_rules and node.id in DRIVER_TYPE_NAMES:
            self.report(node, DRIVER_TYPE, f"names the driver type '{node.id}'")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.policy.driver_rules and node.attr in DRIVER_TYPE_NAMES:
            self.report(node, DRIVER_TYPE, f"names the driver type '.{node.attr}'")
        if node.attr in {"test_only", "tests"} and _dotted_tail(node.value) == "db":
            # symphony.db.test_only reached as an attribute of the db package.
            self._report_test_only(node, f"{DB_PACKAGE}.{node.attr}", f"...db.{node.attr}")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        # sys.modules["psycopg"] hands out the driver that symphony.db imported.
        if _is_sys_modules(node.value):
            self._check_module_lookup(node, node.slice)
        self.generic_visit(node)

    def _check_module_lookup(self, node: ast.AST, key: ast.AST) -> None:
        name = _exact(self.folder.fold(key))
        if name is None:
            return
        self._check_constant_dynamic(node, name, how=f"sys.modules[{name!r}]")

    def _check_annotation(self, annotation: ast.AST | None) -> None:
        """Driver types hidden in string annotations such as ``conn: "Connection"``."""
        if annotation is None or not self.policy.driver_rules:
            return
        for inner in ast.walk(annotation):
            if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                try:
                    parsed = ast.parse(inner.value, mode="eval")
                except SyntaxError:
                    continue
                for sub in ast.walk(parsed):
                    name = sub.id if isinstance(sub, ast.Name) else None
                    if isinstance(sub, ast.Attribute):
                        name = sub.attr
                    if name in DRIVER_TYPE_NAMES:
                        self.report(inner, DRIVER_TYPE, f"names the driver type '{name}'")

    def visit_arg(self, node: ast.arg) -> None:
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_annotation(node.returns)
        self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._check_annotation(node.returns)
        self.generic_visit(node)

    # -- calls -------------------------------------------------------------------------

    def _dynamic_importer(self, func: ast.AST) -> str | None:
        """The importer a call goes through: ``import_module`` (or an alias of it),
        ``x.import_module``, ``getattr(importlib, "import_module")``, ..."""
        if isinstance(func, ast.Name) and func.id in self._dynamic_aliases:
            return self._dynamic_aliases[func.id]
        if isinstance(func, ast.Attribute) and func.attr in DYNAMIC_IMPORTERS:
            return func.attr
        if (
            isinstance(func, ast.Call)
            and isinstance(func.func, ast.Name)
            and func.func.id == "getattr"
            and len(func.args) >= 2
        ):
            name = _exact(self.folder.fold(func.args[1]))
            if name in DYNAMIC_IMPORTERS:
                return name
        return None

    def visit_Call(self, node: ast.Call) -> None:
        callee = _callee_name(node.func)
        importer = self._dynamic_importer(node.func)
        if importer is not None:
            self._check_dynamic_import(node, importer)
        elif callee is not None:
            if (
                isinstance(node.func, ast.Name)
                and callee in CODE_RUNNERS
                and callee not in self._shadowed_runners
            ):
                self._check_code_runner(node, callee)
            elif (
                isinstance(node.func, ast.Attribute)
                and callee in {"get", "pop", "setdefault", "__getitem__"}
                and _is_sys_modules(node.func.value)
                and node.args
            ):
                self._check_module_lookup(node, node.args[0])
            elif isinstance(node.func, ast.Name) and callee == "getattr" and len(node.args) >= 2:
                attribute = _exact(self.folder.fold(node.args[1]))
                if attribute in {"test_only", "tests"} and _dotted_tail(node.args[0]) == "db":
                    self._report_test_only(
                        node, f"{DB_PACKAGE}.{attribute}", f"getattr(..., {attribute!r})"
                    )
            if self.policy.driver_rules and isinstance(node.func, ast.Attribute):
                self._check_raw_sql(node, node.func)
        if self.policy.role_sql and self._fold_role_sql(node):
            # Reported for the whole expression; its parts would only repeat it.
            self._visit_without_role_sql(node)
            return
        self.generic_visit(node)

    def _check_raw_sql(self, node: ast.Call, func: ast.Attribute) -> None:
        method = func.attr
        receiver = _receiver_name(func.value)
        if method in ANY_RECEIVER_METHODS:
            self.report(node, RAW_SQL, f"calls the DB-API method '.{method}()' outside symphony.db")
            return
        if method in RAW_HANDLE_METHODS and receiver is not None and _is_raw_handle(receiver):
            self.report(
                node,
                RAW_SQL,
                f"calls '{receiver}.{method}()' on what looks like a raw pool, connection "
                "or cursor",
            )
            return
        if method in SQL_TEXT_METHODS:
            arguments = [*node.args, *(kw.value for kw in node.keywords)]
            for argument in arguments:
                # The known start of the text is enough: f"DELETE FROM t WHERE id = {x}".
                text = self.folder.fold(argument)[0]
                if text is not None and SQL_TEXT.match(_normalise_sql(text)):
                    snippet = " ".join(text.split())[:40]
                    self.report(node, RAW_SQL, f"passes SQL text ({snippet!r}) to '.{method}()'")
                    return

    def _check_dynamic_import(self, node: ast.Call, callee: str) -> None:
        name_arg = _argument(node, 0, "name") or _argument(node, 0, "mod_name")
        if name_arg is None:
            return
        how = f"{callee}(...)"
        parts = self.folder.fold(name_arg)
        if callee in {"import_module", "find_spec"}:
            package_arg = _argument(node, 1, "package")
            parts = self._absolute_dynamic_name(parts, package_arg, level=None)
        elif callee == "__import__":
            level_arg = _argument(node, 4, "level")
            level = 0
            if isinstance(level_arg, ast.Constant) and isinstance(level_arg.value, int):
                level = level_arg.value
            elif level_arg is not None:
                parts = [None]
            if level:
                parts = self._absolute_dynamic_name(parts, None, level=level)
        elif callee == "resolve_name":
            known = _exact(parts)
            if known is not None:
                parts = [known.split(":", 1)[0]]
        name = _exact(parts)
        if name is not None:
            self._check_constant_dynamic(node, name, how=f"{callee}({name!r})")
            if callee == "__import__":
                # __import__("symphony.db", fromlist=["test_only"]) loads the submodule.
                for item in self._constant_fromlist(_argument(node, 3, "fromlist")):
                    found = test_only_module(f"{name}.{item}")
                    if found is not None:
                        self._report_test_only(
                            node, found, f"{callee}({name!r}, fromlist=[{item!r}])"
                        )
            return
        self._check_unknown_dynamic(node, parts, how)

    def _absolute_dynamic_name(
        self, parts: Parts, package_arg: ast.AST | None, level: int | None
    ) -> Parts:
        """Turn a relative dynamic import name into an absolute one, if it can be known."""
        if level is None:
            first = parts[0]
            if first is None or not first.startswith("."):
                return parts
            stripped = first.lstrip(".")
            level = len(first) - len(stripped)
            parts = _merge([stripped, *parts[1:]])
        package: str | None
        if package_arg is None or (
            isinstance(package_arg, ast.Name) and package_arg.id in {"__package__", "__name__"}
        ):
            package = self.package
        else:
            package = _exact(self.folder.fold(package_arg))
        if package is None:
            return [None]
        base = package.split(".")
        if level - 1 > len(base):
            return [None]
        prefix = ".".join(base[: len(base) - (level - 1)])
        rest = parts if parts != [""] else []
        return _merge([prefix, "." if rest else "", *rest])

    def _constant_fromlist(self, node: ast.AST | None) -> list[str]:
        if not isinstance(node, ast.List | ast.Tuple):
            return []
        items = [_exact(self.folder.fold(element)) for element in node.elts]
        return [item for item in items if item is not None]

    def _check_constant_dynamic(self, node: ast.AST, name: str, how: str) -> None:
        if self.policy.driver_rules and is_driver_module(name):
            self.report(
                node,
                DRIVER_IMPORT,
                f"'{how}' loads the PostgreSQL driver '{name}' outside symphony.db",
            )
        found = test_only_module(name)
        if found is not None:
            self._report_test_only(node, found, how)

    def _check_unknown_dynamic(self, node: ast.AST, parts: Parts, how: str) -> None:
        if not self.policy.dynamic_rule:
            return
        prefix = parts[0] if parts and parts[0] is not None else ""
        if self.policy.driver_rules:
            head = prefix.split(".", 1)[0]
            if "." in prefix and head in DRIVER_PACKAGES:
                self.report(
                    node,
                    DRIVER_IMPORT,
                    f"'{how}' loads a submodule of the PostgreSQL driver '{head}' outside "
                    "symphony.db",
                )
                return
            if any(_could_become(prefix, driver) for driver in DRIVER_PACKAGES):
                self.report(
                    node,
                    DYNAMIC_IMPORT,
                    f"'{how}' imports a module whose name is not constant"
                    + (f" (starts {prefix!r})" if prefix else "")
                    + ", so it may be a PostgreSQL driver",
                )
                return
        if self.policy.test_only and any(_could_become(prefix, m) for m in TEST_ONLY_MODULES):
            self.report(
                node,
                DYNAMIC_IMPORT,
                f"'{how}' imports a module whose name is not constant"
                + (f" (starts {prefix!r})" if prefix else "")
                + ", so it may be test-only code",
            )

    def _check_code_runner(self, node: ast.Call, callee: str) -> None:
        source_arg = _argument(node, 0, "source")
        if source_arg is None:
            return
        source = _exact(self.folder.fold(source_arg))
        if source is None:
            if self.policy.dynamic_rule and (self.policy.driver_rules or self.policy.test_only):
                self.report(
                    node,
                    DYNAMIC_IMPORT,
                    f"'{callee}()' runs code that is not constant, so its imports cannot be "
                    "checked",
                )
            return
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return
        # Check the code that would run as if it were written here. Its strings are
        # already covered: the role-SQL rule saw them inside the source string itself.
        inner = FileChecker(self.rel_path, replace(self.policy, role_sql=False), None)
        inner.package = self.package
        line = node.lineno
        for finding in inner.check(tree):
            # Every finding of the inner code belongs to the exec/eval call's line.
            self.findings.append(
                Finding(
                    finding.path,
                    line,
                    finding.code,
                    finding.name,
                    f"{finding.message} (in code run by {callee}())",
                )
            )

    # -- strings -----------------------------------------------------------------------

    def _fold_role_sql(self, node: ast.AST) -> bool:
        if id(node) in self._docstrings:
            return False
        found = role_sql_in(self.folder.fold(node))
        if found is None:
            return False
        self.report(node, ROLE_SQL, f"string holds role-switching SQL ({found!r})")
        return True

    def _visit_without_role_sql(self, node: ast.AST) -> None:
        saved = self.policy
        self.policy = replace(saved, role_sql=False)
        try:
            self.generic_visit(node)
        finally:
            self.policy = saved

    def visit_Constant(self, node: ast.Constant) -> None:
        if self.policy.role_sql:
            self._fold_role_sql(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        if self.policy.role_sql and self._fold_role_sql(node):
            self._visit_without_role_sql(node)
            return
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if self.policy.role_sql and self._fold_role_sql(node):
            self._visit_without_role_sql(node)
            return
        self.generic_visit(node)


def _dotted_tail(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_sys_modules(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "modules") or (
        isinstance(node, ast.Name) and node.id == "modules"
    )


def _callee_name(func: ast.AST) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _receiver_name(node: ast.AST) -> str | None:
    """The identifier a method is called on: ``conn`` in ``conn.x()``, ``_pool`` in
    ``self._pool.x()``, ``connection`` in ``pool.connection().x()``."""
    while True:
        if isinstance(node, ast.Await | ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            break
    return _dotted_tail(node)


def _is_raw_handle(identifier: str) -> bool:
    words = [word for word in re.split(r"_+", identifier.lower()) if word]
    return any(_RAW_HANDLE_WORD.fullmatch(word) for word in words)


def _argument(node: ast.Call, position: int, keyword: str) -> ast.AST | None:
    for kw in node.keywords:
        if kw.arg == keyword:
            return kw.value
    if position < len(node.args) and not any(
        isinstance(arg, ast.Starred) for arg in node.args[: position + 1]
    ):
        return node.args[position]
    return None


# --------------------------------------------------------------------------------------
# Files


def check_source(source: str, rel_path: str) -> list[Finding]:
    """Check Python source as if it lived at ``rel_path`` (relative to the repository)."""
    path = PurePosixPath(rel_path)
    policy = policy_for(path)
    if policy is None:
        return []
    try:
        tree = ast.parse(source, filename=rel_path)
    except SyntaxError as error:
        return [
            Finding(
                rel_path,
                error.lineno or 1,
                SYNTAX_ERROR.code,
                SYNTAX_ERROR.name,
                f"cannot parse ({error.msg}); {SYNTAX_ERROR.fix}",
            )
        ]
    checker = FileChecker(rel_path, policy, module_name_for(path))
    return sorted(set(checker.check(tree)))


# Text that runs nothing: documentation of the role switch is not a role switch.
DOC_SUFFIXES = frozenset({".md", ".rst", ".txt", ".adoc"})
SQL_SUFFIXES = frozenset({".sql", ".psql", ".pgsql"})


def _blanked(match: re.Match[str]) -> str:
    """A comment as whitespace of the same shape, so line numbers stay right."""
    return re.sub(r"[^\n]", " ", match.group(0))


def _notebook_cells(text: str) -> list[tuple[str, str]] | None:
    """(cell type, source) of each cell of a Jupyter notebook, or None if it is not one."""
    try:
        cells = json.loads(text).get("cells")
    except (ValueError, AttributeError):
        return None
    if not isinstance(cells, list):
        return None
    found = []
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        source = cell.get("source", "")
        found.append((str(cell.get("cell_type", "")),
                      "".join(source) if isinstance(source, list) else str(source)))
    return found


def _role_sql_findings(rel_path: str, text: str, where: str = "") -> list[Finding]:
    findings = []
    for match in ROLE_SQL_TEXT.finditer(text):
        found = " ".join(match.group(0).split())
        findings.append(Finding(rel_path, 1 + text.count("\n", 0, match.start()), ROLE_SQL.code,
                                ROLE_SQL.name,
                                f"text holds role-switching SQL ({found!r}){where}; "
                                f"{ROLE_SQL.fix}"))
    return findings


def _check_notebook(cells: list[tuple[str, str]], rel_path: str) -> list[Finding]:
    """Code cells are Python and are checked as Python (DB005 folds their strings); raw
    cells as text; markdown cells are documentation. Findings name the cell, at line 1."""
    findings = []
    for number, (kind, source) in enumerate(cells, start=1):
        if kind == "markdown":
            continue
        if kind == "code":
            try:
                ast.parse(source)
            except SyntaxError:
                pass  # a cell of another kernel's language, or IPython magic: read as text
            else:
                for f in check_source(source, rel_path + ".py"):
                    findings.append(Finding(rel_path, 1, f.code, f.name,
                                            f"cell {number}, line {f.line}: {f.message}"))
                continue
        findings.extend(replace(f, line=1) for f in
                        _role_sql_findings(rel_path, source, f" in cell {number}"))
    return findings


def check_text(text: str, rel_path: str) -> list[Finding]:
    """DB005 over a file that is not Python, as if it lived at ``rel_path``."""
    path = PurePosixPath(rel_path)
    policy = policy_for(path)
    if policy is None or not policy.role_sql or path.suffix in DOC_SUFFIXES:
        return []
    if path.suffix == ".ipynb" and (cells := _notebook_cells(text)) is not None:
        return sorted(set(_check_notebook(cells, rel_path)))
    if path.suffix in SQL_SUFFIXES:
        # Comments are whitespace to PostgreSQL: SET/**/ROLE is a role switch.
        text = _SQL_LINE_COMMENT.sub(_blanked, _SQL_BLOCK_COMMENT.sub(_blanked, text))
    return sorted(set(_role_sql_findings(rel_path, text)))


def check_file(source: str, rel_path: str) -> list[Finding]:
    """Check a file's text by its kind: Python by syntax tree, anything else as text."""
    if rel_path.endswith(".py"):
        return check_source(source, rel_path)
    return check_text(source, rel_path)


def read_text_file(file: Path) -> str | None:
    """The file's text, or None for a binary file (not UTF-8, or holding NUL bytes)."""
    try:
        data = file.read_bytes()
    except OSError:
        return None
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def iter_files(top: Path, root: Path, *, python_only: bool) -> Iterator[Path]:
    """Every file (or every ``*.py`` file) under ``top``, skipping hidden directories (.git,
    .venv, caches), virtualenvs and the root's build output, in a stable order."""
    for directory, subdirs, files in os.walk(top):
        at_root = Path(directory) == root
        subdirs[:] = sorted(
            name
            for name in subdirs
            if not name.startswith(".")
            and name not in SKIPPED_DIR_NAMES
            and not (at_root and name in SKIPPED_ROOT_DIR_NAMES)
            and not name.endswith(".egg-info")
            and not (Path(directory, name) / "pyvenv.cfg").exists()
        )
        for name in sorted(files):
            if name.endswith(".py") or not python_only:
                yield Path(directory, name)


def tracked_files(top: Path, root: Path) -> list[Path]:
    """Files git tracks under ``top`` (hidden directories such as .ci/ included); empty
    outside a git work tree or without git."""
    if not (root / ".git").exists():
        return []
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--", str(top)],
            capture_output=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [root / name for name in listed.decode("utf-8", "replace").split("\0") if name]


def iter_checked_files(top: Path, root: Path) -> Iterator[Path]:
    """What is checked under ``top``: every file the walk finds, plus every tracked file
    the walk skips (a hidden directory such as .ci/)."""
    walked = list(iter_files(top, root, python_only=False))
    seen = {os.path.abspath(path) for path in walked}
    yield from walked
    for path in tracked_files(top, root):
        if os.path.abspath(path) not in seen and path.is_file():
            yield path


def iter_python_files(top: Path, root: Path) -> Iterator[Path]:
    """Every ``*.py`` file under ``top`` (see ``iter_files``)."""
    return iter_files(top, root, python_only=True)


def check_paths(root: Path, paths: Sequence[Path]) -> tuple[list[Finding], int]:
    """Check files (or directories, walked) and return the findings and files checked."""
    findings: list[Finding] = []
    checked = 0
    for target in paths:
        files = iter_checked_files(target, root) if target.is_dir() else iter([target])
        for file in files:
            # Lexical, not resolved: a symlinked file is judged by where it sits.
            rel = Path(os.path.relpath(os.path.abspath(file), root)).as_posix()
            if rel.startswith("../") or policy_for(PurePosixPath(rel)) is None:
                continue
            if not rel.endswith(".py"):
                text = read_text_file(file)
                if text is not None:
                    checked += 1
                    findings.extend(check_text(text, rel))
                continue
            checked += 1
            try:
                source = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                findings.append(
                    Finding(rel, 1, SYNTAX_ERROR.code, SYNTAX_ERROR.name, f"cannot read: {error}")
                )
                continue
            findings.extend(check_source(source, rel))
    return sorted(set(findings)), checked


def default_root() -> Path:
    """The repository root: two levels above this file (scripts/guardrails/)."""
    return Path(__file__).resolve().parent.parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=None, help="repository root")
    parser.add_argument("--list-rules", action="store_true", help="print the rules and exit")
    parser.add_argument("paths", nargs="*", type=Path, help="files or directories to check")
    args = parser.parse_args(argv)

    if args.list_rules:
        for rule in RULES:
            print(f"{rule.code} {rule.name}: {rule.fix}")
        return 0

    root: Path = (args.root or default_root()).resolve()
    if not root.is_dir():
        print(f"db-boundary: root {root} is not a directory", file=sys.stderr)
        return 2
    paths = [Path(os.path.abspath(path)) for path in args.paths] or [root]
    for path in paths:
        if not path.exists():
            print(f"db-boundary: {path} does not exist", file=sys.stderr)
            return 2
        if not path.is_relative_to(root):
            print(f"db-boundary: {path} is outside the root {root}", file=sys.stderr)
            return 2

    findings, checked = check_paths(root, paths)
    for finding in findings:
        print(finding.format())
    if findings:
        files = len({finding.path for finding in findings})
        print(
            f"db-boundary: {len(findings)} finding(s) in {files} file(s) "
            f"({checked} files checked)"
        )
        return 1
    print(f"db-boundary: OK ({checked} files checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
