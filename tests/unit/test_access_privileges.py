"""Least privilege for participants, tokens and the participant-scoped reads: each privilege
allowed for the role that needs it and refused (42501) for another."""

from __future__ import annotations

import psycopg
import pytest
from tests.support.database import unique
from tests.support.outbox import TEST_PARTICIPANT

from symphony.db import Database, Role, SymphonyError, test_only
from symphony.outbox import AccessStore, TokenKind

SALT = "'\\x00112233445566778899aabbccddeeff'::bytea"
HASH = "sha256('x'::bytea)"

CONTROL_FUNCTIONS = {
    "add_participant": "SELECT * FROM symphony.add_participant('{pid}', 'name')",
    "revoke_participant": "SELECT * FROM symphony.revoke_participant('{pid}')",
    "issue_api_token": (
        "SELECT * FROM symphony.issue_api_token(gen_random_uuid(), 'OPERATOR', NULL, '', "
        f"{SALT}, {HASH})"),
    "revoke_api_token": "SELECT * FROM symphony.revoke_api_token('{token_id}')",
}

READER_FUNCTIONS = {
    "api_token_salt": "SELECT symphony.api_token_salt('{token_id}') AS s",
    "authenticate_api_token": (
        "SELECT * FROM symphony.authenticate_api_token('{token_id}', " + HASH + ")"),
    "participant_payment": (
        "SELECT * FROM symphony.participant_payment('{pid}', gen_random_uuid())"),
    "participant_payment_attempts": (
        "SELECT * FROM symphony.participant_payment_attempts('{pid}', gen_random_uuid())"),
    "participant_payments": "SELECT * FROM symphony.participant_payments('{pid}', NULL, NULL, 5)",
}


def assert_sqlstate(err: SymphonyError, sqlstate: str) -> None:
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate} ({err.code})"
    assert isinstance(err.__cause__, psycopg.Error)
    assert err.__cause__.sqlstate == sqlstate


async def refused(db: Database, role: Role, statement: str) -> SymphonyError:
    with pytest.raises(SymphonyError) as info:
        await test_only.execute_as_role(db, role, statement)
    return info.value


async def _args(db: Database) -> dict[str, str]:
    access = AccessStore(db)
    pid = unique("priv")
    await access.add_participant(pid, "privileges")
    token = await access.issue_token(TokenKind.OPERATOR, label="privileges")
    return {"pid": pid, "token_id": str(token.token_id)}


@pytest.mark.parametrize("name", CONTROL_FUNCTIONS)
async def test_control_runs_the_access_functions(db: Database, name: str) -> None:
    args = await _args(db)
    if name == "add_participant":
        args["pid"] = unique("priv-new")
    await test_only.execute_as_role(db, Role.CONTROL, CONTROL_FUNCTIONS[name].format(**args))


@pytest.mark.parametrize("role", [Role.INGEST, Role.EXECUTOR, Role.AUDITOR, Role.READONLY])
@pytest.mark.parametrize("name", CONTROL_FUNCTIONS)
async def test_no_other_role_manages_participants_or_tokens(
    db: Database, name: str, role: Role
) -> None:
    args = await _args(db)
    err = await refused(db, role, CONTROL_FUNCTIONS[name].format(**args))
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", [Role.READONLY, Role.CONTROL])
@pytest.mark.parametrize("name", READER_FUNCTIONS)
async def test_readers_run_the_scoped_reads(db: Database, name: str, role: Role) -> None:
    args = await _args(db)
    await test_only.execute_as_role(db, role, READER_FUNCTIONS[name].format(**args))


@pytest.mark.parametrize("role", [Role.INGEST, Role.EXECUTOR, Role.AUDITOR])
@pytest.mark.parametrize("name", READER_FUNCTIONS)
async def test_other_roles_cannot_run_the_scoped_reads(
    db: Database, name: str, role: Role
) -> None:
    args = await _args(db)
    err = await refused(db, role, READER_FUNCTIONS[name].format(**args))
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("column", ["secret_hash", "secret_salt", "token_id", "count(*)"])
@pytest.mark.parametrize("role", list(Role))
async def test_nobody_reads_the_token_table(db: Database, role: Role, column: str) -> None:
    err = await refused(db, role, f"SELECT {column} FROM symphony.api_tokens")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", list(Role))
async def test_nobody_writes_participants_directly(db: Database, role: Role) -> None:
    err = await refused(
        db, role,
        "INSERT INTO symphony.participants (participant_id, display_name) VALUES ('x', 'x')")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", [Role.READONLY, Role.AUDITOR, Role.CONTROL])
async def test_readers_read_participants_and_currencies(db: Database, role: Role) -> None:
    rows = await test_only.execute_as_role(
        db, role,
        "SELECT (SELECT count(*) FROM symphony.participants) AS p, "
        "       (SELECT minor_units FROM symphony.currencies WHERE code = 'JPY') AS jpy")
    assert rows[0]["p"] >= 1 and rows[0]["jpy"] == 0


@pytest.mark.parametrize("table", ["symphony.participants", "symphony.currencies"])
async def test_ingest_reads_neither_participants_nor_currencies(db: Database, table: str) -> None:
    err = await refused(db, Role.INGEST, f"SELECT 1 FROM {table}")
    assert_sqlstate(err, "42501")


# -- a participant's volume (sequence_id) is hidden from readers -----------------------------
# On the main line before migration 0007 readonly and auditor held SELECT on the whole
# registry, so the refusal below did not happen.


@pytest.mark.parametrize("role", [Role.READONLY, Role.AUDITOR])
async def test_readers_cannot_read_registry_sequence_ids(db: Database, role: Role) -> None:
    err = await refused(
        db, role, "SELECT max(sequence_id) FROM symphony.payment_instruction_registry")
    assert_sqlstate(err, "42501")


@pytest.mark.parametrize("role", [Role.READONLY, Role.AUDITOR])
async def test_readers_read_the_rest_of_the_registry(db: Database, role: Role) -> None:
    rows = await test_only.execute_as_role(
        db, role,
        "SELECT count(*) AS n, max(instruction_id) AS i, max(participant_id) AS p, "
        "       max(rail_type) AS r, max(created_at) AS c "
        "  FROM symphony.payment_instruction_registry")
    assert rows[0]["n"] >= 0


async def test_control_still_reads_registry_sequence_ids(db: Database) -> None:
    rows = await test_only.execute_as_role(
        db, Role.CONTROL,
        "SELECT max(sequence_id) AS s FROM symphony.payment_instruction_registry "
        " WHERE participant_id = %s", (TEST_PARTICIPANT,))
    assert len(rows) == 1


async def test_login_principals_execute_none_of_the_new_functions(db: Database) -> None:
    # A principal holds nothing itself: only its runtime role (after SET ROLE) may.
    rows = await test_only.query_no_role(
        db.endpoint.admin_dsn,
        "SELECT count(*) AS pairs, "
        "       count(*) FILTER (WHERE has_function_privilege(r.rolname, p.oid, 'EXECUTE')) "
        "         AS allowed "
        "  FROM pg_roles r CROSS JOIN pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        " WHERE n.nspname = 'symphony' AND r.rolname LIKE 'symphony\\_%%\\_svc' "
        "   AND p.proname IN ('add_participant', 'revoke_participant', 'issue_api_token', "
        "       'revoke_api_token', 'api_token_salt', 'authenticate_api_token', "
        "       'participant_payment', 'participant_payment_attempts', 'participant_payments')")
    # Six principals (control, ingest, executor, reader, api, delivery) times nine functions.
    assert rows == [{"pairs": 54, "allowed": 0}]
