"""The delivery service's hot statements use their indexes: the plans of the statements
inside the claim, the fan-out and the completion, captured with auto_explain on a few
thousand deliveries (each run rolled back, so the seed stays)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from symphony.db import DatabaseSettings

PAYMENTS = 1500
PID = "plan-hooks"
HELD = "plan-held"
SEALED = "'\\x" + "00" * 60 + "'::bytea"

# Needs the auto_explain module (scripts/pg_versions.py leaves it out where the binaries lack it).
pytestmark = pytest.mark.auto_explain


@pytest.fixture(scope="module")
def seeded_dsn(isolated_settings: DatabaseSettings) -> str:
    assert isolated_settings.database_url is not None
    dsn = isolated_settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1 FROM symphony.add_participant(%s, 'plans')", (PID,))
        conn.execute(
            "SELECT 1 FROM symphony.create_webhook_endpoint(%s, gen_random_uuid(), "
            "'https://hooks.example.com/x', ARRAY['payment.created'], '', "
            + SEALED + ", '0123456789abcdef')", (PID,))
        conn.execute(
            "SELECT symphony.enqueue_payment_outbox('plan-' || g, 'k-' || g, %s, 'SEPA_CT', "
            "  '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}') "
            "  FROM generate_series(1, %s) g", (PID, PAYMENTS))
        conn.execute("SELECT * FROM symphony.fan_out_webhook_events(100, 10000)")
        # Most deliveries wait for a later retry, a few are due, some leased.
        conn.execute(
            "UPDATE symphony.webhook_deliveries "
            "   SET next_attempt_at = now() + CASE WHEN event_seq %% 50 = 0 "
            "       THEN interval '-1 minute' ELSE interval '1 hour' END, "
            "       attempt_count = 1 "
            " WHERE participant_id = %s", (PID,))
        # New events past the cursor, for the fan-out to find.
        conn.execute(
            "SELECT symphony.enqueue_payment_outbox('plan-new-' || g, 'k-' || g, %s, 'SEPA_CT', "
            "  '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}') "
            "  FROM generate_series(1, 20) g", (PID,))
        # A second participant whose endpoint the held-endpoint test holds: a few deliveries
        # (what a held endpoint keeps), each attempted once, two due.
        conn.execute("SELECT 1 FROM symphony.add_participant(%s, 'plans')", (HELD,))
        conn.execute(
            "SELECT 1 FROM symphony.create_webhook_endpoint(%s, gen_random_uuid(), "
            "'https://hooks.example.com/y', ARRAY['payment.created'], '', "
            + SEALED + ", '0123456789abcdef')", (HELD,))
        conn.execute(
            "SELECT symphony.enqueue_payment_outbox('held-' || g, 'k-' || g, %s, 'SEPA_CT', "
            "  '{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}') "
            "  FROM generate_series(1, 12) g", (HELD,))
        conn.execute("SELECT * FROM symphony.fan_out_webhook_events(100, 10000)")
        conn.execute(
            "UPDATE symphony.webhook_deliveries "
            "   SET next_attempt_at = now() + CASE WHEN event_seq <= 2 "
            "       THEN interval '-1 minute' ELSE interval '1 hour' END, "
            "       attempt_count = 1 "
            " WHERE participant_id = %s", (HELD,))
        for table in ("webhook_deliveries", "webhook_endpoints", "payment_events",
                      "webhook_delivery_attempts"):
            conn.execute(f"ANALYZE symphony.{table}")
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


async def test_the_claim_reads_the_due_index(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(explained,
                         "SELECT * FROM symphony.claim_webhook_deliveries('w', 32, 60)")
    assert "webhook_deliveries_due_idx" in plans, plans
    assert "Seq Scan on webhook_deliveries" not in plans, plans
    assert "Seq Scan on payment_events" not in plans, plans
    assert "payment_events_pkey" in plans, plans


async def test_the_fan_out_reads_events_past_the_cursor_by_key(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    plans = await _plans(explained, "SELECT * FROM symphony.fan_out_webhook_events(100, 500)")
    assert "payment_events_pkey" in plans, plans
    assert "Seq Scan on payment_events" not in plans, plans
    assert "Seq Scan on webhook_deliveries" not in plans, plans


async def test_the_completion_finds_its_delivery_by_primary_key(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    # Refused on its (made-up) lease: the lookup is planned and run all the same.
    plans = await _plans(
        explained,
        "DO $$ BEGIN PERFORM * FROM symphony.complete_webhook_delivery("
        f"  '{PID}', (SELECT delivery_id FROM symphony.webhook_deliveries "
        f"            WHERE participant_id = '{PID}' LIMIT 1), "
        "  gen_random_uuid(), 'DELIVERED', NULL, 200, 1, NULL, NULL, now(), 10); "
        "EXCEPTION WHEN SQLSTATE 'SY077' THEN NULL; END $$")
    assert ("webhook_deliveries_pkey" in plans
            or "webhook_deliveries_delivery_id_idx" in plans), plans
    assert "Seq Scan on webhook_deliveries" not in plans, plans


async def test_a_replay_finds_its_delivery_the_waiting_replays_and_the_event_by_key(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    # The operator's replay (migration ops_replay_webhook_delivery): the delivery by its id,
    # the replays still waiting through the pending-replay index, the event by its key; never
    # a pass over the endpoint's deliveries.
    cur = await explained.execute(
        "SELECT delivery_id FROM symphony.webhook_deliveries WHERE participant_id = %s "
        "LIMIT 1", (PID,))
    row = await cur.fetchone()
    assert row is not None
    plans = await _plans(
        explained,
        "SELECT * FROM symphony.replay_webhook_delivery_by_operator("
        f"  '{row[0]}', 'ops-plan', 'plan check')")
    assert "webhook_deliveries_pending_replay_idx" in plans, plans
    assert "payment_events_pkey" in plans, plans
    assert "Seq Scan on webhook_deliveries" not in plans, plans
    assert "Seq Scan on payment_events" not in plans, plans


async def test_a_held_endpoints_probe_and_its_failure_read_the_pending_index(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    # Migration webhook_probe: an endpoint held (the large one disabled meanwhile), its one
    # probe claimed (its pending deliveries and the "one leased?" check by the endpoint's
    # pending index, never a pass over the table), then failed (the take-back of what nobody
    # attempted, by that index), then the fan-out skips it by that index.
    plans = await _plans(
        explained,
        "DO $$ DECLARE r record; BEGIN "
        "  UPDATE symphony.webhook_endpoints SET status = 'DISABLED' "
        f"   WHERE participant_id = '{PID}'; "
        "  UPDATE symphony.webhook_endpoints SET held_since = now() "
        f"   WHERE participant_id = '{HELD}'; "
        "  SELECT * INTO STRICT r FROM symphony.claim_webhook_deliveries('w', 32, 60); "
        "  PERFORM * FROM symphony.complete_webhook_delivery(r.participant_id, r.delivery_id, "
        "      r.lease_token, 'RETRY', 5, NULL, 1, 'connect_error', NULL, now(), 10); "
        "  PERFORM * FROM symphony.fan_out_webhook_events(100, 500); "
        "END $$")
    assert "webhook_deliveries_pending_endpoint_idx" in plans, plans
    assert "Seq Scan on webhook_deliveries" not in plans, plans
    assert "Seq Scan on payment_events" not in plans, plans
    # The events waiting behind the held endpoint's cursor: its participant's last event.
    assert "Scan Backward using payment_events_pkey" in plans, plans


async def test_the_backlog_figures_probe_each_endpoints_last_event(
    explained: psycopg.AsyncConnection[tuple[object, ...]],
) -> None:
    # The last event of each endpoint's participant: one descent of the key from its end,
    # never the participant's events.
    for statement in ("SELECT * FROM symphony.ops_webhook_endpoints(NULL, 100)",
                      "SELECT * FROM symphony.webhook_health()"):
        plans = await _plans(explained, statement)
        assert "Scan Backward using payment_events_pkey" in plans, plans
        assert "Seq Scan on payment_events" not in plans, plans
