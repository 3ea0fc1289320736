"""`symphony delivery` from its own principal's DSN (with and without the webhook key) and
`symphony webhooks list|deliveries|disable|enable|replay` with --json."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import box_of, hooked_participant, pay, retire
from tests.unit.test_service_dsn import principal_dsn

from symphony.cli import main
from symphony.db import DSN_VARIABLE, Database, DatabaseSettings, Principal
from symphony.webhooks import WebhookStore


def run(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> Any:
    assert main([*argv, "--json"]) == code
    return json.loads(capsys.readouterr().out)


async def _setup(settings: DatabaseSettings) -> tuple[Any, str]:
    async with await Database.open(settings) as db:
        hooked = await hooked_participant(db, Receiver(port=9))  # nothing listens on :9
        await pay(db, hooked.participant_id)
        key = base64.b64encode(box_of(db).key).decode()
        return hooked, key


async def _teardown(settings: DatabaseSettings, hooked: Any) -> None:
    async with await Database.open(settings) as db:
        await retire(db, hooked)


@pytest.fixture
def setup(isolated_settings: DatabaseSettings) -> Iterator[tuple[Any, str]]:
    made = asyncio.run(_setup(isolated_settings))
    yield made
    asyncio.run(_teardown(isolated_settings, made[0]))


def _own_dsn(monkeypatch: pytest.MonkeyPatch, settings: DatabaseSettings, home: Path) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for variable in DSN_VARIABLE.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SYMPHONY_HOME", str(home))
    monkeypatch.setenv("SYMPHONY_DELIVERY_DATABASE_URL",
                       principal_dsn(settings, Principal.DELIVERY))
    monkeypatch.setenv("SYMPHONY_WEBHOOK_ALLOW_LOOPBACK", "true")
    monkeypatch.setenv("SYMPHONY_DELIVERY_TOTAL_TIMEOUT", "3")


def test_delivery_runs_from_its_own_dsn_with_the_webhook_key(
    isolated_settings: DatabaseSettings, setup: tuple[Any, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _hooked, key = setup
    _own_dsn(monkeypatch, isolated_settings, tmp_path)
    monkeypatch.setenv("SYMPHONY_WEBHOOK_KEY", key)
    result = run(capsys, "delivery", "--once", "--worker-id", "cli-delivery")
    assert result["claimed"] >= 1 and result["retried"] >= 1  # the receiver is down
    assert list(tmp_path.iterdir()) == [], "nothing may be written to SYMPHONY_HOME"


def test_delivery_without_the_webhook_key_does_not_start(
    isolated_settings: DatabaseSettings, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _own_dsn(monkeypatch, isolated_settings, tmp_path)
    monkeypatch.delenv("SYMPHONY_WEBHOOK_KEY", raising=False)
    result = run(capsys, "delivery", "--once", code=2)
    assert result["error"]["code"] == "WEBHOOK_KEY_MISSING"


def test_a_bad_delivery_setting_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SYMPHONY_DELIVERY_LEASE_SECONDS", "10")  # shorter than a call may take
    result = run(capsys, "delivery", "--once", code=2)
    assert result["error"]["code"] == "INVALID_DELIVERY_CONFIG"


def test_operators_list_disable_enable_and_replay(
    isolated_settings: DatabaseSettings, setup: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    hooked, _key = setup
    monkeypatch.setenv("DATABASE_URL", isolated_settings.database_url.get_secret_value())  # type: ignore[union-attr]
    monkeypatch.setenv("SYMPHONY_HOME", str(isolated_settings.home))
    endpoint = str(hooked.endpoint_id)
    listed = run(capsys, "webhooks", "list")
    assert endpoint in {e["endpoint_id"] for e in listed}
    assert all("secret" not in k for e in listed for k in e)
    off = run(capsys, "webhooks", "disable", endpoint, "--reason", "receiver down")
    assert off["status"] == "DISABLED"
    assert endpoint in {e["endpoint_id"] for e in run(capsys, "webhooks", "list", "--status",
                                                      "disabled")}
    on = run(capsys, "webhooks", "enable", endpoint, "--reason", "fixed")
    assert on["status"] == "ENABLED"
    asyncio.run(_fan_out(isolated_settings))
    deliveries = run(capsys, "webhooks", "deliveries", endpoint)
    assert len(deliveries) >= 1
    replay = run(capsys, "webhooks", "replay", deliveries[0]["delivery_id"], "--by", "ops-jane",
                 "--reason", "customer asked")
    assert replay["result"] == "REPLAYED" and replay["action_id"] >= 1
    assert replay["replay_of"] == deliveries[0]["delivery_id"]
    assert replay["event_id"] == deliveries[0]["event_id"]
    # Recorded in the payment's history, with the operator's name and the reason.
    history = run(capsys, "history", replay["outbox_id"])
    assert [(a["action"], a["actor_label"], a["reason"]) for a in history["actions"]] == [
        ("REPLAY_WEBHOOK_DELIVERY", "ops-jane", "customer asked")]
    # Again while that replay waits: nothing queued, the waiting one named, exit 1.
    waiting = run(capsys, "webhooks", "replay", deliveries[0]["delivery_id"], "--by", "ops-jane",
                  code=1)
    assert waiting["result"] == "REPLAY_PENDING"
    assert waiting["delivery_id"] == replay["delivery_id"]
    unknown = run(capsys, "webhooks", "replay", "00000000-0000-0000-0000-000000000000",
                  "--by", "ops-jane", code=1)
    assert unknown["error"]["code"] == "UNKNOWN_WEBHOOK_DELIVERY"
    assert main(["webhooks", "disable", "not-a-uuid", "--reason", "x"]) == 2


async def _fan_out(settings: DatabaseSettings) -> None:
    async with await Database.open(settings) as db:
        await WebhookStore(db).fan_out(1000, 1000)
