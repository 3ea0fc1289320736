"""Repeatable objects (sql/objects/: one file per function, view and trigger).

* The files alone rebuild every object a fresh migration has, with the same definition,
  grants and owner: no object is defined only in a numbered migration, none is missing.
* A database stopped at every earlier migration, with payments in every state the schema of
  that version knew, upgrades to exactly the objects of a fresh database, keeps its rows and
  passes the complete audit.
* The migrator applies a changed file again (and the schema status reports it pending until
  then), applies every file after a numbered migration, records nothing of a failed run,
  forgets a file that is gone, and applies no object below the last migration.
* Numbered migrations after the objects moved out define no function, view or trigger
  (nor grant or comment on one): those live in their files only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from symphony.db import (
    Database,
    DatabaseSettings,
    MigrationError,
    SymphonyError,
    migrate,
    test_only,
)
from symphony.db import migration as migration_module
from symphony.db.migration import Migration, SqlObject, load_migrations, load_objects
from symphony.db.tests import catalog
from symphony.db.tests.objects_from_migrations import split_statements
from symphony.outbox import verify

# The last numbered migration written before the objects moved to sql/objects/: the ones up
# to it hold the objects' history; the ones after it may not define objects (see below).
LAST_MIGRATION_WITH_OBJECTS = 28


def _run(coro: Any) -> Any:
    """Run a coroutine to completion from sync fixtures and from inside a test's loop alike."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _migrated(admin_dsn: str, **kwargs: Any) -> tuple[str, str]:
    name = f"symphony_obj_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(admin_dsn, name)
    await migrate(dsn, **kwargs)
    return name, dsn


@pytest.fixture(scope="module")
def fresh(server_admin_dsn: str) -> Iterator[tuple[str, dict[tuple[str, str], Any]]]:
    """A freshly migrated database and its objects (the reference)."""
    name, dsn = _run(_migrated(server_admin_dsn))
    try:
        yield dsn, _run(catalog.objects(dsn))
    finally:
        _run(test_only.drop_database(server_admin_dsn, name))


@pytest.fixture
async def scratch(server_admin_dsn: str) -> Any:
    name, dsn = await _migrated(server_admin_dsn)
    try:
        yield dsn
    finally:
        await test_only.drop_database(server_admin_dsn, name)


# -- the files are the whole truth ------------------------------------------------------------

_DROP_EVERY_OBJECT = """
DO $drop$
DECLARE
    v_triggers text[];
    v_views    text[];
    v_funcs    text[];
    x          text;
BEGIN
    SELECT array_agg(pg_catalog.format('%I ON %s', t.tgname, t.tgrelid::regclass))
      INTO v_triggers
      FROM pg_catalog.pg_trigger t
      JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
     WHERE c.relnamespace::regnamespace::text IN ('symphony', 'symphony_ops')
       AND NOT t.tgisinternal;
    SELECT array_agg(c.oid::regclass::text) INTO v_views
      FROM pg_catalog.pg_class c
     WHERE c.relnamespace::regnamespace::text IN ('symphony', 'symphony_ops') AND c.relkind = 'v';
    SELECT array_agg(p.oid::regprocedure::text) INTO v_funcs
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace::regnamespace::text IN ('symphony', 'symphony_ops');
    FOREACH x IN ARRAY v_triggers LOOP EXECUTE 'DROP TRIGGER ' || x; END LOOP;
    FOREACH x IN ARRAY v_views LOOP EXECUTE 'DROP VIEW IF EXISTS ' || x || ' CASCADE'; END LOOP;
    FOREACH x IN ARRAY v_funcs LOOP
        EXECUTE 'DROP FUNCTION IF EXISTS ' || x || ' CASCADE';
    END LOOP;
END
$drop$;
DELETE FROM symphony_meta.schema_objects;
"""


async def test_the_object_files_alone_rebuild_every_object_of_a_fresh_migration(
    scratch: str, fresh: tuple[str, dict[tuple[str, str], Any]],
) -> None:
    _, reference = fresh
    await test_only.query_no_role(scratch, _DROP_EVERY_OBJECT)
    assert await catalog.objects(scratch) == {}, "every function, view and trigger dropped"

    report = await migrate(scratch)

    assert report.applied == [] and report.objects_applied == [o.key for o in load_objects()]
    rebuilt = await catalog.objects(scratch)
    assert catalog.differences(reference, rebuilt) == []
    kinds = {kind for kind, _ in rebuilt}
    assert kinds == {"function", "view", "trigger"}


def test_each_object_has_exactly_one_file() -> None:
    objects = load_objects()
    names = [o.key for o in objects]
    assert len(names) == len(set(names))
    assert [o.kind for o in objects] == sorted(
        (o.kind for o in objects), key=migration_module.OBJECT_KINDS.index)
    # One file per name: e.g. the running enqueue_payment_outbox is found in one place.
    defining = [o.key for o in objects if re.search(
        r"CREATE\s+OR\s+REPLACE\s+FUNCTION\s+symphony\.enqueue_payment_outbox\s*\(", o.sql)]
    assert defining == ["functions/enqueue_payment_outbox"]
    for o in objects:
        kind = {"functions": "FUNCTION", "views": "VIEW", "triggers": "TRIGGER"}[o.kind]
        name = o.name.split(".")[-1]
        assert re.search(rf"CREATE\s+(OR\s+REPLACE\s+)?(CONSTRAINT\s+)?{kind}\s+"
                         rf"([a-z_]+\.)?{name}\b", o.sql), f"{o.key} defines {name}"


# -- behaviour unchanged: the files say what the numbered migrations said ---------------------

_MOVED = Path(__file__).resolve().parent / "moved_objects.sha256"


def _moved() -> dict[str, str]:
    """{file key: checksum} of the object files as objects_from_migrations wrote them."""
    out = {}
    for line in _MOVED.read_text(encoding="utf-8").splitlines():
        checksum, key = line.split()
        out[key] = checksum
    return out


async def test_unchanged_object_files_define_exactly_what_the_numbered_migrations_did(
    server_admin_dsn: str, fresh: tuple[str, dict[tuple[str, str], Any]],
) -> None:
    """A database built by the numbered migrations alone (what every release up to the move
    ran) and one built by `symphony migrate` (the migrations, then the files) hold the same
    function definitions (pg_get_functiondef: body, SECURITY DEFINER, SET search_path,
    volatility), views (pg_get_viewdef and columns), triggers (pg_get_triggerdef and whether
    they fire), privileges, owners and comments — for every file not edited since it was
    written from the migrations (each one, on the day of the move)."""
    _, objects = fresh
    current = {o.key: o.checksum for o in load_objects()}
    unchanged = {key for key, checksum in _moved().items() if current.get(key) == checksum}
    name, dsn = await _migrated(server_admin_dsn, objects=False)
    try:
        plain = await catalog.objects(dsn)
    finally:
        await test_only.drop_database(server_admin_dsn, name)

    # No object is defined by a numbered migration alone: each has its file.
    assert {catalog.file_key(*k) for k in plain} <= current.keys()
    compared = {k for k in plain.keys() | objects.keys() if catalog.file_key(*k) in unchanged}
    assert catalog.differences({k: plain[k] for k in compared if k in plain},
                               {k: objects[k] for k in compared if k in objects}) == []
    assert {catalog.file_key(*k) for k in compared} == unchanged, "each file defines something"


def test_the_moved_checksums_name_files_that_were_shipped() -> None:
    moved = _moved()
    assert len(moved) >= 100 and "functions/enqueue_payment_outbox" in moved
    assert all(re.fullmatch(r"[0-9a-f]{64}", c) for c in moved.values())


# -- upgrading from every earlier version -----------------------------------------------------

_ENQUEUE = ("SELECT outbox_id FROM symphony.enqueue_payment_outbox(%s, %s, %s, 'RTP', "
            "%s::jsonb)")
_CLAIM = "SELECT outbox_id, lease_token FROM symphony.claim_outbox_batch('mig', 100, 60)"
_COMPLETE = ("SELECT 1 FROM symphony.complete_outbox_attempt(%s, %s, %s, %s, NULL, %s, %s)")


async def _exists(dsn: str, signature: str) -> bool:
    rows = await test_only.query_no_role(dsn, "SELECT to_regprocedure(%s) IS NOT NULL AS e",
                                         (signature,))
    return bool(rows[0]["e"])


async def _policy(dsn: str, **values: int) -> None:
    rows = await test_only.query_no_role(
        dsn, "SELECT column_name FROM information_schema.columns "
             " WHERE table_schema = 'symphony' AND table_name = 'outbox_retry_policy'")
    known = {str(r["column_name"]) for r in rows}
    sets = [(k, v) for k, v in values.items() if k in known]
    assert all(re.fullmatch(r"[a-z_]+", k) for k, _ in sets)  # names from the catalog
    # One statement: the table's CHECKs relate its columns (the maximum backoff >= the base).
    await test_only.query_no_role(
        dsn, "UPDATE symphony.outbox_retry_policy SET "
             + ", ".join(f"{k} = %s" for k, _ in sets), [v for _, v in sets])


async def _seed(dsn: str) -> dict[str, uuid.UUID]:
    """Payments in every state this version's schema knows, written through its own functions
    (as the admin: the functions' own checks are what counts here)."""
    if not await _exists(dsn, "symphony.enqueue_payment_outbox(text,text,text,text,jsonb)"):
        return {}   # before the functions there is no way to write a payment
    if await _exists(dsn, "symphony.add_participant(text,text)"):
        for p in ("bank-a", "bank-b"):
            await test_only.query_no_role(dsn, "SELECT 1 FROM symphony.add_participant(%s, %s)",
                                          (p, p))
    ids: dict[str, uuid.UUID] = {}

    async def enqueue(name: str, participant: str = "bank-a") -> uuid.UUID:
        payload = json.dumps({"amount": "10.00", "currency": "USD", "destination": f"acct-{name}"})
        [row] = await test_only.query_no_role(
            dsn, _ENQUEUE, (f"i-{name}", f"k-{name}", participant, payload))
        ids[name] = row["outbox_id"]
        return ids[name]

    async def claim(outbox_id: uuid.UUID) -> uuid.UUID:
        rows = await test_only.query_no_role(dsn, _CLAIM)
        assert [r["outbox_id"] for r in rows] == [outbox_id]
        return rows[0]["lease_token"]

    async def dispatch(name: str, outcome: str, *, ambiguous: bool = False,
                       participant: str = "bank-a") -> None:
        outbox_id = await enqueue(name, participant)
        token = await claim(outbox_id)
        await test_only.query_no_role(dsn, _COMPLETE, (
            outbox_id, token, outcome, None if outcome == "DISPATCHED" else "X", ambiguous,
            f"rtx-{name}" if outcome == "DISPATCHED" else None))

    if await _exists(dsn, "symphony.resolve_outbox_review(uuid,text,text,text,text)"):
        # One attempt and no settle time: an ambiguous retry goes straight to review.
        await _policy(dsn, max_attempts=1, backoff_base_ms=0, backoff_max_ms=0,
                      ambiguous_settle_ms=0)
        for name in ("review", "reviewed-failed", "reviewed-dispatched"):
            await dispatch(name, "RETRYABLE", ambiguous=True, participant="bank-b")
        await test_only.query_no_role(
            dsn, "SELECT 1 FROM symphony.resolve_outbox_review(%s, 'FAILED', 'op', 'none')",
            (ids["reviewed-failed"],))
        await test_only.query_no_role(
            dsn, "SELECT 1 FROM symphony.resolve_outbox_review(%s, 'DISPATCHED', 'op', "
                 "'statement', 'rtx-review')", (ids["reviewed-dispatched"],))
    # Retries far away, so a scheduled retry stays scheduled while the others are built.
    await _policy(dsn, max_attempts=8, backoff_base_ms=3_600_000, backoff_max_ms=3_600_000,
                  ambiguous_settle_ms=30_000)
    await dispatch("dispatched", "DISPATCHED")
    await dispatch("failed", "FAILED")
    await dispatch("retryable", "RETRYABLE", participant="bank-b")
    await dispatch("lookup", "RETRYABLE", ambiguous=True)
    await claim(await enqueue("leased"))
    await claim(await enqueue("zombie", "bank-b"))
    await test_only.query_no_role(
        dsn, "UPDATE symphony.payment_outbox_pending "
             "   SET lease_expires_at = now() - interval '1 second' WHERE outbox_id = %s",
        (ids["zombie"],))
    repaired = await test_only.query_no_role(
        dsn, "SELECT outbox_id FROM symphony.repair_expired_leases(10)")
    assert [r["outbox_id"] for r in repaired] == [ids["zombie"]]
    if await _exists(dsn, "symphony.cancel_payment(text,uuid,text)"):
        # CANCELED (0022 adds the value, 0023 the rules and the functions: at 0022 the
        # ledger's transition trigger still refuses it): one canceled after a retryable
        # attempt, one while it waited for its first.
        await dispatch("canceled-after-retry", "RETRYABLE", participant="bank-b")
        await _cancel(dsn, "bank-b", ids["canceled-after-retry"])
        await _cancel(dsn, "bank-a", await enqueue("canceled"))
    await enqueue("pending")
    return ids


async def _cancel(dsn: str, participant: str, outbox_id: uuid.UUID) -> None:
    [row] = await test_only.query_no_role(
        dsn, "SELECT result FROM symphony.cancel_payment(%s, %s, 'upgrade test')",
        (participant, outbox_id))
    assert row["result"] == "CANCELED"


_STATES = """
SELECT DISTINCT state::text AS state FROM symphony.payment_outbox_attempts
UNION
SELECT 'WAITING' WHERE EXISTS (
    SELECT 1 FROM symphony.payment_instruction_registry r
     WHERE NOT EXISTS (SELECT 1 FROM symphony.payment_outbox_attempts a
                        WHERE a.outbox_id = r.outbox_id))
UNION
SELECT 'LEASED' WHERE EXISTS (SELECT 1 FROM symphony.payment_outbox_pending
                               WHERE lease_token IS NOT NULL)
"""
_ENUM = "SELECT unnest(enum_range(NULL::symphony.attempt_state))::text AS state"


async def _states(dsn: str) -> set[str]:
    """The states the seeded payments went through: every ledger state written, WAITING for a
    payment never attempted, LEASED for one being dispatched."""
    return {str(r["state"]) for r in await test_only.query_no_role(dsn, _STATES)}


_ROWS = """
SELECT (SELECT coalesce(jsonb_agg(jsonb_build_array(outbox_id, participant_id, instruction_id)
                                  ORDER BY outbox_id), '[]')
          FROM symphony.payment_instruction_registry) AS registry,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(attempt_id, outbox_id, attempt_no, state)
                                  ORDER BY attempt_id), '[]')
          FROM symphony.payment_outbox_attempts) AS ledger,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(outbox_id, attempt_count, lease_token)
                                  ORDER BY outbox_id), '[]')
          FROM symphony.payment_outbox_pending) AS pending
"""


async def _rows(dsn: str) -> dict[str, Any]:
    if (await test_only.query_no_role(
            dsn, "SELECT to_regclass('symphony.payment_outbox_attempts') IS NULL AS none"
    ))[0]["none"]:
        return {}
    [row] = await test_only.query_no_role(dsn, _ROWS)
    return dict(row)


@pytest.fixture(scope="module")
def earlier_versions(server_admin_dsn: str) -> Iterator[dict[int, str]]:
    """A template database stopped at each earlier migration (one chain, copied at each)."""
    created: dict[int, str] = {}

    async def build() -> None:
        chain = f"symphony_objchain_{uuid.uuid4().hex[:8]}"
        dsn = await test_only.create_database(server_admin_dsn, chain)
        try:
            for version in range(1, len(load_migrations())):
                await migrate(dsn, up_to=version)
                name = f"{chain}_{version:04d}"
                await test_only.create_database(server_admin_dsn, name, template=chain)
                created[version] = name
        finally:
            await test_only.drop_database(server_admin_dsn, chain)

    _run(build())
    try:
        yield created
    finally:
        for name in created.values():
            _run(test_only.drop_database(server_admin_dsn, name))


@pytest.mark.parametrize("version", range(1, len(load_migrations())))
async def test_a_database_at_an_earlier_version_upgrades_to_the_fresh_objects(
    version: int, earlier_versions: dict[int, str], server_admin_dsn: str,
    fresh: tuple[str, dict[tuple[str, str], Any]], symphony_home: Path,
    db_settings: DatabaseSettings,  # provisions the principals the audit logs in as
) -> None:
    _, reference = fresh
    name = f"symphony_objup_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(server_admin_dsn, name,
                                          template=earlier_versions[version])
    try:
        ids = await _seed(dsn)
        if version >= 4:   # the first version with functions to write a payment
            known = {str(r["state"]) for r in await test_only.query_no_role(dsn, _ENUM)}
            if version == 22:
                known.remove("CANCELED")   # the value exists; nothing may write it until 0023
            assert await _states(dsn) == known | {"WAITING", "LEASED"}, "every state"
            assert version < 23 or {"canceled", "canceled-after-retry"} <= ids.keys()
        before = await _rows(dsn)

        report = await migrate(dsn)

        assert report.applied == [m.name for m in load_migrations()[version:]]
        assert report.objects_applied == [o.key for o in load_objects()]
        assert catalog.differences(reference, await catalog.objects(dsn)) == []
        after = await _rows(dsn)
        for part, rows in before.items():
            assert after[part] == rows, f"{part} kept as it was"
        db = await Database.open(DatabaseSettings(DATABASE_URL=dsn,
                                                  SYMPHONY_HOME=str(symphony_home)))
        try:
            audit = await verify(db)
        finally:
            await db.close()
        assert audit.ok, [c.as_dict() for c in audit.failed()]
    finally:
        await test_only.drop_database(server_admin_dsn, name)


# -- the migrator's rules ---------------------------------------------------------------------

def _changed(objects: list[SqlObject], key: str, old: str, new: str) -> list[SqlObject]:
    out = []
    for o in objects:
        if o.key == key:
            assert old in o.sql
            sql = o.sql.replace(old, new)
            o = SqlObject(o.kind, o.name, sql, migration_module.hashlib.sha256(
                sql.encode()).hexdigest())
        out.append(o)
    return out


async def _definition(dsn: str, signature: str) -> str:
    [row] = await test_only.query_no_role(
        dsn, "SELECT pg_get_functiondef(to_regprocedure(%s)) AS d", (signature,))
    return str(row["d"])


async def test_a_changed_file_is_applied_again_and_pending_until_then(
    scratch: str, symphony_home: Path, db_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (await migrate(scratch)).objects_applied == [], "nothing changed: nothing applied"
    changed = _changed(load_objects(), "functions/wake_outbox_workers", "$$;",
                       "    -- changed in a later release\n$$;")
    monkeypatch.setattr(migration_module, "load_objects", lambda: changed)

    db = await Database.open(DatabaseSettings(DATABASE_URL=scratch,
                                              SYMPHONY_HOME=str(symphony_home)),
                             require_migrated=False)
    try:
        status = await db.schema_status()
        assert not status.ok and status.pending == ()
        assert status.pending_objects == ("functions/wake_outbox_workers",)
        with pytest.raises(MigrationError) as info:
            status.require()
        assert info.value.code == "MIGRATIONS_PENDING"
        assert "functions/wake_outbox_workers" in info.value.message

        report = await migrate(scratch)

        assert report.applied == []
        assert report.objects_applied == ["functions/wake_outbox_workers"]
        assert "changed in a later release" in await _definition(
            scratch, "symphony.wake_outbox_workers()")
        status = await db.schema_status()   # read through a runtime role
        assert status.ok and status.pending_objects == ()
    finally:
        await db.close()


async def test_a_grant_left_out_of_a_file_is_taken_back(
    scratch: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    privilege = ("SELECT has_function_privilege('symphony_ingest', "
                 "'symphony.cancel_payment(text, uuid, text)', 'EXECUTE') AS ok")
    assert await test_only.query_no_role(scratch, privilege) == [{"ok": True}]
    changed = _changed(load_objects(), "functions/cancel_payment",
                       "GRANT EXECUTE ON FUNCTION symphony.cancel_payment(text, uuid, text)\n"
                       "    TO symphony_ingest;", "")
    monkeypatch.setattr(migration_module, "load_objects", lambda: changed)

    assert (await migrate(scratch)).objects_applied == ["functions/cancel_payment"]

    assert await test_only.query_no_role(scratch, privilege) == [{"ok": False}]
    # As on a fresh database built from that file: no grant at all beside the owner's.
    [row] = await test_only.query_no_role(
        scratch, "SELECT count(*) AS n FROM pg_proc p, aclexplode(p.proacl) a "
                 " WHERE p.oid = 'symphony.cancel_payment(text, uuid, text)'::regprocedure "
                 "   AND a.grantee <> p.proowner")
    assert row["n"] == 0


async def test_a_numbered_migration_makes_every_object_apply_again(
    scratch: str, monkeypatch: pytest.MonkeyPatch,
    fresh: tuple[str, dict[tuple[str, str], Any]],
) -> None:
    real = load_migrations()
    # A later migration drops a trigger and a view whose files did not change.
    dropping = Migration(
        len(real) + 1, f"{len(real) + 1:04d}_drops.sql",
        "-- test\nDROP TRIGGER payment_outbox_pending_notify ON symphony.payment_outbox_pending;\n"
        "DROP VIEW symphony.outbox_supervisor_status;\n", "d" * 64)
    monkeypatch.setattr(migration_module, "load_migrations", lambda: [*real, dropping])

    report = await migrate(scratch)

    assert report.applied == [dropping.name]
    assert report.objects_applied == [o.key for o in load_objects()]
    assert catalog.differences(fresh[1], await catalog.objects(scratch)) == []


async def test_a_failing_object_leaves_nothing_behind(
    scratch: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = _changed(load_objects(), "functions/wake_outbox_workers", "$$;",
                       "    -- half applied?\n$$;")
    broken = SqlObject("views", "zz_broken", "CREATE OR REPLACE VIEW symphony.zz_broken AS "
                       "SELECT 1/0 FROM symphony.no_such_table;\n", "b" * 64)
    monkeypatch.setattr(migration_module, "load_objects", lambda: [*changed, broken])
    before = await test_only.query_no_role(
        scratch, "SELECT object, checksum, applied_at FROM symphony_meta.schema_objects "
                 "ORDER BY object")

    with pytest.raises(SymphonyError) as info:
        await migrate(scratch)

    assert info.value.sqlstate == "42P01"
    assert "half applied" not in await _definition(scratch, "symphony.wake_outbox_workers()")
    assert await test_only.query_no_role(
        scratch, "SELECT object, checksum, applied_at FROM symphony_meta.schema_objects "
                 "ORDER BY object") == before


async def test_a_file_that_is_gone_is_forgotten_and_up_to_applies_no_object(
    server_admin_dsn: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"symphony_obj_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(server_admin_dsn, name)
    try:
        last = len(load_migrations())
        report = await migrate(dsn, up_to=last - 1)
        assert report.objects_applied == []
        assert await test_only.query_no_role(
            dsn, "SELECT count(*) AS n FROM symphony_meta.schema_objects") == [{"n": 0}]
        report = await migrate(dsn, up_to=last)
        assert report.objects_applied == [o.key for o in load_objects()]

        remaining = [o for o in load_objects() if o.key != "functions/wake_outbox_workers"]
        monkeypatch.setattr(migration_module, "load_objects", lambda: remaining)
        assert (await migrate(dsn)).objects_applied == []
        recorded = await test_only.query_no_role(
            dsn, "SELECT object FROM symphony_meta.schema_objects ORDER BY object")
        assert [r["object"] for r in recorded] == sorted(o.key for o in remaining)
    finally:
        await test_only.drop_database(server_admin_dsn, name)


# What only an object file may say: creating or altering a function, procedure, view or
# trigger (a CONSTRAINT trigger too), switching a trigger on or off, a grant or comment on a
# function or view. Searched in the whole text (comments aside), so an EXECUTE inside a DO
# block is caught too; a pg_temp function (a one-off helper of a data step, gone with the
# session) is not an object of the schema and stays allowed, and so does every DROP.
_DEFINES_AN_OBJECT = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?(?:TEMP(?:ORARY)?\s+)?"
    r"(?:RECURSIVE\s+)?(?:MATERIALIZED\s+)?(?:FUNCTION|PROCEDURE|VIEW|TRIGGER)\s+"
    r"(?!pg_temp\.)"
    r"|\bALTER\s+(?:FUNCTION|PROCEDURE|ROUTINE|VIEW|MATERIALIZED\s+VIEW|TRIGGER)\b"
    r"|\b(?:ENABLE|DISABLE)\s+(?:ALWAYS\s+|REPLICA\s+)?TRIGGER\b"
    r"|\b(?:GRANT|REVOKE)\b[^;]*?\bON\s+(?:ALL\s+)?(?:FUNCTIONS?|PROCEDURES?|ROUTINES?)\b"
    r"|\bCOMMENT\s+ON\s+(?:FUNCTION|PROCEDURE|VIEW|TRIGGER)\b",
    re.I)
_GRANT_ON = re.compile(r"\b(?:GRANT|REVOKE)\b[^;]*?\bON\s+(?:TABLE\s+)?"
                       r"(?P<names>[a-z0-9_.,\s]+?)\s+(?:TO|FROM)\b", re.I)


def _without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _object_statements(migration: Migration, views: set[str]) -> list[str]:
    """The statements of a migration that define, alter, grant or comment on a function, view
    or trigger."""
    found = []
    for st in split_statements(migration.name, migration.sql):
        text = _without_comments(st.text)
        granted = {n.strip().lower() for m in _GRANT_ON.finditer(text)
                   for n in m["names"].split(",")}
        if _DEFINES_AN_OBJECT.search(text) or granted & views:
            found.append(f"{migration.name}: {st.text.splitlines()[0]}")
    return found


def _views() -> set[str]:
    return {".".join(o.qualified) for o in load_objects() if o.kind == "views"}


def test_no_numbered_migration_after_the_move_defines_a_function_view_or_trigger() -> None:
    offenders = [line for m in load_migrations() if m.version > LAST_MIGRATION_WITH_OBJECTS
                 for line in _object_statements(m, _views())]
    assert offenders == [], (
        "a function, view or trigger (its body, its grants, its comment) is written in its "
        "file under src/symphony/db/sql/objects/, never in a numbered migration (see that "
        "folder's README.md): edit the file; a migration holds only the DROP of a signature "
        "change")


def test_the_migrations_before_the_move_are_what_the_rule_would_refuse() -> None:
    # The rule is not vacuous: it finds the objects in the migrations that moved out.
    found = [line for m in load_migrations() if m.version <= LAST_MIGRATION_WITH_OBJECTS
             for line in _object_statements(m, _views())]
    assert any("enqueue_payment_outbox(" in line for line in found)
    assert any("CREATE TRIGGER" in line for line in found)
    assert any("CREATE VIEW" in line or "CREATE OR REPLACE VIEW" in line for line in found)


@pytest.mark.parametrize("statement", [
    "CREATE OR REPLACE FUNCTION symphony.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
    "CREATE FUNCTION symphony.f(a int) RETURNS int LANGUAGE sql AS 'SELECT 1';",
    "create or replace procedure symphony.p() language sql as $$ select 1 $$;",
    "CREATE VIEW symphony.v AS SELECT 1;",
    "CREATE OR REPLACE VIEW symphony.outbox_supervisor_status AS SELECT 1;",
    "CREATE TRIGGER t AFTER INSERT ON symphony.payment_events "
    "FOR EACH ROW EXECUTE FUNCTION symphony.f();",
    "CREATE CONSTRAINT TRIGGER t AFTER INSERT ON symphony.payment_events "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION symphony.f();",
    "ALTER FUNCTION symphony.f() SET search_path = symphony, pg_catalog, pg_temp;",
    "ALTER TABLE symphony.payment_events ENABLE ALWAYS TRIGGER t;",
    "GRANT EXECUTE ON FUNCTION symphony.f() TO symphony_ingest;",
    "REVOKE EXECUTE ON FUNCTION symphony.f() FROM symphony_control;",
    "GRANT SELECT ON symphony.outbox_supervisor_status TO symphony_readonly;",
    "COMMENT ON FUNCTION symphony.f() IS 'x';",
    "DO $$ BEGIN EXECUTE 'CREATE FUNCTION symphony.f() RETURNS int LANGUAGE sql "
    "AS ''SELECT 1'''; END $$;",
])
def test_the_rule_catches_each_way_of_defining_an_object(statement: str) -> None:
    migration = Migration(99, "0099_x.sql", f"-- why\n{statement}\n", "0" * 64)
    assert _object_statements(migration, {"symphony.outbox_supervisor_status"}) != []


@pytest.mark.parametrize("statement", [
    "DROP FUNCTION symphony.f(int);",
    "DROP VIEW IF EXISTS symphony.v;",
    "DROP TRIGGER t ON symphony.payment_events;",
    "CREATE FUNCTION pg_temp.backfill() RETURNS void LANGUAGE sql AS $$ SELECT $$;",
    "CREATE TABLE symphony.t (a int CONSTRAINT t_pkey PRIMARY KEY);",
    "CREATE INDEX t_a_idx ON symphony.t (a);",
    "GRANT SELECT ON symphony.payment_events TO symphony_readonly;",
    "ALTER TABLE symphony.t ADD CONSTRAINT t_a_check CHECK (a > 0);",
    "-- CREATE FUNCTION symphony.f() in a comment\nSELECT 1;",
])
def test_the_rule_lets_tables_data_and_drops_through(statement: str) -> None:
    migration = Migration(99, "0099_x.sql", f"-- why\n{statement}\n", "0" * 64)
    assert _object_statements(migration, {"symphony.outbox_supervisor_status"}) == []
