"""One-time conversion: write src/symphony/db/sql/objects/ from the numbered migrations.

Every function, view and trigger a fresh migration creates gets one file holding its latest
definition, taken word for word from the last migration that created it (with the comment
written right above it there, and any ALTER of it after that), plus its privileges as the
catalog has them after the whole chain: `REVOKE ALL ... FROM PUBLIC` and the GRANTs.

Then it proves the files faithful: a database migrated with the numbered migrations only and
one migrated with the numbered migrations and then the object files (`symphony migrate`) must
hold the same functions, views, triggers, privileges and owners (symphony.db.tests.catalog).

Run it when the objects move out of the migrations (and again, on that branch, after merging
migrations that landed meanwhile). Once the object files are on main they are the source:
edit them by hand; this script refuses to overwrite them unless told to (`--replace`).

    .venv/bin/python -m symphony.db.tests.objects_from_migrations [--replace] [--check]

It lives beside the database tests because it reads the catalog as the admin (test_only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("SYMPHONY_ENV", "test")

from symphony.db import EmbeddedServer, migrate, test_only
from symphony.db.migration import OBJECT_KINDS, load_migrations, load_objects
from symphony.db.tests import catalog

OBJECTS = Path(__file__).resolve().parent.parent / "sql" / "objects"
MOVED = Path(__file__).resolve().parent / "moved_objects.sha256"
"""The checksum of each object file as this script wrote it: test_migration_objects proves
that every file still unchanged since then defines exactly what the numbered migrations did."""
ROOT = OBJECTS.parents[4]

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_IDENT = r'(?:"[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)'
_NAME = rf"(?P<name>{_IDENT}(?:\.{_IDENT})?)"
_CREATE_FUNCTION = re.compile(rf"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+{_NAME}\s*\(", re.I)
_ALTER_FUNCTION = re.compile(rf"ALTER\s+FUNCTION\s+{_NAME}\s*\(", re.I)
_DROP_FUNCTION = re.compile(rf"DROP\s+FUNCTION\s+(?:IF\s+EXISTS\s+)?{_NAME}\s*\(", re.I)
_CREATE_VIEW = re.compile(
    rf"CREATE\s+(?:OR\s+REPLACE\s+)?(?:MATERIALIZED\s+)?VIEW\s+{_NAME}", re.I)
_ALTER_VIEW = re.compile(rf"ALTER\s+VIEW\s+(?:IF\s+EXISTS\s+)?{_NAME}", re.I)
_DROP_VIEW = re.compile(rf"DROP\s+VIEW\s+(?:IF\s+EXISTS\s+)?{_NAME}", re.I)
_CREATE_TRIGGER = re.compile(
    rf"CREATE\s+(?:OR\s+REPLACE\s+)?(?P<constraint>CONSTRAINT\s+)?TRIGGER\s+(?P<name>{_IDENT})"
    rf".*?\bON\s+(?P<table>{_IDENT}(?:\.{_IDENT})?)", re.I | re.S)
_DROP_TRIGGER = re.compile(
    rf"DROP\s+TRIGGER\s+(?:IF\s+EXISTS\s+)?(?P<name>{_IDENT})\s+ON\s+(?P<table>{_IDENT}"
    rf"(?:\.{_IDENT})?)", re.I)
_ALTER_TABLE_TRIGGER = re.compile(
    rf"ALTER\s+TABLE\s+(?:ONLY\s+)?(?P<table>{_IDENT}(?:\.{_IDENT})?)\s+"
    rf"(?:ENABLE|DISABLE)\s+(?:ALWAYS\s+|REPLICA\s+)?TRIGGER\s+(?P<name>{_IDENT})\s*;?\s*$",
    re.I)


@dataclass
class Statement:
    migration: str
    text: str       # the statement itself, from its first keyword to its semicolon
    comment: str    # the comment lines written right above it ("" if none)


def split_statements(migration: str, sql: str) -> list[Statement]:
    """The statements of one migration, each with the comment block right above it.

    A small lexer that knows what can hide a semicolon in PostgreSQL's SQL: comments, quoted
    strings (E'' with backslashes), quoted identifiers and dollar-quoted bodies."""
    out: list[Statement] = []
    i, start, n = 0, 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            i = sql.index("*/", i + 2) + 2
        elif sql[i] == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            i += 1
            while True:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql[i] == "'":
                    if sql.startswith("''", i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
        elif sql[i] == '"':
            i = sql.index('"', i + 1) + 1
        elif sql[i] == "$" and (m := _DOLLAR.match(sql, i)) and not (
                i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            i = sql.index(m.group(0), m.end()) + len(m.group(0))
        elif sql[i] == ";":
            out.append(_statement(migration, sql[start:i + 1]))
            start = i = i + 1
        else:
            i += 1
    return out


def _statement(migration: str, piece: str) -> Statement:
    lines = piece.split("\n")
    first = 0
    for k, line in enumerate(lines):   # the statement starts at its first non-comment line
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            first = k
            break
    comment: list[str] = []
    k = first - 1
    while k >= 0 and lines[k].strip().startswith("--"):
        comment.insert(0, lines[k].rstrip())
        k -= 1
    return Statement(migration, "\n".join(lines[first:]).strip(), "\n".join(comment))


def _unquote(name: str) -> str:
    parts = [p.strip('"') for p in re.findall(rf"{_IDENT}", name)]
    return ".".join(parts if len(parts) == 2 else ["symphony", *parts])


def _argument_count(text: str, open_paren: int) -> int:
    """Top-level commas + 1 in the parenthesised argument list starting at `open_paren`."""
    depth, commas, i = 0, 0, open_paren
    body = False
    while True:
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return commas + 1 if body else 0
        elif c == "," and depth == 1:
            commas += 1
        elif depth == 1 and not c.isspace():
            body = True
        i += 1


@dataclass
class Definition:
    create: Statement
    alters: list[Statement] = field(default_factory=list)


def latest_definitions(
) -> tuple[dict[tuple[str, int], Definition], dict[str, Definition], dict[str, Definition]]:
    """The last CREATE (and the ALTERs after it) of every function (by name and argument
    count), view (by name) and trigger (by table.name) in the numbered migrations."""
    functions: dict[tuple[str, int], Definition] = {}
    views: dict[str, Definition] = {}
    triggers: dict[str, Definition] = {}
    for migration in load_migrations():
        for st in split_statements(migration.name, migration.sql):
            head = st.text
            if m := _CREATE_FUNCTION.match(head):
                key = (_unquote(m["name"]), _argument_count(head, m.end() - 1))
                functions[key] = Definition(st)
            elif m := _ALTER_FUNCTION.match(head):
                key = (_unquote(m["name"]), _argument_count(head, m.end() - 1))
                functions[key].alters.append(st)
            elif m := _DROP_FUNCTION.match(head):
                functions.pop((_unquote(m["name"]), _argument_count(head, m.end() - 1)), None)
            elif m := _CREATE_VIEW.match(head):
                views[_unquote(m["name"])] = Definition(st)
            elif m := _ALTER_VIEW.match(head):
                views[_unquote(m["name"])].alters.append(st)
            elif m := _DROP_VIEW.match(head):
                views.pop(_unquote(m["name"]), None)
            elif m := _CREATE_TRIGGER.match(head):
                triggers[f"{_unquote(m['table'])}.{m['name']}"] = Definition(st)
            elif m := _DROP_TRIGGER.match(head):
                triggers.pop(f"{_unquote(m['table'])}.{m['name']}", None)
            elif m := _ALTER_TABLE_TRIGGER.match(head):
                triggers[f"{_unquote(m['table'])}.{m['name']}"].alters.append(st)
    return functions, views, triggers


_FUNCTIONS = """
SELECT n.nspname AS schema, p.proname AS name, p.pronargs AS nargs,
       n.nspname || '.' || p.proname || '(' || oidvectortypes(p.proargtypes) || ')' AS signature,
       (SELECT array_agg(g ORDER BY g)
          FROM (SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                     ELSE a.grantee::regrole::text END AS g
                  FROM aclexplode(p.proacl) a
                 WHERE a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE') x) AS grantees
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = ANY (%(schemas)s)
 ORDER BY 1, 2, 3
"""

_VIEWS = """
SELECT n.nspname AS schema, c.relname AS name,
       (SELECT array_agg(a.privilege_type || ' ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                                         ELSE a.grantee::regrole::text END
                         ORDER BY 1)
          FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) AS grants,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL)
           AS column_grants
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s) AND c.relkind = 'v'
 ORDER BY 1, 2
"""

_TRIGGERS = """
SELECT n.nspname AS schema, c.relname AS table_name, t.tgname AS name,
       t.tgenabled AS enabled, t.tgconstraint <> 0 AS is_constraint
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s) AND NOT t.tgisinternal
 ORDER BY 3
"""


def _file_name(schema: str, name: str) -> str:
    return f"{name}.sql" if schema == "symphony" else f"{schema}.{name}.sql"


def _header(what: str, definitions: list[Definition]) -> str:
    sources = sorted({d.create.migration for d in definitions})
    where = (f"migration {sources[0]}" if len(sources) == 1
             else f"migrations {', '.join(sources[:-1])} and {sources[-1]}")
    text = (f"{what}: the running definition, applied again whenever this file changes "
            f"(a repeatable object: see sql/objects/README.md). Moved here from its last "
            f"definition in {where}.")
    return "\n".join(textwrap.wrap(text, 96, initial_indent="-- ", subsequent_indent="-- ",
                                    break_on_hyphens=False)) + "\n"


def _or_replace(text: str, kind: str) -> str:
    return re.sub(rf"^CREATE\s+(?:OR\s+REPLACE\s+)?{kind}", f"CREATE OR REPLACE {kind}", text,
                  count=1, flags=re.I)


def _body(d: Definition, text: str) -> str:
    parts = [f"{d.create.comment}\n{text}" if d.create.comment else text]
    parts += [f"{a.comment}\n{a.text}" if a.comment else a.text for a in d.alters]
    return "\n\n".join(parts)


async def write_files(dsn: str, target: Path) -> int:
    functions, views, triggers = latest_definitions()
    params = {"schemas": list(catalog.SCHEMAS)}
    files: dict[Path, str] = {}

    by_name: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in await test_only.query_no_role(dsn, _FUNCTIONS, params):
        by_name.setdefault((str(row["schema"]), str(row["name"])), []).append(row)
    for (schema, name), overloads in by_name.items():
        defs = [functions[(f"{schema}.{name}", int(str(o["nargs"])))] for o in overloads]
        blocks: list[str] = []
        for o, d in zip(overloads, defs, strict=True):
            text = _body(d, _or_replace(d.create.text, "FUNCTION"))
            grants = list(o["grantees"] or [])  # type: ignore[call-overload]
            acl = [f"REVOKE ALL ON FUNCTION {o['signature']}\n    FROM PUBLIC;"]
            if grants:
                acl.append(f"GRANT EXECUTE ON FUNCTION {o['signature']}\n    TO "
                           f"{', '.join(grants)};")
            blocks.append(text + "\n\n" + "\n".join(acl))
        files[target / "functions" / _file_name(schema, name)] = (
            _header(f"{schema}.{name}", defs) + "\n" + "\n\n".join(blocks) + "\n")

    for row in await test_only.query_no_role(dsn, _VIEWS, params):
        schema, name = str(row["schema"]), str(row["name"])
        if row["column_grants"]:
            raise SystemExit(f"view {schema}.{name} has column grants: write its file by hand")
        d = views[f"{schema}.{name}"]
        acl = [f"REVOKE ALL ON {schema}.{name} FROM PUBLIC;"]
        by_privilege: dict[str, list[str]] = {}
        for grant in row["grants"] or []:  # type: ignore[attr-defined]
            privilege, grantee = str(grant).split(" ", 1)
            by_privilege.setdefault(grantee, []).append(privilege)
        for grantee, privileges in sorted(by_privilege.items()):
            acl.append(f"GRANT {', '.join(sorted(privileges))} ON {schema}.{name} TO {grantee};")
        files[target / "views" / _file_name(schema, name)] = (
            _header(f"{schema}.{name}", [d]) + "\n"
            + _body(d, _or_replace(d.create.text, "VIEW")) + "\n\n" + "\n".join(acl) + "\n")

    for row in await test_only.query_no_role(dsn, _TRIGGERS, params):
        schema, table, name = str(row["schema"]), str(row["table_name"]), str(row["name"])
        d = triggers[f"{schema}.{table}.{name}"]
        text = re.sub(r"^CREATE\s+OR\s+REPLACE\s+", "CREATE ", d.create.text, flags=re.I)
        parts = [f"DROP TRIGGER IF EXISTS {name}\n    ON {schema}.{table};",
                 f"{d.create.comment}\n{text}" if d.create.comment else text]
        enabled = {"A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "D": "DISABLE"}.get(
            str(row["enabled"]))
        if enabled:
            parts.append(f"ALTER TABLE {schema}.{table}\n    {enabled} TRIGGER {name};")
        files[target / "triggers" / _file_name(schema, name)] = (
            _header(f"trigger {name} on {schema}.{table}", [d]) + "\n" + "\n\n".join(parts)
            + "\n")

    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return len(files)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replace", action="store_true",
                        help="overwrite existing object files (only before they are the source)")
    parser.add_argument("--check", action="store_true",
                        help="only compare the existing object files with the migrations")
    args = parser.parse_args()
    assert tuple(OBJECT_KINDS) == ("functions", "views", "triggers")
    if not args.check and OBJECTS.exists() and any(OBJECTS.rglob("*.sql")):
        if not args.replace:
            print(f"{OBJECTS} already holds object files: they are the source now "
                  "(--replace overwrites them)", file=sys.stderr)
            return 2
        for kind in OBJECT_KINDS:
            shutil.rmtree(OBJECTS / kind, ignore_errors=True)

    with tempfile.TemporaryDirectory(prefix="sql-objects-") as tmp:
        server = EmbeddedServer(Path(tmp) / "pgdata", delete_on_stop=True)
        admin = server.start()
        try:
            versioned = await test_only.create_database(admin, f"v_{uuid.uuid4().hex[:8]}")
            await migrate(versioned, objects=False)
            if not args.check:
                count = await write_files(versioned, OBJECTS)
                MOVED.write_text("".join(f"{o.checksum}  {o.key}\n" for o in load_objects()),
                                 encoding="utf-8")
                print(f"wrote {count} object files under {OBJECTS.relative_to(ROOT)} and "
                      f"their checksums to {MOVED.relative_to(ROOT)}")
            both = await test_only.create_database(admin, f"o_{uuid.uuid4().hex[:8]}")
            await migrate(both)
            diff = catalog.differences(await catalog.objects(versioned),
                                       await catalog.objects(both))
        finally:
            server.stop()
    for line in diff:
        print(line, file=sys.stderr)
    print("the object files reproduce the migrations' objects" if not diff
          else f"{len(diff)} objects differ", file=sys.stderr)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
