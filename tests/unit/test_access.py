"""Participants and API tokens: registration, revocation that takes effect at once, tokens
that are stored as salted hashes only, and authentication that never raises on bad text."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from tests.support.database import unique
from tests.support.outbox import instruction, register_participant

from symphony.db import (
    ConflictError,
    Database,
    InvalidRequestError,
    InvariantViolationError,
    NotFoundError,
    ParticipantNotActiveError,
    test_only,
)
from symphony.outbox import AccessStore, Caller, OutboxStore, TokenKind

# -- participants ----------------------------------------------------------------------------


async def test_added_participant_is_active_and_listed(db: Database) -> None:
    access = AccessStore(db)
    pid = unique("bank")
    added = await access.add_participant(pid, "Bank of Tests")
    assert (added.participant_id, added.display_name, added.status) == (
        pid, "Bank of Tests", "ACTIVE")
    assert added.revoked_at is None
    assert added in await access.list_participants()


async def test_a_participant_id_is_registered_once(db: Database) -> None:
    access = AccessStore(db)
    pid = await register_participant(db)
    with pytest.raises(ConflictError) as info:
        await access.add_participant(pid, "again")
    assert (info.value.sqlstate, info.value.code) == ("SY033", "PARTICIPANT_EXISTS")


@pytest.mark.parametrize(
    ("participant_id", "display_name", "sqlstate", "code"),
    [
        ("", "name", "SY013", "INVALID_PARTICIPANT_ID"),
        ("has space", "name", "SY013", "INVALID_PARTICIPANT_ID"),
        ("p" * 65, "name", "SY013", "INVALID_PARTICIPANT_ID"),
        ("ok-id", "", "SY035", "INVALID_DISPLAY_NAME"),
        ("ok-id", "n" * 201, "SY035", "INVALID_DISPLAY_NAME"),
        ("ok-id", "Bank\u202eknaB", "SY035", "INVALID_DISPLAY_NAME"),
        ("ok-id", "line\nbreak", "SY035", "INVALID_DISPLAY_NAME"),
    ],
)
async def test_invalid_participant_is_refused(
    db: Database, participant_id: str, display_name: str, sqlstate: str, code: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await AccessStore(db).add_participant(participant_id, display_name)
    assert (info.value.sqlstate, info.value.code) == (sqlstate, code)


async def test_unregistered_participant_cannot_enqueue(db: Database, admin_dsn: str) -> None:
    bad = instruction(participant_id=unique("nobody"))
    with pytest.raises(ParticipantNotActiveError) as info:
        await OutboxStore(db).enqueue(bad)
    assert (info.value.sqlstate, info.value.code) == ("SY030", "PARTICIPANT_NOT_ACTIVE")
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT count(*) AS n FROM symphony.payment_instruction_registry "
                   " WHERE instruction_id = %s", (bad.instruction_id,))
    assert rows == [{"n": 0}]


async def test_revocation_stops_enqueue_at_once(db: Database) -> None:
    access, store = AccessStore(db), OutboxStore(db)
    pid = await register_participant(db)
    first = instruction(participant_id=pid)
    assert (await store.enqueue(first)).created
    revoked = await access.revoke_participant(pid)
    assert revoked.status == "REVOKED" and revoked.revoked_at is not None
    for attempt in (instruction(participant_id=pid), first):  # new work, and a replay
        with pytest.raises(ParticipantNotActiveError) as info:
            await store.enqueue(attempt)
        assert info.value.code == "PARTICIPANT_NOT_ACTIVE"
    # Revoking again changes nothing and is not an error.
    again = await access.revoke_participant(pid)
    assert again == revoked


async def test_revoking_an_unknown_participant_is_refused(db: Database) -> None:
    with pytest.raises(NotFoundError) as info:
        await AccessStore(db).revoke_participant(unique("ghost"))
    assert (info.value.sqlstate, info.value.code) == ("SY034", "UNKNOWN_PARTICIPANT")


@pytest.mark.parametrize(
    ("statement", "sqlstate", "code"),
    [
        ("UPDATE symphony.participants SET status = 'ACTIVE', revoked_at = NULL "
         " WHERE participant_id = %s", "SY038", "ACCESS_FORWARD_ONLY"),
        ("UPDATE symphony.participants SET participant_id = participant_id || 'x' "
         " WHERE participant_id = %s", "SY038", "ACCESS_FORWARD_ONLY"),
        ("DELETE FROM symphony.participants WHERE participant_id = %s", "P0001",
         "HISTORY_IS_APPEND_ONLY"),
    ],
    ids=["reactivate", "rename", "delete"],
)
async def test_even_the_owner_cannot_undo_a_revocation(
    db: Database, statement: str, sqlstate: str, code: str
) -> None:
    pid = await register_participant(db)
    await AccessStore(db).revoke_participant(pid)
    with pytest.raises(InvariantViolationError) as info:
        await test_only.query_as_owner(db.endpoint.admin_dsn, statement, (pid,))
    assert (info.value.sqlstate, info.value.code) == (sqlstate, code)


async def test_owner_cannot_truncate_participants(db: Database) -> None:
    with pytest.raises(InvariantViolationError) as info:
        await test_only.query_as_owner(
            db.endpoint.admin_dsn, "TRUNCATE symphony.participants CASCADE")
    assert info.value.sqlstate == "P0001"


# -- tokens ----------------------------------------------------------------------------------


async def test_participant_token_authenticates_as_its_participant(db: Database) -> None:
    access = AccessStore(db)
    pid = await register_participant(db)
    issued = await access.issue_token(TokenKind.PARTICIPANT, participant_id=pid, label="ci")
    assert issued.token.startswith(f"sy_pt_{issued.token_id.hex}_")
    assert (issued.kind, issued.participant_id, issued.label) == (TokenKind.PARTICIPANT, pid, "ci")
    assert await access.authenticate(issued.token) == Caller(
        token_id=issued.token_id, kind=TokenKind.PARTICIPANT, participant_id=pid)


async def test_operator_token_authenticates_without_a_participant(db: Database) -> None:
    access = AccessStore(db)
    issued = await access.issue_token(TokenKind.OPERATOR, label="ops")
    assert issued.token.startswith(f"sy_op_{issued.token_id.hex}_")
    caller = await access.authenticate(issued.token)
    assert caller == Caller(issued.token_id, TokenKind.OPERATOR, None)


async def test_issued_token_does_not_show_in_its_repr(db: Database) -> None:
    issued = await AccessStore(db).issue_token(TokenKind.OPERATOR)
    secret = issued.token.rsplit("_", 1)[-1]
    assert issued.token not in repr(issued) and secret not in repr(issued)
    assert secret not in str(issued)


async def test_the_database_never_holds_the_token_in_clear(db: Database, admin_dsn: str) -> None:
    issued = await AccessStore(db).issue_token(TokenKind.OPERATOR, label="clear-check")
    secret = issued.token[len("sy_op_") + 33:]
    assert len(secret) == 43
    rows = await test_only.query_no_role(
        admin_dsn,
        "SELECT t::text AS as_text, encode(secret_salt, 'escape') AS salt_escaped, "
        "       encode(secret_hash, 'escape') AS hash_escaped, "
        "       encode(secret_salt || secret_hash, 'hex') AS blobs_hex "
        "  FROM symphony.api_tokens t WHERE token_id = %s",
        (issued.token_id,),
    )
    [row] = rows
    stored = " ".join(str(v) for v in row.values())
    # Not the token, not its secret, not any 8 characters of the secret, not its bytes in hex.
    assert issued.token not in stored
    for start in range(len(secret) - 8 + 1):
        assert secret[start:start + 8] not in stored
    assert secret.encode().hex() not in row["blobs_hex"]
    # And not an unsalted hash of it either (a table of those would be a rainbow table away).
    assert hashlib.sha256(secret.encode()).hexdigest() not in row["blobs_hex"]


async def test_no_token_text_is_logged_by_the_store(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    access = AccessStore(db)
    with caplog.at_level("DEBUG"):
        issued = await access.issue_token(TokenKind.OPERATOR)
        await access.authenticate(issued.token)
        await access.authenticate(issued.token[:-1] + "A")
    secret = issued.token.rsplit("_", 1)[-1]
    assert secret not in caplog.text


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # wrong secret
        lambda t: t.replace("sy_op_", "sy_pt_"),                # wrong kind prefix
        lambda t: t + "x",                                      # too long a secret
        lambda t: t[:-1],                                       # too short a secret
        lambda t: "sy_op_" + uuid.uuid4().hex + t[-44:],        # unknown token id
        lambda t: "",
        lambda t: "Bearer " + t,
        lambda t: t.upper(),
        lambda t: "sy_op_" + "z" * 32 + t[-44:],                # not hex
        lambda t: t + "\x00",
        lambda t: "é" * 10_000,
    ],
    ids=["secret", "prefix", "long", "short", "unknown-id", "empty", "bearer", "upper",
         "not-hex", "nul", "huge"],
)
async def test_bad_token_text_authenticates_nobody(db: Database, mangle: object) -> None:
    access = AccessStore(db)
    issued = await access.issue_token(TokenKind.OPERATOR)
    assert callable(mangle)
    assert await access.authenticate(mangle(issued.token)) is None
    assert await access.authenticate(issued.token) is not None


async def test_revoked_token_authenticates_nobody_at_once(db: Database) -> None:
    access = AccessStore(db)
    issued = await access.issue_token(TokenKind.OPERATOR)
    assert await access.authenticate(issued.token) is not None
    await access.revoke_token(issued.token_id)
    assert await access.authenticate(issued.token) is None
    await access.revoke_token(issued.token_id)  # again: harmless


async def test_revoking_an_unknown_token_is_refused(db: Database) -> None:
    with pytest.raises(NotFoundError) as info:
        await AccessStore(db).revoke_token(uuid.uuid4())
    assert (info.value.sqlstate, info.value.code) == ("SY037", "UNKNOWN_TOKEN")


async def test_revoking_a_participant_revokes_its_tokens(db: Database, admin_dsn: str) -> None:
    access = AccessStore(db)
    pid = await register_participant(db)
    tokens = [await access.issue_token(TokenKind.PARTICIPANT, participant_id=pid)
              for _ in range(2)]
    other = await access.issue_token(
        TokenKind.PARTICIPANT, participant_id=await register_participant(db))
    await access.revoke_participant(pid)
    for issued in tokens:
        assert await access.authenticate(issued.token) is None
    assert await access.authenticate(other.token) is not None
    rows = await test_only.query_no_role(
        admin_dsn, "SELECT count(*) AS n FROM symphony.api_tokens "
                   " WHERE participant_id = %s AND revoked_at IS NOT NULL", (pid,))
    assert rows == [{"n": 2}]


@pytest.mark.parametrize(
    ("kind", "with_participant", "label"),
    [
        (TokenKind.OPERATOR, True, ""),
        (TokenKind.PARTICIPANT, False, ""),
        (TokenKind.OPERATOR, False, "l" * 201),
        (TokenKind.OPERATOR, False, "tab\there"),
    ],
    ids=["operator-with-participant", "participant-without", "long-label", "control-label"],
)
async def test_malformed_token_request_is_refused(
    db: Database, kind: TokenKind, with_participant: bool, label: str
) -> None:
    pid = await register_participant(db) if with_participant else None
    with pytest.raises(InvalidRequestError) as info:
        await AccessStore(db).issue_token(kind, participant_id=pid, label=label)
    assert (info.value.sqlstate, info.value.code) == ("SY036", "INVALID_TOKEN_REQUEST")


async def test_no_token_for_an_unknown_or_revoked_participant(db: Database) -> None:
    access = AccessStore(db)
    with pytest.raises(NotFoundError) as unknown:
        await access.issue_token(TokenKind.PARTICIPANT, participant_id=unique("ghost"))
    assert unknown.value.code == "UNKNOWN_PARTICIPANT"
    pid = await register_participant(db)
    await access.revoke_participant(pid)
    with pytest.raises(ParticipantNotActiveError) as revoked:
        await access.issue_token(TokenKind.PARTICIPANT, participant_id=pid)
    assert revoked.value.code == "PARTICIPANT_NOT_ACTIVE"


async def test_token_rows_can_only_be_revoked(db: Database) -> None:
    issued = await AccessStore(db).issue_token(TokenKind.OPERATOR)
    with pytest.raises(InvariantViolationError) as info:
        await test_only.query_as_owner(
            db.endpoint.admin_dsn,
            "UPDATE symphony.api_tokens SET secret_hash = sha256('x') WHERE token_id = %s",
            (issued.token_id,))
    assert info.value.sqlstate == "SY038"
    with pytest.raises(InvariantViolationError) as deleted:
        await test_only.query_as_owner(
            db.endpoint.admin_dsn,
            "DELETE FROM symphony.api_tokens WHERE token_id = %s", (issued.token_id,))
    assert deleted.value.sqlstate == "P0001"
