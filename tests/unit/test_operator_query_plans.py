"""The operator's queue browse reads an index by cursor, never the whole registry or ledger
(plans pinned by EXPLAIN of the named queries as shipped in queries.sql), on a registry of
20,000 items over a hundred participants with a ten-row history each."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import psycopg
import pytest

from symphony.db import DatabaseSettings
from symphony.db.query import get_query

ITEMS = 20_000
TOP = datetime.max.replace(tzinfo=UTC)
TOP_ID = UUID(int=(1 << 128) - 1)


@pytest.fixture(scope="module")
def seeded_dsn(isolated_settings: DatabaseSettings) -> str:
    assert isolated_settings.database_url is not None
    dsn = isolated_settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO symphony.participants (participant_id, display_name) "
                "SELECT 'browse-' || g, 'Browse ' || g FROM generate_series(0, 99) g")
            conn.execute(
                "INSERT INTO symphony.payment_instruction_registry "
                "  (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, "
                "   rail_type, payload, created_at) "
                "SELECT 'browse-' || g, 'k-' || g, gen_random_uuid(), 'browse-' || (g %% 100), "
                "       g, 'ACH', '{\"amount\": \"1.00\", \"currency\": \"EUR\"}', "
                "       now() - (%s - g) * interval '10 second' "
                "  FROM generate_series(1, %s) g", (ITEMS, ITEMS))
            conn.execute(
                "INSERT INTO symphony.payment_outbox_attempts "
                "  (outbox_id, attempt_no, state, recorded_at, rail_transaction_id) "
                "SELECT r.outbox_id, n, (CASE WHEN n % 2 = 1 THEN 'DISPATCHING' "
                "             WHEN n < 10 THEN 'RETRYABLE' "
                "             WHEN r.sequence_id % 5 = 0 THEN 'FAILED' "
                "             ELSE 'DISPATCHED' END)::symphony.attempt_state, "
                "       r.created_at + n * interval '1 second', "
                "       CASE WHEN n = 10 THEN 'rtx-browse' END "
                "  FROM symphony.payment_instruction_registry r, generate_series(1, 10) n "
                " WHERE r.instruction_id LIKE 'browse-%' AND r.sequence_id % 4 <> 0 "
                " ORDER BY r.outbox_id, n")
            conn.execute(
                "INSERT INTO symphony.payment_outbox_pending "
                "  (outbox_id, participant_id, sequence_id, attempt_count, last_attempt_no, "
                "   next_attempt_at, needs_lookup, review_reason, review_since) "
                "SELECT r.outbox_id, r.participant_id, r.sequence_id, 0, 0, now(), "
                "       r.sequence_id % 200 = 0, "
                "       CASE WHEN r.sequence_id % 200 = 0 THEN 'UNSETTLED_AT_RETRY_LIMIT' END, "
                "       CASE WHEN r.sequence_id % 200 = 0 THEN r.created_at END "
                "  FROM symphony.payment_instruction_registry r "
                " WHERE r.instruction_id LIKE 'browse-%' AND r.sequence_id % 4 = 0")
        for table in ("payment_instruction_registry", "payment_outbox_attempts",
                      "payment_outbox_pending"):
            conn.execute(f"ANALYZE symphony.{table}")  # type: ignore[arg-type]
    return dsn


def _plan(dsn: str, query: str, params: dict[str, object]) -> str:
    statement = get_query(query).sql
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(f"EXPLAIN {statement}", params).fetchall()  # type: ignore[call-overload]
    return "\n".join(str(r[0]) for r in rows)


def _params(**extra: object) -> dict[str, object]:
    params: dict[str, object] = {"after_at": TOP, "after_id": TOP_ID, "state": None,
                                 "rail": None, "limit": 51, "window": 1000,
                                 "participant": None}
    params.update(extra)
    return params


@pytest.mark.parametrize("state", [None, "FAILED"])
def test_the_browse_walks_the_registry_index_backwards(seeded_dsn: str, state: str | None) -> None:
    plan = _plan(seeded_dsn, "ops_browse_payments", _params(state=state))
    assert "Index Scan Backward using payment_instruction_registry_created_at_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
    # Each item's latest ledger row and pending row are probed by key.
    assert "payment_outbox_attempts_outbox_attempt_no_key" in plan, plan


def test_the_browse_by_participant_reads_its_own_index(seeded_dsn: str) -> None:
    plan = _plan(seeded_dsn, "ops_browse_participant_payments",
                 _params(participant="browse-1", window=51))
    assert ("Index Scan Backward using payment_instruction_registry_participant_created_idx"
            in plan), plan
    assert "Seq Scan" not in plan, plan


def test_a_filtered_browse_by_participant_stays_within_the_participant(seeded_dsn: str) -> None:
    # A window of 1,000 covers this participant's 200 items: the planner may sort them rather
    # than walk its index; either way it reads only this participant's index entries.
    plan = _plan(seeded_dsn, "ops_browse_participant_payments",
                 _params(participant="browse-1", state="PENDING"))
    assert "Seq Scan" not in plan, plan
    assert "Index Cond: (participant_id = 'browse-1'::text)" in plan, plan


def test_the_review_queue_reads_the_review_index(seeded_dsn: str) -> None:
    plan = _plan(seeded_dsn, "ops_browse_review",
                 {"after_at": datetime.min.replace(tzinfo=UTC), "after_id": UUID(int=0),
                  "participant": None, "rail": None, "limit": 51})
    assert "payment_outbox_pending_review_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


