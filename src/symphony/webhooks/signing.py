"""Standard Webhooks signatures (https://www.standardwebhooks.com/): what a receiver checks.

A signing secret is shown to its participant once, as `whsec_<base64 of 32 random bytes>`.
Each call carries three headers:

    webhook-id:        the event id (the same on every attempt and replay of the event)
    webhook-timestamp: the attempt's time, in whole seconds since the epoch
    webhook-signature: v1,<base64 of HMAC-SHA256(secret bytes, "<id>.<timestamp>.<body>")>

While a rotated secret's overlap window lasts, the header holds one `v1,` signature per live
secret, separated by spaces: a receiver accepts the call when any one of them matches a
secret it knows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Final

SECRET_PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 32
_SECRET_TEXT: Final = re.compile(r"whsec_([A-Za-z0-9+/]{43}=)")


def new_secret() -> bytes:
    """32 random bytes: the key of a new endpoint's signatures."""
    return secrets.token_bytes(SECRET_BYTES)


def secret_text(secret: bytes) -> str:
    """The secret as shown to its participant: `whsec_` + standard base64."""
    return SECRET_PREFIX + base64.b64encode(secret).decode("ascii")


def secret_bytes(text: str) -> bytes:
    """The bytes of a `whsec_...` secret; ValueError for any other text."""
    match = _SECRET_TEXT.fullmatch(text)
    if match is None:
        raise ValueError("a signing secret is whsec_ followed by 44 base64 characters")
    return base64.b64decode(match.group(1))


def signature(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of `body` as sent with `msg_id` at `timestamp`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(
    secrets_: Sequence[bytes], msg_id: str, timestamp: int, body: bytes
) -> str:
    """The webhook-signature header: one signature per live secret, newest first."""
    if not secrets_:
        raise ValueError("at least one secret is needed to sign")
    return " ".join(signature(s, msg_id, timestamp, body) for s in secrets_)


def webhook_headers(
    secrets_: Sequence[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one signed call."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, msg_id, timestamp, body),
        "content-type": "application/json",
    }
