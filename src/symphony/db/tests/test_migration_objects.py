"""Repeatable objects (sql/objects/: one file per function, view and trigger).

* The files alone rebuild every object a fresh migration has, with the same definition,
  grants and owner: no object is defined only in a numbered migration, none is missing.
* A database stopped at every earlier migration, with payments in every state the schema of
  that version knew, upgrades to exactly the objects of a fresh database, keeps its rows and
  passes the complete audit.
* The migrator applies a changed file again (and the schema status reports it pending until
  then), applies every file after a numbered migration, records nothing of a failed run,
  forgets a file that is gone, and applies no object below the last migration.
* Numbered migrations after the objects moved out create no function, view or trigger
  unless a statement of their own needs it mid-way (marked).
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
LAST_MIGRATION_WITH_OBJECTS = 23
_MID_WAY = "-- needed mid-way:"


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
    await enqueue("pending")
    return ids


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
        assert version < 4 or len(ids) >= 7, "payments in every state"
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


def test_later_migrations_define_objects_only_when_needed_mid_way() -> None:
    defining = re.compile(
        r"CREATE\s+(OR\s+REPLACE\s+)?(CONSTRAINT\s+)?(FUNCTION|VIEW|TRIGGER|MATERIALIZED\s+VIEW)"
        r"\s+(?!pg_temp\.)", re.I)
    offenders = []
    for m in load_migrations():
        if m.version <= LAST_MIGRATION_WITH_OBJECTS:
            continue
        for st in split_statements(m.name, m.sql):
            if defining.match(st.text) and _MID_WAY not in st.comment:
                offenders.append(f"{m.name}: {st.text.splitlines()[0]}")
    assert offenders == [], (
        "functions, views and triggers live in src/symphony/db/sql/objects/ (see its "
        "README.md); a migration defines one only when a statement of its own needs it "
        f"mid-way, marked {_MID_WAY!r}")
