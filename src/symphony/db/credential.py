"""Passwords of the login principals: generated once, kept in a file only its owner can read.

Provisioning sets each principal's password as a SCRAM-SHA-256 verifier computed on the
client, so the plain password never travels to the server nor lands in its logs. The file is
written atomically with mode 0600 and keyed by server, because roles are cluster-wide.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from symphony.db.error import ConfigurationError, translate
from symphony.db.role import Principal


@dataclass(frozen=True, slots=True)
class CredentialStore:
    """A JSON file `{"servers": {server_key: {principal: password}}}` with mode 0600."""

    path: Path

    def load(self, server_key: str) -> dict[Principal, str]:
        data = self._read()
        entry = data.get("servers", {}).get(server_key, {})
        return {Principal(name): pw for name, pw in entry.items() if name in _PRINCIPAL_NAMES}

    def save(self, server_key: str, passwords: dict[Principal, str]) -> None:
        data = self._read()
        data.setdefault("servers", {})[server_key] = {p.value: pw for p, pw in passwords.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)

    def _read(self) -> dict[str, dict[str, dict[str, str]]]:
        if not self.path.exists():
            return {}
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise ConfigurationError(
                f"{self.path} holds passwords but can be read by others (mode {mode:o}); "
                "run: chmod 600 on it",
                code="CREDENTIALS_FILE_EXPOSED",
            )
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"{self.path} is not a readable credentials file", code="CREDENTIALS_FILE_INVALID"
            ) from exc
        if not isinstance(data, dict):
            raise ConfigurationError(
                f"{self.path} is not a readable credentials file", code="CREDENTIALS_FILE_INVALID"
            )
        return data


_PRINCIPAL_NAMES = frozenset(p.value for p in Principal)


async def provision_principals(
    admin_dsn: str, store: CredentialStore, server_key: str
) -> dict[Principal, str]:
    """Make sure every principal has a password the server knows and the store remembers.

    Passwords already in the store are re-applied (idempotent, and repairs a server that was
    re-created); missing ones are generated.
    """
    passwords = store.load(server_key)
    for principal in Principal:
        passwords.setdefault(principal, secrets.token_urlsafe(32))
    try:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
            for principal, password in passwords.items():
                verifier = conn.pgconn.encrypt_password(
                    password.encode(), principal.value.encode(), b"scram-sha-256"
                )
                await conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(principal.value), sql.Literal(verifier.decode())
                    )
                )
    except (psycopg.Error, OSError) as exc:
        raise translate(exc, "provision-principals") from exc
    store.save(server_key, passwords)
    return passwords
