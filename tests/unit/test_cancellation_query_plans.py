"""A cancellation reads only its own payment's rows, by key, on every PostgreSQL version.

cancel_payment (and the operator's cancel, through the same cancel_outbox_item) finds the
payment in the registry, locks its queue row, reads its last ledger row or lookup mark,
deletes the queue row and appends CANCELED, whose trigger writes the payment.canceled event
(its participant's counter, the payload). Every one of those statements must be a probe of a
key, never a scan of a table that grows with every payment ever taken. The plans are
captured with auto_explain on a participant with a few thousand payments (each run rolled
back, so the seed stays); scripts/pg_versions.py runs this on 15 as well as 18 (the 16 wheel
has no auto_explain).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from symphony.db import DatabaseSettings

PAYMENTS = 1500
PID = "plan-cancel"
TABLES = ("payment_instruction_registry", "payment_outbox_pending", "payment_outbox_attempts",
          "outbox_lookup_marks", "payment_events", "participant_event_sequences")

# Needs the auto_explain module (scripts/pg_versions.py leaves it out where the binaries lack it).
pytestmark = pytest.mark.auto_explain


@pytest.fixture(scope="module")
def seeded_dsn(isolated_settings: DatabaseSettings) -> str:
    assert isolated_settings.database_url is not None
    dsn = isolated_settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1 FROM symphony.add_participant(%s, 'plans')", (PID,))
        conn.execute(
            "SELECT symphony.enqueue_payment_outbox('plan-' || g, 'k-' || g, %s, 'SEPA_CT', "
            "  '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}') "
            "  FROM generate_series(1, %s) g", (PID, PAYMENTS))
        # Half of them leased (a cancel refuses those after reading the payment's state), and
        # a fifth answered ambiguously: open again, marked for a lookup (outbox_lookup_marks).
        conn.execute(
            "SELECT 1 FROM symphony.claim_outbox_batch('plan-worker', %s, 120)",
            (PAYMENTS // 2,))
        conn.execute(
            "WITH l AS (SELECT array_agg(outbox_id) AS ids, array_agg(lease_token) AS tokens "
            "             FROM (SELECT outbox_id, lease_token FROM symphony.payment_outbox_pending"
            "                    WHERE lease_token IS NOT NULL ORDER BY outbox_id LIMIT %s) x) "
            "SELECT 1 FROM l, symphony.complete_outbox_batch(l.ids, l.tokens, "
            "  array_fill('RETRYABLE'::text, ARRAY[%s]), array_fill('RAIL_TIMEOUT'::text, ARRAY[%s]), "
            "  array_fill(NULL::text, ARRAY[%s]), array_fill(true, ARRAY[%s]), "
            "  array_fill(NULL::text, ARRAY[%s]))", (PAYMENTS // 5,) * 6)
        for table in TABLES:
            conn.execute(f"ANALYZE symphony.{table}")
    return dsn


@pytest.fixture
async def explained(seeded_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    conn = await psycopg.AsyncConnection.connect(seeded_dsn, autocommit=True)
    await conn.execute("LOAD 'auto_explain'")
    await conn.execute("SET auto_explain.log_min_duration = 0")
    await conn.execute("SET auto_explain.log_nested_statements = on")
    await conn.execute("SET auto_explain.log_triggers = on")
    await conn.execute("SET auto_explain.log_level = 'notice'")
    await conn.execute("SET client_min_messages = 'notice'")
    try:
        yield conn
    finally:
        await conn.close()


async def _plans(conn: psycopg.AsyncConnection[tuple[object, ...]], statement: str) -> str:
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(statement)  # type: ignore[arg-type]
    finally:
        conn._notice_handlers.clear()
    return "\n".join(notices)


def _one(leased: bool) -> str:
    return ("(SELECT p.outbox_id FROM symphony.payment_outbox_pending p "
            f" WHERE p.participant_id = '{PID}' AND NOT p.needs_lookup AND p.lease_token IS "
            f"{'NOT NULL' if leased else 'NULL'} ORDER BY p.outbox_id LIMIT 1)")


def _assert_by_key(plans: str) -> None:
    for table in TABLES:
        assert f"Seq Scan on {table}" not in plans, plans


async def test_a_cancel_reads_and_writes_its_payment_by_key(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(
        explained,
        f"SELECT * FROM symphony.cancel_payment('{PID}', {_one(leased=False)}, 'plan')")
    # It canceled: the ledger row and, from its trigger, the payment.canceled event.
    assert "Insert on payment_outbox_attempts" in plans, plans
    assert "Insert on payment_events" in plans, plans
    _assert_by_key(plans)


async def test_a_refused_cancel_reads_its_payment_by_key(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(
        explained,
        f"SELECT * FROM symphony.cancel_payment('{PID}', {_one(leased=True)}, 'plan')")
    _assert_by_key(plans)


async def test_a_cancel_refused_for_a_lookup_reads_the_mark_by_key(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    marked = ("(SELECT m.outbox_id FROM symphony.outbox_lookup_marks m "
              f" WHERE m.participant_id = '{PID}' ORDER BY m.outbox_id LIMIT 1)")
    plans = await _plans(
        explained, f"SELECT * FROM symphony.cancel_payment('{PID}', {marked}, 'plan')")
    assert "Insert on payment_outbox_attempts" not in plans, plans
    _assert_by_key(plans)


async def test_an_operator_cancel_finds_the_payment_by_its_id_alone(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(
        explained,
        f"SELECT * FROM symphony.cancel_payment_by_operator({_one(leased=False)}, "
        "'plan-operator', 'plan')")
    _assert_by_key(plans)
