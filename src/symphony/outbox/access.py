"""Who may knock at the front door: participants and the API tokens that speak for them.

A token is shown once, when it is issued: `sy_<pt|op>_<token_id as 32 hex>_<secret>`, the
secret being 32 random bytes in base64url. The database keeps a random salt and
sha256(salt || secret) only. Both are computed here, so the plain secret never travels to the
database, where a statement log (slow-query logging records bind parameters) could keep it;
what travels is a salted hash that opens nothing over HTTP. The hash covers the secret's
text exactly as shown, so no other spelling of the same bytes is accepted.

A secret of 256 random bits needs no key stretching: nobody can guess it, however fast the
hash. Verification reads the token's salt, hashes, and asks the database for the token whose
hash matches; a revoked token, or one of a revoked participant, matches nothing.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from symphony.db import Database, Role

_SALT_BYTES = 16
_SECRET_BYTES = 32
_PREFIX = {"PARTICIPANT": "pt", "OPERATOR": "op"}
_TOKEN = re.compile(r"^sy_(pt|op)_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")
# A bound well past the format's 83 characters: longer text is not looked at at all.
_MAX_TOKEN_TEXT = 128


class TokenKind(StrEnum):
    """Whom a token speaks for: one participant, or the operator."""

    PARTICIPANT = "PARTICIPANT"
    OPERATOR = "OPERATOR"


class TokenScope(StrEnum):
    """What an operator token may do: VIEWER reads, OPERATOR also acts. Fixed at issue;
    operator tokens issued before scopes existed are VIEWER (least privilege)."""

    VIEWER = "VIEWER"
    OPERATOR = "OPERATOR"


@dataclass(frozen=True, slots=True)
class Participant:
    participant_id: str
    display_name: str
    status: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token. `token` is the only copy of the secret: show it once."""

    token_id: UUID
    kind: TokenKind
    participant_id: str | None
    label: str
    token: str = field(repr=False)
    created_at: datetime
    scope: TokenScope | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated token: what the API knows about whoever holds it."""

    token_id: UUID
    kind: TokenKind
    participant_id: str | None
    # Who the caller is, not which caller: left out of equality.
    scope: TokenScope | None = field(default=None, compare=False)
    label: str = field(default="", compare=False)
    # The salted hash the database keeps (it opens nothing over HTTP): an operator action
    # hands it back to the database, which verifies the acting token itself.
    credential: bytes = field(default=b"", repr=False, compare=False)

    @property
    def may_act(self) -> bool:
        """Whether this caller holds an operator token of OPERATOR scope."""
        return self.kind == TokenKind.OPERATOR and self.scope == TokenScope.OPERATOR


class Authenticator(Protocol):
    """Turns a presented token into its caller, or None when it is not (or no longer) valid.
    `AccessStore` is the one that asks the database; the API wraps it in a cache."""

    async def authenticate(self, token: str) -> Caller | None: ...


def _secret_hash(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


def _participant(row: dict[str, Any]) -> Participant:
    return Participant(
        participant_id=str(row["participant_id"]),
        display_name=str(row["display_name"]),
        status=str(row["status"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


class AccessStore:
    """Participants and tokens. Writes run as the control role, verification as readonly."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_participant(self, participant_id: str, display_name: str) -> Participant:
        """Register an ACTIVE participant; PARTICIPANT_EXISTS if the id is taken."""
        row = await self.db.fetch_one(
            Role.CONTROL, "add_participant",
            {"participant_id": participant_id, "display_name": display_name},
        )
        assert row is not None  # the function returns the new row or raises
        return _participant(row)

    async def list_participants(self) -> list[Participant]:
        rows = await self.db.fetch_all(Role.CONTROL, "list_participants")
        return [_participant(r) for r in rows]

    async def revoke_participant(self, participant_id: str) -> Participant:
        """Revoke the participant and every token of it, at once; repeating is harmless.

        Its payments already accepted are not touched: accepted payments are obligations and
        go on (dispatched, retried, repaired) until each is settled or an operator cancels
        it. Revoking stops new payments and the participant's tokens only."""
        row = await self.db.fetch_one(
            Role.CONTROL, "revoke_participant", {"participant_id": participant_id}
        )
        assert row is not None
        return _participant(row)

    async def pending_payment_count(self, participant_id: str) -> int:
        """How many of the participant's payments are still pending (queued, retrying,
        leased or under review): after a revocation, those that still go on."""
        row = await self.db.fetch_one(
            Role.CONTROL, "participant_pending_count", {"participant_id": participant_id}
        )
        return int(row["pending"]) if row else 0

    async def issue_token(
        self,
        kind: TokenKind,
        *,
        participant_id: str | None = None,
        label: str = "",
        scope: TokenScope | None = None,
    ) -> IssuedToken:
        """A new token; the returned `token` text is not stored anywhere and cannot be shown
        again. An operator token is a VIEWER unless `scope` says OPERATOR; a participant
        token has no scope."""
        kind = TokenKind(kind)
        if kind == TokenKind.OPERATOR:
            scope = TokenScope(scope) if scope is not None else TokenScope.VIEWER
        token_id = uuid.uuid4()
        secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
        salt = secrets.token_bytes(_SALT_BYTES)
        row = await self.db.fetch_one(
            Role.CONTROL, "issue_api_token",
            {
                "token_id": token_id,
                "kind": kind.value,
                "participant_id": participant_id,
                "label": label,
                "secret_salt": salt,
                "secret_hash": _secret_hash(salt, secret),
                "scope": None if scope is None else TokenScope(scope).value,
            },
        )
        assert row is not None
        return IssuedToken(
            token_id=row["token_id"],
            kind=TokenKind(row["kind"]),
            participant_id=row["participant_id"],
            label=str(row["label"]),
            token=f"sy_{_PREFIX[kind.value]}_{token_id.hex}_{secret}",
            created_at=row["created_at"],
            scope=None if row["scope"] is None else TokenScope(row["scope"]),
        )

    async def revoke_token(self, token_id: UUID) -> None:
        """Revoke a token (UNKNOWN_TOKEN if there is none); repeating is harmless."""
        await self.db.fetch_one(Role.CONTROL, "revoke_api_token", {"token_id": token_id})

    async def authenticate(self, token: str) -> Caller | None:
        """The caller a token speaks for, or None: malformed, unknown, revoked, or of a
        revoked participant. Asks the database every time (a revocation counts at once)."""
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_TEXT:
            return None
        match = _TOKEN.match(token)
        if match is None:
            return None
        prefix, token_hex, secret = match.groups()
        token_id = UUID(hex=token_hex)
        async with self.db.transaction(Role.READONLY, label="authenticate") as tx:
            salt_row = await tx.fetch_one("api_token_salt", {"token_id": token_id})
            salt = None if salt_row is None else salt_row["secret_salt"]
            if salt is None:
                return None
            credential = _secret_hash(bytes(salt), secret)
            row = await tx.fetch_one(
                "authenticate_api_token", {"token_id": token_id, "secret_hash": credential},
            )
        if row is None:
            return None
        kind = TokenKind(row["kind"])
        # The prefix is part of what was shown; a token re-labelled by hand does not pass.
        if _PREFIX[kind.value] != prefix:
            return None
        return Caller(
            token_id=row["token_id"],
            kind=kind,
            participant_id=row["participant_id"],
            scope=None if row["scope"] is None else TokenScope(row["scope"]),
            label=str(row["label"]),
            credential=credential,
        )
