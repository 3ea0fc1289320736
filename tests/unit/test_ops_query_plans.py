"""The operator's list queries read an index, not the ledger (plans pinned, like the hot path's).

The ledger only grows, and the dashboard asks for the newest failures and the throughput
every 2 s: both must cost what they return, not what the ledger holds. The plans are taken
with EXPLAIN of the named queries themselves (as shipped in queries.sql) on a ledger of a few
thousand items, most of them with a long non-terminal history.
"""

from __future__ import annotations

import psycopg
import pytest

from symphony.db import DatabaseSettings
from symphony.db.query import get_query

ITEMS = 20_000
INDEX = "payment_outbox_attempts_terminal_recent_idx"


@pytest.fixture(scope="module")
def seeded_dsn(isolated_settings: DatabaseSettings) -> str:
    assert isolated_settings.database_url is not None
    dsn = isolated_settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO symphony.participants (participant_id, display_name) "
                "VALUES ('plan-participant', 'Plan participant')"
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
            # Every item tried 5 times, one ledger row every 10 s over the last three weeks (the
            # newest item's last row now); one in 5 failed at the end, a quarter of the others
            # were dispatched, the rest wait for a retry (pending).
            conn.execute(
                "INSERT INTO symphony.payment_outbox_attempts "
                "  (outbox_id, attempt_no, state, error_code, recorded_at, rail_transaction_id) "
                "SELECT r.outbox_id, n, "
                "       (CASE WHEN n %% 2 = 1 THEN 'DISPATCHING' "
                "             WHEN n < 10 THEN 'RETRYABLE' "
                "             WHEN r.sequence_id %% 5 = 0 THEN 'FAILED' "
                "             WHEN r.sequence_id %% 4 = 0 THEN 'DISPATCHED' "
                "             ELSE 'RETRYABLE' END)::symphony.attempt_state, "
                "       CASE WHEN n = 10 AND r.sequence_id %% 5 = 0 THEN 'DECLINED' END, "
                "       now() - (%s * 10 - r.sequence_id * 10 - n) * interval '10 second', "
                "       CASE WHEN n = 10 THEN 'rtx-plan' END "
                "  FROM symphony.payment_instruction_registry r, generate_series(1, 10) n "
                " WHERE r.instruction_id LIKE 'plan-%%' "
                " ORDER BY r.outbox_id, n",
                (ITEMS,),
            )
            conn.execute(
                "INSERT INTO symphony.payment_outbox_pending "
                "  (outbox_id, participant_id, sequence_id, attempt_count, last_attempt_no, "
                "   next_attempt_at) "
                "SELECT r.outbox_id, r.participant_id, r.sequence_id, 5, 10, "
                "       now() + interval '1 hour' "
                "  FROM symphony.payment_instruction_registry r "
                " WHERE r.instruction_id LIKE 'plan-%%' AND r.sequence_id % 5 <> 0 "
                "   AND r.sequence_id % 4 <> 0"
            )
        conn.execute("ANALYZE symphony.payment_instruction_registry")
        conn.execute("ANALYZE symphony.payment_outbox_attempts")
        conn.execute("ANALYZE symphony.payment_outbox_pending")
    return dsn


def _plan(dsn: str, query: str, params: dict[str, object]) -> str:
    statement = get_query(query).sql
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(f"EXPLAIN {statement}", params).fetchall()  # type: ignore[call-overload]
    return "\n".join(str(r[0]) for r in rows)


def test_recent_failures_read_the_terminal_index_and_stop_at_the_limit(seeded_dsn: str) -> None:
    plan = _plan(seeded_dsn, "ops_recent_failures", {"limit": 50})
    assert INDEX in plan, plan
    assert "Index Scan Backward" in plan, plan
    assert "Seq Scan on payment_outbox_attempts" not in plan, plan
    assert plan.lstrip().startswith("Limit"), plan


@pytest.mark.parametrize("minutes", [30, 240])
def test_throughput_reads_only_the_window_from_the_terminal_index(
    seeded_dsn: str, minutes: int
) -> None:
    plan = _plan(seeded_dsn, "ops_throughput", {"minutes": minutes})
    assert INDEX in plan, plan
    # The window's start bounds the index scan itself (not a filter over every terminal row).
    assert any("Index Cond" in line and "recorded_at >=" in line for line in plan.splitlines()), plan
    assert "Seq Scan on payment_outbox_attempts" not in plan, plan


def test_one_item_is_read_by_its_keys(seeded_dsn: str) -> None:
    with psycopg.connect(seeded_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT outbox_id FROM symphony.payment_instruction_registry LIMIT 1").fetchone()
    assert row is not None
    summary = _plan(seeded_dsn, "item_summary", {"outbox_id": row[0]})
    ledger = _plan(seeded_dsn, "item_ledger", {"outbox_id": row[0]})
    assert "payment_instruction_registry_outbox_id_key" in summary, summary
    assert "Seq Scan" not in summary, summary
    assert "payment_outbox_attempts_outbox_attempt_no_key" in ledger, ledger
    assert "Seq Scan" not in ledger, ledger
