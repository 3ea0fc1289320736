"""The bench's growth fill: terminal histories appended to the ledger set-based, so the growth
figures (claim, repair, audit at 10k ... 1M ledger rows) can be taken in minutes. Used by
run.py (`make bench`) and run at a tiny size by tests/unit/test_bench_growth_fill.py, so a
fill the ledger's rules refuse is caught before a bench run meets it.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

_FILL = """
WITH items AS (
    SELECT gen_random_uuid() AS outbox_id, gen_random_uuid() AS lease_token,
           s.n + %(offset)s AS n
      FROM generate_series(1, %(items)s) AS s(n)
), reg AS (
    INSERT INTO symphony.payment_instruction_registry
        (instruction_id, idempotency_key, outbox_id, participant_id, sequence_id, rail_type,
         payload)
    SELECT 'g-' || n, 'k', outbox_id, %(participant)s, n, 'RTP', %(payload)s::jsonb FROM items
    RETURNING outbox_id
)
-- A dispatch and its completion under one lease, as the functions write them (I9).
INSERT INTO symphony.payment_outbox_attempts (outbox_id, attempt_no, state, worker_id,
                                              lease_token, rail_transaction_id)
SELECT reg.outbox_id, a.no, a.state::symphony.attempt_state, 'bench-growth', i.lease_token,
       CASE WHEN a.no = 2 THEN 'g' END
  FROM reg JOIN items i ON i.outbox_id = reg.outbox_id
 CROSS JOIN (VALUES (1, 'DISPATCHING'), (2, 'DISPATCHED')) AS a(no, state)
 -- Attempt 1 before attempt 2 of every item: the ledger's sequence check refuses a row that
 -- does not continue its item's history, and without an ORDER BY the join may emit them in
 -- any order (it did, for the 100,000-row chunks of a fresh clone).
 ORDER BY i.n, a.no
"""

# The payment.created event of each item just filled: the pending table's trigger writes it for
# an enqueued item, and the fill writes no pending rows (its items are terminal at once). The
# DISPATCHED rows' events come from the ledger's own trigger. Without them the audit's E1
# refuses the filled ledger (EVENT_MISSING). Written as the events' triggers write them
# (migration payment_events_cheaper): numbered from the participant's counter, the payload
# from payment_event_payload.
_CREATED_EVENTS = """
WITH items AS (
    SELECT r.participant_id, r.outbox_id,
           row_number() OVER (ORDER BY r.sequence_id) AS k, count(*) OVER () AS n
      FROM symphony.payment_instruction_registry r
     WHERE r.participant_id = %(participant)s
       AND r.sequence_id > %(offset)s AND r.sequence_id <= %(offset)s + %(items)s
), counter AS (
    -- The participant's event counter, bumped as the events' triggers bump it.
    INSERT INTO symphony.participant_event_sequences AS s (participant_id, last_event_seq)
    SELECT i.participant_id, i.n FROM items i WHERE i.k = 1
    ON CONFLICT ON CONSTRAINT participant_event_sequences_pkey
    DO UPDATE SET last_event_seq = s.last_event_seq + excluded.last_event_seq
    RETURNING s.last_event_seq
)
INSERT INTO symphony.payment_events (participant_id, event_seq, event_type, outbox_id, payload)
SELECT i.participant_id, c.last_event_seq - i.n + i.k, 'payment.created', i.outbox_id,
       b.payload
  FROM items i
 CROSS JOIN counter c
 CROSS JOIN LATERAL symphony.payment_event_payload(i.participant_id, i.outbox_id) b
"""


def ledger_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM symphony.payment_outbox_attempts").fetchone()
        return int(row[0]) if row else 0


def grow_ledger_to(dsn: str, participant: str, rows: int, offset: int, *,
                   payload: dict[str, Any], chunk: int = 100_000) -> int:
    """Append terminal histories (DISPATCHING + DISPATCHED) until the ledger has `rows`, as
    the database's admin (the ledger's triggers check and seal every row); returns the next
    sequence offset of `participant`."""
    need = rows - ledger_rows(dsn)
    items = max(0, need // 2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, items, chunk):
            n = min(chunk, items - start)
            conn.execute(_FILL, {"items": n, "offset": offset, "participant": participant,
                                 "payload": json.dumps(payload)})
            conn.execute(_CREATED_EVENTS, {"items": n, "offset": offset,
                                           "participant": participant})
            offset += n
        if items:
            conn.execute(
                "INSERT INTO symphony.participant_outbox_sequences (participant_id,"
                " last_sequence_id) VALUES (%s, %s) ON CONFLICT (participant_id) DO UPDATE"
                " SET last_sequence_id = EXCLUDED.last_sequence_id", (participant, offset))
            conn.execute("VACUUM ANALYZE symphony.payment_outbox_attempts")
            conn.execute("VACUUM ANALYZE symphony.payment_instruction_registry")
    return offset
