"""Property: the ledger accepts exactly the histories the state machine allows (I4, I5, and
I10's rule that nothing may be canceled once an attempt may have reached the rail).

Hypothesis proposes sequences of appends — a state and an attempt number, sometimes a wrong
one — and the database's answers are compared with a model of the specification's state
machine. Each example runs in a transaction that is rolled back, so examples are independent
and leave nothing behind.
"""

from __future__ import annotations

import uuid

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symphony.db import DatabaseSettings

STATES = ["DISPATCHING", "DISPATCHED", "RETRYABLE", "FAILED", "ZOMBIE_REQUEUE", "CANCELED"]
TERMINAL = {"DISPATCHED", "FAILED", "CANCELED"}


def legal(previous: str | None, following: str, *, ambiguous: bool = False) -> bool:
    """The specification's transitions, written independently of the SQL. `ambiguous`: an
    earlier attempt may have reached the rail (the item has a lookup mark), so it may no longer
    be canceled."""
    if following == "CANCELED" and ambiguous:
        return False
    if previous is None:
        return following in {"DISPATCHING", "CANCELED"}
    if previous == "DISPATCHING":
        return following in {"DISPATCHED", "RETRYABLE", "FAILED", "ZOMBIE_REQUEUE"}
    if previous == "RETRYABLE":
        return following in {"DISPATCHING", "CANCELED"}
    if previous == "ZOMBIE_REQUEUE":
        return following == "DISPATCHING"
    return False


appends = st.lists(
    st.tuples(st.sampled_from(STATES), st.sampled_from([0, 0, 0, 0, 1, -1, 2])),
    min_size=1, max_size=8,
)


@settings(
    max_examples=120,
    deadline=None,
    # The fixture is the session's database settings: nothing in it changes between examples.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=appends)
def test_ledger_accepts_exactly_the_legal_histories(
    db_settings: DatabaseSettings, steps: list[tuple[str, int]]
) -> None:
    assert db_settings.database_url is not None
    outbox_id = uuid.uuid4()
    with (
        psycopg.connect(db_settings.database_url.get_secret_value(), autocommit=True) as conn,
        conn.transaction(force_rollback=True),
    ):
        conn.execute(
            "INSERT INTO symphony.participants (participant_id, display_name) "
            "VALUES ('property', 'property') ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO symphony.payment_instruction_registry (instruction_id, "
            " idempotency_key, outbox_id, participant_id, sequence_id, rail_type, payload) "
            "VALUES (%s, 'k', %s, 'property', 1, 'ACH', '{}')",
            (f"property-{outbox_id}", outbox_id),
        )
        history: list[str] = []
        ambiguous = False
        for state, offset in steps:
            attempt_no = len(history) + 1 + offset
            expected = offset == 0 and legal(history[-1] if history else None, state,
                                             ambiguous=ambiguous)
            try:
                with conn.transaction():  # a savepoint: a refusal undoes only this append
                    conn.execute(
                        "INSERT INTO symphony.payment_outbox_attempts "
                        "(outbox_id, attempt_no, state, rail_transaction_id) "
                        "VALUES (%s, %s, %s, %s)",
                        # A DISPATCHED row carries its proof (a rule of its own).
                        (outbox_id, attempt_no, state,
                         "rtx-model" if state == "DISPATCHED" else None),
                    )
                accepted = True
            except psycopg.Error as exc:
                accepted = False
                # Refused for the right reason: an I4 or I5 rule (or the unique key that
                # backs I4), never something unrelated.
                assert exc.sqlstate in {"SY300", "SY301", "23505", "23514"}, exc.sqlstate
            assert accepted == expected, (history, state, attempt_no, ambiguous)
            if accepted:
                history.append(state)
                if state == "ZOMBIE_REQUEUE" and not ambiguous:
                    # What the repair leaves behind (0009): the item needs a lookup for good.
                    conn.execute(
                        "INSERT INTO symphony.outbox_lookup_marks (outbox_id, attempt_no, "
                        " reason) VALUES (%s, %s, 'ZOMBIE_REQUEUE')", (outbox_id, attempt_no))
                    ambiguous = True
        # What was accepted is a legal history, dense from 1, with at most one terminal row.
        rows = conn.execute(
            "SELECT attempt_no, state::text FROM symphony.payment_outbox_attempts "
            " WHERE outbox_id = %s ORDER BY attempt_no", (outbox_id,),
        ).fetchall()
        assert [r[1] for r in rows] == history
        assert [r[0] for r in rows] == list(range(1, len(history) + 1))
        assert sum(1 for s in history if s in TERMINAL) <= 1
