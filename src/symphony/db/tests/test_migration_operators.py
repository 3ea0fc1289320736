"""The operators' migration on a database in use: every operator token issued before it
becomes a VIEWER (least privilege: nobody chose to let it act), participant tokens get no
scope, and every token still authenticates as what it was."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from symphony.db import Database, DatabaseSettings, Role, migrate, test_only
from symphony.db.migration import load_migrations
from symphony.outbox import AccessStore, TokenKind, TokenScope

SALT = "'\\x00112233445566778899aabbccddeeff'::bytea"


def _operators_migration() -> int:
    """The number of the migration that adds scopes (its position, counted from 1)."""
    names = [m.name for m in load_migrations()]
    return next(i for i, name in enumerate(names, start=1) if name.endswith("_operators.sql"))


@pytest.fixture
async def database_before(
    server_admin_dsn: str, symphony_home: Path
) -> AsyncIterator[tuple[str, Database]]:
    name = f"symphony_migops_{uuid.uuid4().hex[:10]}"
    dsn = await test_only.create_database(server_admin_dsn, name)
    await migrate(dsn, up_to=_operators_migration() - 1)
    db = await Database.open(
        DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(symphony_home)),
        require_migrated=False,
    )
    try:
        yield dsn, db
    finally:
        await db.close()
        await test_only.drop_database(server_admin_dsn, name)


async def test_existing_operator_tokens_become_viewers(
    database_before: tuple[str, Database],
) -> None:
    dsn, db = database_before
    access = AccessStore(db)
    await test_only.execute_as_role(
        db, Role.CONTROL, "SELECT * FROM symphony.add_participant('old-member', 'Old member')")
    # Tokens as the code before the migration issued them (six arguments, no scope); their
    # secrets are hashed by the same rule, so they can be presented afterwards.
    tokens = {}
    for kind, participant in (("OPERATOR", None), ("PARTICIPANT", "old-member")):
        token_id = uuid.uuid4()
        secret = "s" * 43
        await test_only.execute_as_role(
            db, Role.CONTROL,
            "SELECT * FROM symphony.issue_api_token(%s, %s, %s, 'before', " + SALT
            + ", sha256(" + SALT + " || convert_to(%s, 'SQL_ASCII')))",
            (token_id, kind, participant, secret))
        prefix = "op" if kind == "OPERATOR" else "pt"
        tokens[kind] = (token_id, f"sy_{prefix}_{token_id.hex}_{secret}")

    await migrate(dsn)

    rows = await test_only.query_no_role(
        dsn, "SELECT kind, scope FROM symphony.api_tokens ORDER BY kind")
    assert rows == [{"kind": "OPERATOR", "scope": "VIEWER"},
                    {"kind": "PARTICIPANT", "scope": None}]
    operator = await access.authenticate(tokens["OPERATOR"][1])
    assert operator is not None and operator.scope == TokenScope.VIEWER
    assert not operator.may_act
    member = await access.authenticate(tokens["PARTICIPANT"][1])
    assert member is not None and member.participant_id == "old-member"
    assert member.kind == TokenKind.PARTICIPANT and member.scope is None
    # New tokens choose their scope; the forward-only rule still holds after the backfill.
    fresh = await access.issue_token(TokenKind.OPERATOR, scope=TokenScope.OPERATOR)
    assert fresh.scope == TokenScope.OPERATOR
    triggers = await test_only.query_no_role(
        dsn, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'api_tokens_forward_only'")
    assert triggers == [{"tgenabled": "A"}]
