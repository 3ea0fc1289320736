"""The hot statements use their indexes (plans pinned, as pgqueuer does).

The plans are those of the statements *inside* the outbox functions, captured with
auto_explain (nested statements, sent to the client as notices) while the functions run on a
queue of a few thousand items. Each run is rolled back, so the queue stays as seeded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from symphony.db import DatabaseSettings

# Needs the auto_explain module (scripts/pg_versions.py leaves it out where the binaries lack it).
pytestmark = pytest.mark.auto_explain

ITEMS = 4000


@pytest.fixture(scope="module")
def seeded_dsn(isolated_settings: DatabaseSettings) -> str:
    assert isolated_settings.database_url is not None
    dsn = isolated_settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO symphony.participants (participant_id, display_name) "
                "VALUES ('plan-participant', 'plan participant')"
            )
            conn.execute(
                "INSERT INTO symphony.payment_instruction_registry "
                "  (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, "
                "   rail_type, payload) "
                "SELECT 'plan-' || g, 'k-' || g, gen_random_uuid(), 'plan-participant', g, 'ACH', "
                "       '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}' "
                "  FROM generate_series(1, %s) g",
                (ITEMS,),
            )
            # Most items wait for a later retry, some are leased, a few are due, a few stale.
            conn.execute(
                "INSERT INTO symphony.payment_outbox_pending "
                "  (outbox_id, participant_id, sequence_id, next_attempt_at, claimed_by, "
                "   lease_token, lease_expires_at, claimed_at) "
                "SELECT r.outbox_id, r.participant_id, r.sequence_id, "
                "       now() + CASE WHEN r.sequence_id % 100 = 0 THEN interval '-1 minute' "
                "                    ELSE interval '1 hour' END, "
                "       CASE WHEN r.sequence_id % 10 = 1 THEN 'w' END, "
                "       CASE WHEN r.sequence_id % 10 = 1 THEN gen_random_uuid() END, "
                "       CASE WHEN r.sequence_id % 10 = 1 THEN now() + "
                "            CASE WHEN r.sequence_id % 500 = 1 THEN interval '-1 minute' "
                "                 ELSE interval '1 hour' END END, "
                "       CASE WHEN r.sequence_id % 10 = 1 THEN now() END "
                "  FROM symphony.payment_instruction_registry r "
                " WHERE r.instruction_id LIKE 'plan-%%'"
            )
            # A ledger with history: every item was tried and is waiting to retry; the leased
            # ones are being tried again.
            conn.execute(
                "INSERT INTO symphony.payment_outbox_attempts (outbox_id, attempt_no, state) "
                "SELECT p.outbox_id, n, CASE n % 2 WHEN 1 THEN 'DISPATCHING' ELSE 'RETRYABLE' END"
                "       ::symphony.attempt_state "
                "  FROM symphony.payment_outbox_pending p, "
                "       generate_series(1, CASE WHEN p.lease_token IS NULL THEN 2 ELSE 3 END) n "
                " ORDER BY p.outbox_id, n"
            )
            conn.execute(
                "UPDATE symphony.payment_outbox_pending "
                "   SET last_attempt_no = CASE WHEN lease_token IS NULL THEN 2 ELSE 3 END, "
                "       attempt_count = CASE WHEN lease_token IS NULL THEN 1 ELSE 2 END"
            )
        conn.execute("ANALYZE symphony.payment_outbox_pending")
        conn.execute("ANALYZE symphony.payment_instruction_registry")
        conn.execute("ANALYZE symphony.payment_outbox_attempts")
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


async def _plans(conn: psycopg.AsyncConnection[tuple[object, ...]], statement: str) -> str:
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(statement)  # type: ignore[arg-type]
    finally:
        conn._notice_handlers.clear()
    return "\n".join(notices)


async def test_claim_reads_the_due_index(explained: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    plans = await _plans(explained, "SELECT * FROM symphony.claim_outbox_batch('w2', 64, 60)")
    assert "payment_outbox_pending_due_idx" in plans, plans
    assert "payment_outbox_pending_pkey" in plans, plans
    assert "Seq Scan on payment_outbox_pending" not in plans, plans


async def test_ledger_history_check_reads_one_index_entry(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(explained, "SELECT * FROM symphony.claim_outbox_batch('w2', 64, 60)")
    assert "payment_outbox_attempts_outbox_attempt_no_key" in plans, plans
    assert "Seq Scan on payment_outbox_attempts" not in plans, plans


async def test_repair_reads_only_leased_rows(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(explained, "SELECT * FROM symphony.repair_expired_leases(100, 120)")
    assert "payment_outbox_pending_lease_expiry_idx" in plans, plans
    assert "Seq Scan on payment_outbox_pending" not in plans, plans


async def test_completion_finds_items_by_primary_key(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(
        explained,
        "SELECT * FROM symphony.complete_outbox_batch("
        "  ARRAY(SELECT outbox_id FROM symphony.payment_outbox_pending "
        "         WHERE lease_token IS NOT NULL LIMIT 20), "
        "  ARRAY(SELECT lease_token FROM symphony.payment_outbox_pending "
        "         WHERE lease_token IS NOT NULL LIMIT 20), "
        "  array_fill('DISPATCHED'::text, ARRAY[20]), array_fill(NULL::text, ARRAY[20]), "
        "  array_fill(NULL::text, ARRAY[20]), array_fill(false, ARRAY[20]), "
        "  array_fill('rtx-plan'::text, ARRAY[20]))",
    )
    assert "payment_outbox_pending_pkey" in plans, plans
    assert "Seq Scan on payment_outbox_pending" not in plans, plans


# -- the bucket overloads (migration distribution_keys) read the same few rows -----------------

# Every plan item is plan-participant's; its bucket is read in the statement.
_PLAN_BUCKET = ("SELECT bucket::integer FROM symphony.participants "
                "WHERE participant_id = 'plan-participant'")


async def test_bucket_claim_reads_a_due_index(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(
        explained,
        "WITH b AS (" + _PLAN_BUCKET + ") "
        "SELECT c.* FROM b, symphony.claim_outbox_batch('w3', 64, 60, b.bucket, b.bucket) c")
    assert ("payment_outbox_pending_bucket_due_idx" in plans
            or "payment_outbox_pending_due_idx" in plans), plans
    assert "Seq Scan on payment_outbox_pending" not in plans, plans
    assert "Seq Scan on payment_outbox_attempts" not in plans, plans


async def test_bucket_repair_reads_only_leased_rows(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(
        explained,
        "WITH b AS (" + _PLAN_BUCKET + ") "
        "SELECT r.* FROM b, symphony.repair_expired_leases(100, 120, b.bucket, b.bucket) r")
    assert ("payment_outbox_pending_bucket_lease_expiry_idx" in plans
            or "payment_outbox_pending_lease_expiry_idx" in plans), plans
    assert "Seq Scan on payment_outbox_pending" not in plans, plans


async def test_bucket_completion_finds_items_by_primary_key(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(
        explained,
        "WITH b AS (" + _PLAN_BUCKET + ") "
        "SELECT c.* FROM b, symphony.complete_outbox_batch("
        "  ARRAY(SELECT outbox_id FROM symphony.payment_outbox_pending "
        "         WHERE lease_token IS NOT NULL ORDER BY outbox_id LIMIT 20), "
        "  ARRAY(SELECT lease_token FROM symphony.payment_outbox_pending "
        "         WHERE lease_token IS NOT NULL ORDER BY outbox_id LIMIT 20), "
        "  array_fill('DISPATCHED'::text, ARRAY[20]), array_fill(NULL::text, ARRAY[20]), "
        "  array_fill(NULL::text, ARRAY[20]), array_fill(false, ARRAY[20]), "
        "  array_fill('rtx-plan'::text, ARRAY[20]), b.bucket, b.bucket) c",
    )
    assert "payment_outbox_pending_pkey" in plans, plans
    assert "Seq Scan on payment_outbox_pending" not in plans, plans
