"""Items with a history at a chosen time, for the operator views (failures, throughput).

The outbox functions stamp the ledger with the database's clock; a test that needs an item
that ended ten minutes ago writes that history itself, as the admin, through the ledger's own
rules (legal transitions, pending if and only if not terminal): no sleeping.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from tests.support.outbox import instruction

from symphony.db import test_only
from symphony.outbox import OutboxStore, PaymentInstruction


async def ended_item(
    store: OutboxStore,
    admin_dsn: str,
    state: str,
    at: datetime,
    *,
    error_code: str | None = None,
    error_detail: str | None = None,
    submitted: PaymentInstruction | None = None,
) -> UUID:
    """Enqueue one item and record it as DISPATCHING, then `state` (DISPATCHED or FAILED) at
    `at`; it leaves the queue in the same transaction, as a completion would."""
    enqueued = await store.enqueue(submitted or instruction())
    outbox_id = enqueued.outbox_id
    await test_only.statements_no_role(admin_dsn, [
        ("INSERT INTO symphony.payment_outbox_attempts "
         "  (outbox_id, attempt_no, state, worker_id, recorded_at) "
         "VALUES (%s, 1, 'DISPATCHING', 'test-worker', %s)",
         (outbox_id, at - timedelta(seconds=1))),
        ("INSERT INTO symphony.payment_outbox_attempts "
         "  (outbox_id, attempt_no, state, worker_id, error_code, error_detail, recorded_at, "
         "   rail_transaction_id) "
         "VALUES (%s, 2, %s, 'test-worker', %s, %s, %s, %s)",
         (outbox_id, state, error_code, error_detail, at,
          "rtx-test" if state == "DISPATCHED" else None)),
        ("DELETE FROM symphony.payment_outbox_pending WHERE outbox_id = %s", (outbox_id,)),
    ])
    return outbox_id


async def database_now(admin_dsn: str) -> datetime:
    rows = await test_only.query_no_role(admin_dsn, "SELECT now() AS now")
    now: datetime = rows[0]["now"]
    return now


async def put_under_review(
    store: OutboxStore, admin_dsn: str, *, participant_id: str | None = None
) -> UUID:
    """Enqueue one item and put it under review as the retry ceiling would (it may have
    executed, the rail did not settle it): needs a lookup, no lease, a review reason."""
    submitted = instruction() if participant_id is None else instruction(
        participant_id=participant_id)
    outbox_id = (await store.enqueue(submitted)).outbox_id
    await test_only.query_no_role(
        admin_dsn,
        "UPDATE symphony.payment_outbox_pending SET needs_lookup = true, "
        "       review_reason = 'UNSETTLED_AT_RETRY_LIMIT', review_since = now() "
        " WHERE outbox_id = %s", (outbox_id,))
    return outbox_id
