"""What a database holds of the repeatable objects (functions, views, triggers), read from
the catalog so two databases can be compared: by the object tests, the upgrade tests and the
one-time generator of the object files (objects_from_migrations).

Not a test module: helpers only (run as the admin through `symphony.db.test_only`).
"""

from __future__ import annotations

from typing import Any

from symphony.db import test_only

SCHEMAS = ("symphony", "symphony_ops")

# One row per object: (kind, key, definition, acl, owner, comment). The key names the object
# the way the object files do (schema-qualified, a function with its argument types); the
# definition is PostgreSQL's own rendering, so two databases compare equal exactly when they
# would run the same code with the same privileges.
_FINGERPRINT = """
SELECT 'function' AS kind,
       n.nspname || '.' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid)
           || ')' AS key,
       pg_catalog.pg_get_functiondef(p.oid) AS definition,
       (SELECT string_agg(x, ',' ORDER BY x)
          FROM (SELECT a.grantee::regrole::text || ':' || a.privilege_type
                       || CASE WHEN a.is_grantable THEN '*' ELSE '' END AS x
                  FROM pg_catalog.aclexplode(p.proacl) a
                 WHERE a.grantee <> p.proowner) g) AS acl,
       p.proacl IS NULL AS default_acl,
       p.proowner::regrole::text AS owner,
       pg_catalog.obj_description(p.oid, 'pg_proc') AS comment
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = ANY (%(schemas)s)
UNION ALL
SELECT 'view',
       n.nspname || '.' || c.relname,
       pg_catalog.pg_get_viewdef(c.oid) || coalesce(' WITH ' || c.reloptions::text, '')
           || ' COLUMNS ' || (SELECT string_agg(a.attname || ' ' || pg_catalog.format_type(
                                  a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                                FROM pg_catalog.pg_attribute a
                               WHERE a.attrelid = c.oid AND a.attnum > 0),
       (SELECT string_agg(x, ',' ORDER BY x)
          FROM (SELECT a.grantee::regrole::text || ':' || a.privilege_type
                       || CASE WHEN a.is_grantable THEN '*' ELSE '' END AS x
                  FROM pg_catalog.aclexplode(c.relacl) a
                 WHERE a.grantee <> c.relowner) g)
       || coalesce(' COLUMNS ' || (SELECT string_agg(a.attname || '=' || a.attacl::text, ',' ORDER BY a.attnum)
                                     FROM pg_catalog.pg_attribute a
                                    WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL), ''),
       c.relacl IS NULL,
       c.relowner::regrole::text,
       pg_catalog.obj_description(c.oid, 'pg_class')
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s) AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'trigger',
       n.nspname || '.' || c.relname || '.' || t.tgname,
       pg_catalog.pg_get_triggerdef(t.oid) || ' ENABLED ' || t.tgenabled::text,
       NULL, NULL, NULL,
       pg_catalog.obj_description(t.oid, 'pg_trigger')
  FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = ANY (%(schemas)s) AND NOT t.tgisinternal
 ORDER BY 1, 2
"""


async def objects(admin_dsn: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every function, view and trigger of Symphony's schemas: {(kind, key): its rendering}."""
    rows = await test_only.query_no_role(
        admin_dsn, _FINGERPRINT,
        {"schemas": list(SCHEMAS)})
    return {(str(r["kind"]), str(r["key"])): dict(r) for r in rows}


def differences(
    left: dict[tuple[str, str], dict[str, Any]], right: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    """What differs between two `objects()` readings, one line per object (empty: equal)."""
    out: list[str] = []
    for key in sorted(left.keys() | right.keys()):
        if key not in right:
            out.append(f"only in the first: {key[0]} {key[1]}")
        elif key not in left:
            out.append(f"only in the second: {key[0]} {key[1]}")
        else:
            fields = [f for f in left[key] if left[key][f] != right[key][f]]
            if fields:
                out.append(f"{key[0]} {key[1]} differs in {', '.join(fields)}")
    return out


def file_key(kind: str, key: str) -> str:
    """The object file (`sql/objects/<kind>/<name>`, as `SqlObject.key`) that defines the
    object `objects()` names (kind, key): a function file holds every overload of its name, a
    trigger file is named after the trigger; `symphony.` is left out of file names."""
    if kind == "function":
        qualified, folder = key.split("(", 1)[0], "functions"
    elif kind == "view":
        qualified, folder = key, "views"
    else:
        schema, _table, trigger = key.split(".")
        qualified, folder = f"{schema}.{trigger}", "triggers"
    schema, name = qualified.split(".")
    return f"{folder}/{name}" if schema == "symphony" else f"{folder}/{schema}.{name}"
