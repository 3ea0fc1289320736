"""Signing secrets at rest: sealed with AES-256-GCM under a key the deployment provides.

The database keeps only `nonce || ciphertext || tag` (60 bytes for a 32-byte secret) and the
key's fingerprint (16 hex digits of SHA-256 of the key): a dump or a backup of the table opens
nothing, and the plain secret never travels to the server (where a statement log could keep
it). The associated data binds a sealed secret to its endpoint, so a ciphertext copied onto
another endpoint's row does not open.

The key (`SYMPHONY_WEBHOOK_KEY`: 32 bytes in base64) is needed by the API (which seals new
secrets) and by the delivery service (which opens them to sign). Unset, a process in the
admin or embedded mode (it manages `SYMPHONY_HOME`, like the principals' credentials) uses a
key file `webhook.key` there, created (mode 0600) on first use: what the embedded default and
a single host need. A service started with only its own principal's DSN writes nothing to
`SYMPHONY_HOME`: it needs `SYMPHONY_WEBHOOK_KEY` (the API then answers 503
`webhook_key_missing` to a request that must seal a secret; the delivery service does not
start). Deployments that run the API and the delivery service apart give both the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from symphony.db import ConfigurationError, SymphonyError

KEY_VARIABLE: Final = "SYMPHONY_WEBHOOK_KEY"
KEY_FILE_NAME: Final = "webhook.key"
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12


class SecretUnavailableError(SymphonyError):
    """A sealed secret does not open with this deployment's key."""

    default_code = "WEBHOOK_SECRET_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class SecretBox:
    """Seals and opens endpoint secrets with one key."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != _KEY_BYTES:
            raise ConfigurationError(
                f"{KEY_VARIABLE} must be {_KEY_BYTES} bytes in base64", code="INVALID_WEBHOOK_KEY"
            )

    @property
    def key_id(self) -> str:
        """The key's fingerprint: names the key without revealing it."""
        return hashlib.sha256(b"symphony-webhook-key:" + self.key).hexdigest()[:16]

    def seal(self, secret: bytes, participant_id: str, endpoint_id: UUID) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(self.key).encrypt(nonce, secret, _aad(participant_id, endpoint_id))
        return nonce + sealed

    def open(
        self, sealed: bytes, key_id: str, participant_id: str, endpoint_id: UUID
    ) -> bytes:
        if key_id != self.key_id:
            raise SecretUnavailableError(
                "the endpoint's secret was sealed with another webhook key (SYMPHONY_WEBHOOK_KEY "
                "differs between the API and the delivery service)",
                code="WEBHOOK_KEY_MISMATCH",
            )
        try:
            return AESGCM(self.key).decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _aad(participant_id, endpoint_id)
            )
        except InvalidTag:
            raise SecretUnavailableError(
                "the endpoint's sealed secret does not open (changed or moved)",
                code="WEBHOOK_SECRET_CORRUPT",
            ) from None

    @classmethod
    def generate(cls) -> SecretBox:
        return cls(secrets.token_bytes(_KEY_BYTES))


def _aad(participant_id: str, endpoint_id: UUID) -> bytes:
    return f"symphony-webhook-secret:{participant_id}:{endpoint_id}".encode()


def configured_secret_box(
    home: Path, *, manages_home: bool, environ: Mapping[str, str] | None = None
) -> SecretBox | None:
    """`SYMPHONY_WEBHOOK_KEY`; else, for a process that manages `home` (admin or embedded
    mode), the key file there (created); else None: no key is configured."""
    env = os.environ if environ is None else environ
    if env.get(KEY_VARIABLE):
        return load_secret_box(home, environ=env)
    return load_secret_box(home, environ=env) if manages_home else None


def load_secret_box(home: Path, *, environ: Mapping[str, str] | None = None) -> SecretBox:
    """The deployment's box: `SYMPHONY_WEBHOOK_KEY`, else `<home>/webhook.key` (created)."""
    env = os.environ if environ is None else environ
    text = env.get(KEY_VARIABLE)
    if text:
        return SecretBox(_decode_key(text))
    path = home / KEY_FILE_NAME
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigurationError(
                f"{path} holds the webhook key but can be read by others (mode {mode:o}); "
                "run: chmod 600 on it",
                code="WEBHOOK_KEY_FILE_EXPOSED",
            )
        return SecretBox(_decode_key(path.read_text("ascii").strip()))
    box = SecretBox.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(base64.b64encode(box.key).decode("ascii") + "\n")
    try:
        # Two processes starting at once: the first file wins, both use it.
        os.link(tmp, path)
    except FileExistsError:
        os.unlink(tmp)
        return load_secret_box(home, environ={})
    os.unlink(tmp)
    return box


def _decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            f"{KEY_VARIABLE} must be {_KEY_BYTES} bytes in base64", code="INVALID_WEBHOOK_KEY"
        ) from None
    if len(key) != _KEY_BYTES:
        raise ConfigurationError(
            f"{KEY_VARIABLE} must be {_KEY_BYTES} bytes in base64", code="INVALID_WEBHOOK_KEY"
        )
    return key
