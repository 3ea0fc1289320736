"""A transaction as a role commits together or not at all."""

from __future__ import annotations

import contextlib
import json

import pytest

from symphony.db import Database, Role, SymphonyError, test_only


def _params(instruction_id: str) -> dict[str, str]:
    return {
        "instruction_id": instruction_id, "idempotency_key": "k", "participant_id": "p-tx",
        "rail_type": "ACH",
        "payload": json.dumps({"amount": "1.00", "currency": "EUR", "destination": "d"}),
    }


async def _registered(admin_dsn: str, instruction_id: str) -> int:
    rows = await test_only.query_no_role(
        admin_dsn,
        "SELECT count(*) AS n FROM symphony.payment_instruction_registry "
        " WHERE instruction_id = %s", (instruction_id,))
    return int(rows[0]["n"])


async def test_exception_in_the_block_rolls_everything_back(db: Database, admin_dsn: str) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with db.transaction(Role.INGEST) as tx:
            await tx.fetch_one("enqueue_payment_outbox", _params("tx-rolled-back-1"))
            await tx.fetch_one("enqueue_payment_outbox", _params("tx-rolled-back-2"))
            raise Abort
    assert await _registered(admin_dsn, "tx-rolled-back-1") == 0
    assert await _registered(admin_dsn, "tx-rolled-back-2") == 0


async def test_failed_statement_rolls_back_the_earlier_ones(db: Database, admin_dsn: str) -> None:
    with pytest.raises(SymphonyError) as info:
        async with db.transaction(Role.INGEST) as tx:
            await tx.fetch_one("enqueue_payment_outbox", _params("tx-partial-1"))
            await tx.fetch_one("enqueue_payment_outbox", {**_params("tx-partial-2"),
                                                           "rail_type": "NOPE"})
    assert info.value.sqlstate == "SY014"
    assert await _registered(admin_dsn, "tx-partial-1") == 0


async def test_statements_of_one_block_commit_together(db: Database, admin_dsn: str) -> None:
    async with db.transaction(Role.INGEST) as tx:
        await tx.fetch_one("enqueue_payment_outbox", _params("tx-committed-1"))
        await tx.fetch_one("enqueue_payment_outbox", _params("tx-committed-2"))
    assert await _registered(admin_dsn, "tx-committed-1") == 1
    assert await _registered(admin_dsn, "tx-committed-2") == 1


async def test_unknown_query_name_is_refused_before_sql(db: Database) -> None:
    with pytest.raises(SymphonyError) as info:
        await db.fetch_all(Role.READONLY, "drop_everything")
    assert info.value.code == "UNKNOWN_QUERY"


async def test_snapshot_transaction_is_read_only_and_repeatable(
    db: Database, admin_dsn: str
) -> None:
    async with db.transaction(Role.AUDITOR, snapshot=True) as tx:
        before = await tx.fetch_one("audit_counts")
        # A write committed by someone else meanwhile is not seen by this snapshot.
        await test_only.query_no_role(
            admin_dsn,
            "SELECT * FROM symphony.enqueue_payment_outbox('tx-snapshot', 'k', 'p-tx', 'ACH', "
            "'{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"d\"}'::jsonb)")
        after = await tx.fetch_one("audit_counts")
        assert before == after
        level = await tx.connection.execute("SHOW transaction_isolation")
        assert (await level.fetchone()) == {"transaction_isolation": "repeatable read"}
        readonly = await tx.connection.execute("SHOW transaction_read_only")
        assert (await readonly.fetchone()) == {"transaction_read_only": "on"}
    assert await _registered(admin_dsn, "tx-snapshot") == 1


async def test_commit_after_a_swallowed_error_is_refused(db: Database, admin_dsn: str) -> None:
    with pytest.raises(SymphonyError) as info:
        async with db.transaction(Role.INGEST) as tx:
            created = await tx.fetch_one("enqueue_payment_outbox", _params("tx-swallowed-1"))
            assert created is not None and created["created"]
            with contextlib.suppress(SymphonyError):  # a careless caller carries on
                await tx.fetch_one("enqueue_payment_outbox", {**_params("tx-swallowed-2"),
                                                               "rail_type": "NOPE"})
    assert info.value.code == "TRANSACTION_ABORTED"
    # The first enqueue's outbox_id was handed out, and the error says it was not saved.
    assert await _registered(admin_dsn, "tx-swallowed-1") == 0


async def test_transaction_cannot_be_used_after_its_block(db: Database) -> None:
    async with db.transaction(Role.READONLY) as tx:
        await tx.fetch_one("supervisor_status")
    with pytest.raises(SymphonyError) as info:
        await tx.fetch_one("supervisor_status")
    assert info.value.code == "TRANSACTION_CLOSED"
