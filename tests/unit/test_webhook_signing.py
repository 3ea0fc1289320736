"""The product's signer against the Standard Webhooks check written in the tests, and the
README's verification example run as written."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.webhook_receiver import SignatureInvalid, verify_standard_webhook

from symphony.webhooks.signing import new_secret, secret_bytes, secret_text, webhook_headers

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_verify() -> Any:
    text = README.read_text("utf-8")
    section = text[text.index("## Webhooks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # the README's own example, as a reader would paste it
    return namespace["verify"]


def test_secrets_are_whsec_base64_of_32_bytes() -> None:
    key = new_secret()
    text = secret_text(key)
    assert text.startswith("whsec_") and secret_bytes(text) == key
    for bad in ("whsec_", "sk_" + text[6:], text + "A", text.replace("whsec_", "WHSEC_")):
        with pytest.raises(ValueError):
            secret_bytes(bad)


def test_every_signature_of_a_rotation_verifies_and_only_those() -> None:
    old, new = new_secret(), new_secret()
    body = '{"id":"evt_1","data":{"note":"caf\u00e9"}}'.encode()
    headers = webhook_headers([new, old], "evt_1", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for key in (old, new):
        verify_standard_webhook(secret_text(key), headers, body)
    with pytest.raises(SignatureInvalid):
        verify_standard_webhook(secret_text(new_secret()), headers, body)
    with pytest.raises(SignatureInvalid):
        verify_standard_webhook(secret_text(old), {**headers, "webhook-id": "evt_2"}, body)


def test_the_readme_example_verifies_what_the_product_signs() -> None:
    verify = readme_verify()
    key = new_secret()
    body = b'{"id":"evt_9","type":"payment.created"}'
    headers = webhook_headers([key], "evt_9", int(time.time()), body)
    assert verify(secret_text(key), headers, body)
    assert not verify(secret_text(key), headers, body + b" ")
    assert not verify(secret_text(new_secret()), headers, body)
    stale = webhook_headers([key], "evt_9", int(time.time()) - 3600, body)
    assert not verify(secret_text(key), stale, body)
