"""The participant-scoped reads use their indexes (plans pinned, like test_hot_query_plans).

The plans are those of the statements inside the read functions, captured with auto_explain
while they run over a few participants with thousands of items each: a page of one
participant's payments walks (participant_id, sequence_id) backwards and stops at the page
size, it never scans the registry or the ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from symphony.db import DatabaseSettings

# Needs the auto_explain module (scripts/pg_versions.py leaves it out where the binaries lack it).
pytestmark = pytest.mark.auto_explain

PARTICIPANTS = ("plan-a", "plan-b", "plan-c")
ITEMS_EACH = 3000


@pytest.fixture(scope="module")
def seeded_dsn(isolated_settings: DatabaseSettings) -> str:
    assert isolated_settings.database_url is not None
    dsn = isolated_settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            for pid in PARTICIPANTS:
                conn.execute("SELECT symphony.add_participant(%s, %s)", (pid, pid))
            conn.execute(
                "INSERT INTO symphony.payment_instruction_registry "
                "  (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, "
                "   rail_type, payload) "
                "SELECT 'plan-' || g, 'k-' || g, gen_random_uuid(), p, g, 'ACH', "
                "       '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}' "
                "  FROM unnest(%s::text[]) p, generate_series(1, %s) g",
                (list(PARTICIPANTS), ITEMS_EACH),
            )
            # Half the items are live, half were dispatched (a ledger with history).
            conn.execute(
                "INSERT INTO symphony.payment_outbox_pending "
                "  (outbox_id, participant_id, sequence_id) "
                "SELECT outbox_id, participant_id, sequence_id "
                "  FROM symphony.payment_instruction_registry WHERE sequence_id % 2 = 1")
            conn.execute(
                "INSERT INTO symphony.payment_outbox_attempts "
                "  (outbox_id, attempt_no, state, rail_transaction_id) "
                "SELECT r.outbox_id, n, CASE n WHEN 1 THEN 'DISPATCHING' ELSE 'DISPATCHED' END"
                "       ::symphony.attempt_state, CASE n WHEN 2 THEN 'rtx-plan' END "
                "  FROM symphony.payment_instruction_registry r, generate_series(1, 2) n "
                " WHERE r.sequence_id % 2 = 0 ORDER BY r.outbox_id, n")
        for table in ("payment_instruction_registry", "payment_outbox_pending",
                      "payment_outbox_attempts"):
            conn.execute(f"ANALYZE symphony.{table}")  # type: ignore[arg-type]
    return dsn


@pytest.fixture
async def explained(seeded_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    conn = await psycopg.AsyncConnection.connect(seeded_dsn, autocommit=True)
    await conn.execute("LOAD 'auto_explain'")
    await conn.execute("SET auto_explain.log_min_duration = 0")
    await conn.execute("SET auto_explain.log_nested_statements = on")
    await conn.execute("SET auto_explain.log_level = 'notice'")
    await conn.execute("SET client_min_messages = 'notice'")
    try:
        yield conn
    finally:
        await conn.close()


async def _plans(
    conn: psycopg.AsyncConnection[tuple[object, ...]], statement: str,
    params: tuple[object, ...] = (),
) -> tuple[str, list[tuple[object, ...]]]:
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    try:
        cur = await conn.execute(statement, params)  # type: ignore[arg-type]
        rows = await cur.fetchall()
    finally:
        conn._notice_handlers.clear()
    return "\n".join(notices), rows


def _no_scans(plans: str) -> None:
    for table in ("payment_instruction_registry", "payment_outbox_attempts",
                  "payment_outbox_pending"):
        assert f"Seq Scan on {table}" not in plans, plans


async def test_a_page_walks_the_participant_sequence_index(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans, rows = await _plans(
        explained, "SELECT outbox_id FROM symphony.participant_payments('plan-b', NULL, NULL, 50)")
    assert len(rows) == 50
    assert "payment_instruction_registry_participant_sequence_key" in plans, plans
    assert "Index Scan Backward" in plans, plans
    _no_scans(plans)


async def test_a_later_page_and_a_state_filter_use_the_same_index(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    _, first = await _plans(
        explained, "SELECT outbox_id FROM symphony.participant_payments('plan-c', NULL, NULL, 10)")
    plans, rows = await _plans(
        explained,
        "SELECT outbox_id, state FROM symphony.participant_payments('plan-c', 'DISPATCHED', "
        "       %s, 20)", (first[-1][0],))
    assert len(rows) == 20 and {r[1] for r in rows} == {"DISPATCHED"}
    assert "payment_instruction_registry_participant_sequence_key" in plans, plans
    # The cursor is found by its primary key (outbox_id), not by a scan.
    assert "payment_instruction_registry_outbox_id_key" in plans, plans
    _no_scans(plans)


async def test_one_payment_and_its_attempts_are_index_probes(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    _, some = await _plans(
        explained, "SELECT outbox_id FROM symphony.participant_payments('plan-a', NULL, NULL, 2)")
    for outbox_id in (some[0][0], some[1][0]):  # one live item, one dispatched one
        plans, rows = await _plans(
            explained, "SELECT * FROM symphony.participant_payment('plan-a', %s)", (outbox_id,))
        assert len(rows) == 1
        assert "payment_instruction_registry_outbox_id_key" in plans, plans
        _no_scans(plans)
        plans, rows = await _plans(
            explained, "SELECT * FROM symphony.participant_payment_attempts('plan-a', %s)",
            (outbox_id,))
        assert "payment_outbox_attempts_outbox_attempt_no_key" in plans, plans
        _no_scans(plans)
