"""The routine audit (`audit verify --since-checkpoint`) reads what was written since the latest
checkpoint through indexes, never a whole history table: its cost follows the scope, not the
ledger's size (issue 17's "flat incremental audit"). Plans pinned like the hot path's.

A ledger of 10,000 terminal items (the bench's growth fill), a checkpoint over it, then a few
items enqueued, claimed and completed after it. Each incremental check's statement is explained
with the parameters the audit gives it (the scope computed once, as arrays): no sequential scan
of the ledger, the registry, the events or the checkpoint heads. The bounded tables (the live
queue, review decisions, lookup marks, the checkpoints themselves) may be read whole.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row
from tests.support.database import admin_dsn_of, unique
from tests.support.outbox import instruction

from symphony.db import Database, DatabaseSettings
from symphony.db.query import get_query
from symphony.outbox import AccessStore, AuditStore, Completion, OutboxStore, Outcome, verify
from symphony.outbox.audit import _FULL_ONLY, CHECKS

GROWTH = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "growth.py"
PAYLOAD = {"amount": "10.00", "currency": "EUR", "destination": "acct-1"}
ITEMS = 10_000
# Whole-history tables: a sequential scan of one of them makes the routine audit grow with
# the ledger.
HISTORY = ("payment_outbox_attempts", "payment_instruction_registry", "payment_events",
           "ledger_checkpoint_heads")


def _growth() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_growth_plans", GROWTH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _history(settings: DatabaseSettings, dsn: str) -> None:
    db = await Database.open(settings)
    try:
        participant = unique("scope-plans")
        await AccessStore(db).add_participant(participant, "scope plans")
        _growth().grow_ledger_to(dsn, participant, 2 * ITEMS, 0, payload=PAYLOAD)
        await AuditStore(db).checkpoint()
        store = OutboxStore(db)
        for _ in range(5):
            await store.enqueue(instruction())
        claimed = await store.claim("scope-plans-w", 3, 60)
        await store.complete(Completion(claimed[0].outbox_id, claimed[0].lease_token,
                                        Outcome.DISPATCHED, rail_transaction_id="rtx-plans"))
        report = await verify(db, since_checkpoint=True)
        assert report.ok, [c.as_dict() for c in report.failed()]
        assert report.mode == "since-checkpoint"
    finally:
        await db.close()


@pytest.fixture(scope="module")
def scoped(isolated_settings: DatabaseSettings) -> tuple[str, dict[str, Any]]:
    """The admin DSN and the parameters an audit since the checkpoint gives its checks."""
    dsn = admin_dsn_of(isolated_settings)
    asyncio.run(_history(isolated_settings, dsn))
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        for table in (*HISTORY, "payment_outbox_pending"):
            conn.execute(f"ANALYZE symphony.{table}")  # type: ignore[call-overload]
        scope = conn.execute(get_query("audit_checkpoint_scope").sql).fetchone()
        assert scope is not None
        start = conn.execute(get_query("audit_checkpoint_since").sql, scope).fetchone()
        assert start is not None
        params: dict[str, Any] = {"since": start["since"], "from_checkpoint": True,
                                  "limit": 100, **scope}
        ids = conn.execute(get_query("audit_scope_ids").sql, params).fetchone()
        assert ids is not None
        params.update(scope_ids=list(ids["scope_ids"]),
                      scope_participants=list(ids["scope_participants"]))
    # The five items enqueued after the checkpoint are the scope, not the 10,000 before it.
    assert 5 <= len(params["scope_ids"]) < 50
    return dsn, params


def _plan(dsn: str, query: str, params: dict[str, Any]) -> str:
    statement = get_query(query).sql
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(f"EXPLAIN {statement}", params).fetchall()  # type: ignore[call-overload]
    return "\n".join(str(r[0]) for r in rows)


def test_the_checkpoint_scope_reads_only_the_rows_above_the_checkpoint(
    scoped: tuple[str, dict[str, Any]],
) -> None:
    # Through the primary key's range above up_to_attempt_id, not a walk down recorded_at.
    dsn, params = scoped
    plan = _plan(dsn, "audit_checkpoint_since", params)
    assert "payment_outbox_attempts_pkey" in plan, plan
    assert "payment_outbox_attempts_recorded_at_idx" not in plan, plan
    assert "Seq Scan on payment_outbox_attempts" not in plan, plan


def test_the_scope_is_read_through_the_time_indexes(scoped: tuple[str, dict[str, Any]]) -> None:
    dsn, params = scoped
    plan = _plan(dsn, "audit_scope_ids", params)
    for table in HISTORY:
        assert f"Seq Scan on {table}" not in plan, plan


@pytest.mark.parametrize("query", ["audit_scope_counts"] + [
    c.query for c in CHECKS if c.name not in _FULL_ONLY])
def test_an_incremental_check_reads_no_history_table_whole(
    scoped: tuple[str, dict[str, Any]], query: str,
) -> None:
    dsn, params = scoped
    plan = _plan(dsn, query, params)
    for table in HISTORY:
        assert f"Seq Scan on {table}" not in plan, plan


@pytest.mark.parametrize("function", ["audit_sequence_violations_in",
                                      "audit_lease_violations_in"])
def test_the_owner_functions_probe_the_scope_in_a_generic_plan(
    scoped: tuple[str, dict[str, Any]], function: str,
) -> None:
    """I8 and I9 run as the owner, in SQL functions whose statements are planned without their
    arguments' values: the body, prepared and explained as a generic plan, reads no history
    table whole."""
    dsn, params = scoped
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT p.prosrc FROM pg_catalog.pg_proc p "
                           " WHERE p.oid = to_regproc('symphony.' || %s)", (function,)).fetchone()
        assert row is not None
        body = re.sub(r"\bp_limit\b", "$2", re.sub(r"\bp_scope\b", "$1", str(row[0])))
        conn.execute("SET search_path = symphony, pg_catalog")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        # The simple query protocol: $1 and $2 are the prepared statement's, not the driver's.
        result = conn.pgconn.exec_(f"PREPARE body (uuid[], integer) AS {body}".encode())
        assert result.error_message == b"", result.error_message
        scope = ",".join(str(UUID(str(u))) for u in params["scope_ids"])
        result = conn.pgconn.exec_(f"EXPLAIN EXECUTE body ('{{{scope}}}', 100)".encode())
        assert result.error_message == b"", result.error_message
        plan = "\n".join(bytes(result.get_value(i, 0) or b"").decode()
                         for i in range(result.ntuples))
    for table in HISTORY:
        assert f"Seq Scan on {table}" not in plan, plan
