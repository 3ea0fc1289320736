"""The invariants every model-check step and fault test asserts on the whole database.

Three sources, all on one database: the complete audit (`symphony.outbox.audit.verify`, what
`symphony audit verify` runs: I1-I10 and the tamper-evident chains, as `symphony_auditor` in
one snapshot), the older auditor queries (`audit_illegal_transitions`,
`audit_pending_mismatch`), and direct SQL as the admin, written independently of both (I2, I4
counters, I6, I7 both ways, I8, the lease shape, no FAILED recorded by a worker after a zombie
requeue). A violation fails with the invariant's name and the offending items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from symphony.db import Database, Role, test_only
from symphony.outbox.audit import verify

# One statement, so every check reads the same snapshot of the database.
_DIRECT_CHECKS = """
SELECT
  -- I2: one pending row per outbox_id (the primary key; checked in case it was bypassed).
  (SELECT coalesce(array_agg(outbox_id::text), '{}') FROM (
      SELECT outbox_id FROM symphony.payment_outbox_pending
       GROUP BY outbox_id HAVING count(*) > 1) x) AS i2,
  -- I4: attempt_no dense from 1 per item.
  (SELECT coalesce(array_agg(outbox_id::text), '{}') FROM (
      SELECT outbox_id FROM symphony.payment_outbox_attempts GROUP BY outbox_id
      HAVING min(attempt_no) <> 1 OR max(attempt_no) <> count(*)) x) AS i4,
  -- I4: the pending row's counters agree with the ledger.
  (SELECT coalesce(array_agg(p.outbox_id::text), '{}')
     FROM symphony.payment_outbox_pending p
    WHERE p.last_attempt_no <> (SELECT coalesce(max(a.attempt_no), 0)
                                  FROM symphony.payment_outbox_attempts a
                                 WHERE a.outbox_id = p.outbox_id)
       OR p.attempt_count <> (SELECT count(*) FROM symphony.payment_outbox_attempts a
                               WHERE a.outbox_id = p.outbox_id AND a.state = 'DISPATCHING'
                                 AND coalesce(a.worker_id, '') NOT LIKE 'review:%%')
  ) AS counters,
  -- I6: at most one DISPATCHED and one terminal row per item.
  (SELECT coalesce(array_agg(outbox_id::text), '{}') FROM (
      SELECT outbox_id FROM symphony.payment_outbox_attempts
       WHERE state IN ('DISPATCHED', 'FAILED', 'CANCELED') GROUP BY outbox_id
      HAVING count(*) > 1) x) AS i6,
  -- I5 (end): a terminal row is the last row of its item.
  (SELECT coalesce(array_agg(DISTINCT t.outbox_id::text), '{}')
     FROM symphony.payment_outbox_attempts t
     JOIN symphony.payment_outbox_attempts later
       ON later.outbox_id = t.outbox_id AND later.attempt_no > t.attempt_no
    WHERE t.state IN ('DISPATCHED', 'FAILED', 'CANCELED')) AS after_terminal,
  -- I7: pending if and only if no terminal row (every registered item is one or the other).
  (SELECT coalesce(array_agg(r.outbox_id::text), '{}')
     FROM symphony.payment_instruction_registry r
    WHERE EXISTS (SELECT 1 FROM symphony.payment_outbox_pending p
                   WHERE p.outbox_id = r.outbox_id)
        = EXISTS (SELECT 1 FROM symphony.payment_outbox_attempts t
                   WHERE t.outbox_id = r.outbox_id
                     AND t.state IN ('DISPATCHED', 'FAILED', 'CANCELED'))
  ) AS i7,
  -- I8: sequence_id unique per participant, and never beyond its allocator (a sequence
  -- handed out again after the allocator moved back would collide). Enqueue order is the
  -- allocation order under the allocator's row lock, not created_at (transaction start):
  -- the model check asserts the order as it enqueues.
  (SELECT coalesce(array_agg(DISTINCT r.participant_id), '{}')
     FROM symphony.payment_instruction_registry r
     LEFT JOIN symphony.participant_outbox_sequences s ON s.participant_id = r.participant_id
    WHERE s.last_sequence_id IS NULL OR r.sequence_id > s.last_sequence_id OR r.sequence_id < 1
       OR EXISTS (SELECT 1 FROM symphony.payment_instruction_registry o
                   WHERE o.participant_id = r.participant_id AND o.sequence_id = r.sequence_id
                     AND o.outbox_id <> r.outbox_id)) AS i8,
  -- A lease is all or nothing, and an item under review is not leased.
  (SELECT coalesce(array_agg(outbox_id::text), '{}') FROM symphony.payment_outbox_pending
    WHERE (lease_token IS NULL) <> (claimed_by IS NULL)
       OR (review_reason IS NOT NULL AND (lease_token IS NOT NULL OR NOT needs_lookup))
  ) AS lease_shape,
  -- Money: no worker recorded FAILED for an item after a zombie requeue (the dead worker's
  -- call may have executed). An operator's confirmed FAILED (worker review:...) is allowed.
  (SELECT coalesce(array_agg(DISTINCT f.outbox_id::text), '{}')
     FROM symphony.payment_outbox_attempts f
     JOIN symphony.payment_outbox_attempts z
       ON z.outbox_id = f.outbox_id AND z.attempt_no < f.attempt_no
      AND z.state = 'ZOMBIE_REQUEUE'
    WHERE f.state = 'FAILED' AND coalesce(f.worker_id, '') NOT LIKE 'review:%%'
  ) AS failed_after_zombie,
  -- Money: nothing canceled once an attempt of it was dispatched and may have reached the
  -- rail (a DISPATCHING row not followed by a clean RETRYABLE, or a lookup mark).
  (SELECT coalesce(array_agg(DISTINCT c.outbox_id::text), '{}')
     FROM symphony.payment_outbox_attempts c
    WHERE c.state = 'CANCELED'
      AND (EXISTS (SELECT 1 FROM symphony.outbox_lookup_marks m
                    WHERE m.outbox_id = c.outbox_id)
           OR EXISTS (SELECT 1 FROM symphony.payment_outbox_attempts o
                       WHERE o.outbox_id = c.outbox_id
                         AND o.state IN ('ZOMBIE_REQUEUE', 'DISPATCHED', 'FAILED')))
  ) AS canceled_after_rail,
  (SELECT count(*) FROM symphony.payment_instruction_registry) AS items,
  (SELECT count(*) FROM symphony.payment_outbox_attempts) AS ledger_rows,
  (SELECT count(*) FROM symphony.payment_outbox_pending) AS pending
"""

_NAMES = {
    "i2": "I2 one pending row per item",
    "i4": "I4 attempt numbers dense from 1",
    "counters": "I4 pending counters agree with the ledger",
    "i6": "I6 at most one terminal row",
    "after_terminal": "I5 nothing follows a terminal row",
    "i7": "I7 pending iff not terminal",
    "i8": "I8 sequence unique per participant, within its allocator",
    "lease_shape": "lease and review shape",
    "failed_after_zombie": "no FAILED after a zombie requeue",
    "canceled_after_rail": "nothing canceled that may have reached the rail",
}


@dataclass(frozen=True, slots=True)
class InvariantReport:
    items: int
    ledger_rows: int
    pending: int
    violations: dict[str, list[Any]] = field(default_factory=dict)


async def check_invariants(db: Database, admin_dsn: str, *, limit: int = 20) -> InvariantReport:
    """Assert I1-I10's database side on the whole database; returns the counts."""
    violations: dict[str, list[Any]] = {}
    audit = await verify(db, limit=limit)
    for check in audit.failed():
        violations[f"audit verify: {check.invariant} {check.name}"] = [
            str(v) for v in check.items]
    illegal = await db.fetch_all(Role.AUDITOR, "audit_illegal_transitions", {"limit": limit})
    if illegal:
        violations["audit: illegal transitions (I4, I5)"] = illegal
    mismatch = await db.fetch_all(Role.AUDITOR, "audit_pending_mismatch", {"limit": limit})
    if mismatch:
        violations["audit: pending/terminal mismatch (I7)"] = mismatch
    [row] = await test_only.query_no_role(admin_dsn, _DIRECT_CHECKS)
    for key, name in _NAMES.items():
        if row[key]:
            violations[name] = list(row[key])[:limit]
    assert not violations, f"invariants violated: {violations}"
    return InvariantReport(int(row["items"]), int(row["ledger_rows"]), int(row["pending"]))
