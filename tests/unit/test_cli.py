"""The `symphony` command, run in-process through `main([...])` against the test database.

Every command reads `DATABASE_URL` and `SYMPHONY_HOME` like a real invocation. The home is
always the session's (roles and their passwords are cluster-wide). Commands that claim or
audit run on a database of their own, since the session database holds other tests' items.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.database import DatabaseFactory, unique

from symphony.cli import main
from symphony.db import Database, DatabaseSettings, test_only
from symphony.outbox import AccessStore, OutboxStore
from symphony.services.rail_sim import RailSimConfig, RailSimServer


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, db_settings: DatabaseSettings, symphony_home: Path
) -> DatabaseSettings:
    """The CLI's environment pointed at the session database."""
    return _point_at(monkeypatch, db_settings, symphony_home)


@pytest.fixture
def own_db(
    monkeypatch: pytest.MonkeyPatch, make_database: DatabaseFactory, symphony_home: Path
) -> DatabaseSettings:
    """The CLI's environment pointed at a database of this test's own."""
    return _point_at(monkeypatch, make_database(), symphony_home)


def _point_at(
    monkeypatch: pytest.MonkeyPatch, settings: DatabaseSettings, home: Path
) -> DatabaseSettings:
    assert settings.database_url is not None
    monkeypatch.setenv("DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("SYMPHONY_HOME", str(home))
    for name in ("ZOMBIE_THRESHOLD_SECONDS", "SYMPHONY_RAIL_URL", "SYMPHONY_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    return settings


@pytest.fixture(scope="module")
def rail_url() -> Iterator[str]:
    """The rail simulator on its own loop and thread: `main()` runs its own event loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="rail-sim", daemon=True)
    thread.start()
    server = RailSimServer(RailSimConfig(port=0))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server.url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """Run a command with --json; its exit code and the one JSON document it printed."""
    code = main([*argv, "--json"])
    out = capsys.readouterr().out.strip()
    return code, json.loads(out)


def enqueue_args(instruction_id: str, key: str, **overrides: str) -> list[str]:
    values = {"participant": "participant-cli", "rail": "RTP", "amount": "10.00",
              "currency": "USD", "destination": "ACCT-77", **overrides}
    args = ["enqueue", "--instruction-id", instruction_id, "--idempotency-key", key]
    for name, value in values.items():
        args += [f"--{name}", value]
    return args


# -- migrate, enqueue, status ----------------------------------------------------------------


def test_migrate_on_a_migrated_database_applies_nothing(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = run_json(capsys, "migrate")
    assert code == 0
    assert report["applied"] == []
    assert report["already_applied"] and report["latest"] == report["already_applied"][-1]
    assert report["provisioned"] is True  # SYMPHONY_ENV=test: the credentials file is used


@pytest.mark.parametrize("argv", [["migrate"], ["migrate", "--no-provision"]])
def test_production_migration_job_leaves_principal_passwords_alone(
    cli_env: DatabaseSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], argv: list[str],
) -> None:
    """A migration job with an empty home must not give every principal a new password."""
    monkeypatch.setenv("SYMPHONY_ENV", "production")
    monkeypatch.setenv("SYMPHONY_HOME", str(tmp_path))
    code, report = run_json(capsys, *argv)
    assert code == 0
    assert report["provisioned"] is False
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_environment_is_a_configuration_error(
    cli_env: DatabaseSettings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SYMPHONY_ENV", "staging")
    code, report = run_json(capsys, "migrate")
    assert code == 2 and report["error"]["code"] == "INVALID_ENVIRONMENT"


def test_enqueue_is_idempotent(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = enqueue_args(unique("cli"), unique("key"))
    code, first = run_json(capsys, *args)
    assert code == 0 and first["created"] is True and first["state"] == "PENDING"
    code, again = run_json(capsys, *args)
    assert code == 0 and again["created"] is False
    assert again["outbox_id"] == first["outbox_id"]
    assert again["sequence_id"] == first["sequence_id"]


def test_enqueue_accepts_a_whole_payload(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = json.dumps({"amount": "3.14", "currency": "GBP", "destination": "ACCT-1",
                          "reference_note": "rent"})
    code, result = run_json(
        capsys, "enqueue", "--instruction-id", unique("cli"), "--idempotency-key",
        unique("key"), "--participant", "participant-cli", "--rail", "FPS", "--payload", payload,
    )
    assert code == 0 and result["created"] is True


def test_reused_key_with_another_request_is_refused(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    instruction, key = unique("cli"), unique("key")
    assert run_json(capsys, *enqueue_args(instruction, key))[0] == 0
    code, body = run_json(capsys, *enqueue_args(instruction, key, amount="11.00"))
    assert code == 1
    assert body["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert body["error"]["incident_id"]


def test_invalid_amount_is_a_usage_error_with_its_code(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(enqueue_args(unique("cli"), unique("key"), amount="-1"))
    err = capsys.readouterr().err
    assert code == 2
    assert "error [INVALID_AMOUNT]:" in err and "(incident " in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--payload", "{not json"], "INVALID_PAYLOAD_JSON"),
        (["--payload", "[1, 2]"], "INVALID_PAYLOAD_JSON"),
        # A member named twice: a reader taking the first amount would see another payment.
        (["--payload", '{"amount": "1.00", "currency": "GBP", "destination": "GB1",'
                       ' "amount": "9999.00"}'], "INVALID_PAYLOAD_JSON"),
        (["--payload", '{"amount": "1.00", "currency": "GBP", "destination": "GB1",'
                       ' "metadata": {"n": "a", "n": "b"}}'], "INVALID_PAYLOAD_JSON"),
        (["--payload", '{"amount": NaN}'], "INVALID_PAYLOAD_JSON"),
        (["--amount", "1", "--payload", "{}"], "CONFLICTING_ARGUMENTS"),
        (["--amount", "1"], "MISSING_ARGUMENT"),
    ],
)
def test_bad_enqueue_arguments(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str], extra: list[str],
    expected: str,
) -> None:
    base = ["enqueue", "--instruction-id", unique("cli"), "--idempotency-key", unique("key"),
            "--participant", "participant-cli", "--rail", "RTP"]
    code, body = run_json(capsys, *base, *extra)
    assert code == 2
    assert body["error"]["code"] == expected


def test_unknown_command_and_missing_options_exit_2(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["no-such-command"]) == 2
    assert main(["enqueue", "--instruction-id", "x"]) == 2
    assert main(["repair", "--limit", "0"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_status_reports_counts_and_zombies(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, status = run_json(capsys, "status")
    assert code == 0
    for key in ("due", "scheduled", "dispatching", "zombies", "pending_total",
                "dispatched_total", "failed_total", "awaiting_lookup"):
        assert isinstance(status[key], int), key
    assert status["zombie_threshold_seconds"] == 120


# -- worker, repair, audit (own database) ----------------------------------------------------


def test_worker_once_dispatches_and_the_audit_passes(
    own_db: DatabaseSettings, rail_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_json(capsys, *enqueue_args(unique("ok"), unique("key")))[0] == 0
    assert run_json(capsys, *enqueue_args(unique("ko"), unique("key"),
                                          destination="FAIL:INSUFFICIENT_FUNDS"))[0] == 0

    code, cycle = run_json(capsys, "worker", "--once", "--rail-url", rail_url)
    assert code == 0
    assert (cycle["claimed"], cycle["dispatched"], cycle["failed"]) == (2, 1, 1)
    assert cycle["zombies_repaired"] == 0

    code, audit = run_json(capsys, "audit", "verify")
    assert code == 0
    assert audit["ok"] is True and audit["failed_invariants"] == []
    assert {c["invariant"] for c in audit["checks"]} == {
        *(f"I{n}" for n in range(1, 11)), "E1", "T1", "T2", "T3"}
    assert all(c["violations"] == 0 and c["items"] == [] for c in audit["checks"])
    assert {k: audit["counts"][k] for k in ("items", "ledger_rows", "pending")} == {
        "items": 2, "ledger_rows": 4, "pending": 0}

    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "audit passed" in out
    assert "PASS I6  one_terminal: 2 items checked, 0 violations" in out

    # A checkpoint (control), exported as JSON lines (auditor), verified by the next audit.
    code, checkpoint = run_json(capsys, "audit", "checkpoint")
    assert code == 0
    assert (checkpoint["checkpoint_id"], checkpoint["row_count"], checkpoint["item_count"]) == (
        1, 4, 2)
    assert main(["audit", "export-checkpoints"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["checkpoint_digest"] for line in lines] == [
        checkpoint["checkpoint_digest"]]
    code, audit = run_json(capsys, "audit", "verify", "--since", "2000-01-01T00:00:00+00:00",
                           "--limit", "5")
    assert code == 0 and audit["ok"] is True and audit["limit"] == 5
    code, audit = run_json(capsys, "audit", "verify", "--since-checkpoint")
    assert code == 0 and audit["ok"] is True
    assert (audit["mode"], audit["checkpoint_id"]) == ("since-checkpoint", 1)
    assert main(["audit", "verify", "--since-checkpoint", "--since",
                 "2000-01-01T00:00:00+00:00"]) == 2  # one scope or the other
    capsys.readouterr()
    assert main(["audit", "verify", "--since", "2000-01-01T00:00:00"]) == 2  # no time zone
    capsys.readouterr()
    assert main(["audit", "verify", "--limit", "10001"]) == 2
    capsys.readouterr()


def test_repair_once_requeues_an_expired_lease(
    own_db: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, enqueued = run_json(capsys, *enqueue_args(unique("z"), unique("key")))
    assert code == 0
    asyncio.run(_claim_and_expire(own_db))

    code, report = run_json(capsys, "repair", "--once")
    assert code == 0
    assert report["repaired"] == 1
    assert report["items"][0]["outbox_id"] == enqueued["outbox_id"]
    assert report["items"][0]["claimed_by"] == "cli-test-dead-worker"

    code, again = run_json(capsys, "repair", "--once")
    assert (code, again["repaired"]) == (0, 0)


async def _claim_and_expire(settings: DatabaseSettings) -> None:
    async with await Database.open(settings) as db:
        claimed = await OutboxStore(db).claim("cli-test-dead-worker", 10, 60)
    assert len(claimed) == 1
    assert settings.database_url is not None
    await test_only.query_no_role(
        settings.database_url.get_secret_value(),
        "UPDATE symphony.payment_outbox_pending "
        "SET lease_expires_at = now() - interval '1 second', "
        "    claimed_at = now() - interval '1 day' WHERE lease_token IS NOT NULL",
    )


# -- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize("command", [["worker", "--once"], ["status"], ["repair", "--once"]])
def test_invalid_zombie_threshold_stops_the_command_at_start(
    cli_env: DatabaseSettings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], command: list[str],
) -> None:
    monkeypatch.setenv("ZOMBIE_THRESHOLD_SECONDS", "ten")
    code = main(command)
    err = capsys.readouterr().err
    assert code == 2
    assert "error [INVALID_ZOMBIE_THRESHOLD]" in err and "ZOMBIE_THRESHOLD_SECONDS" in err


def test_invalid_worker_option_is_a_configuration_error(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, body = run_json(capsys, "worker", "--once", "--rail-url", "ftp://rail")
    assert code == 2
    assert body["error"]["code"] == "INVALID_WORKER_CONFIG"


def test_invalid_log_level_is_a_configuration_error(
    cli_env: DatabaseSettings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SYMPHONY_LOG_LEVEL", "chatty")
    assert main(["status"]) == 2
    assert "error [INVALID_LOG_LEVEL]" in capsys.readouterr().err


def test_db_stop_refuses_a_server_it_does_not_manage(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, body = run_json(capsys, "db", "stop")
    assert code == 2
    assert body["error"]["code"] == "NOT_EMBEDDED"


def test_unreachable_database_is_an_operational_error(
    cli_env: DatabaseSettings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody:secret@127.0.0.1:1/none")
    monkeypatch.setenv("SYMPHONY_DB_CONNECT_TIMEOUT_S", "1")
    code, body = run_json(capsys, "status")
    assert code == 1
    assert body["error"]["code"] == "DATABASE_UNREACHABLE"
    assert "secret" not in json.dumps(body)


def test_python_dash_m_symphony_runs_the_cli(cli_env: DatabaseSettings) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "symphony", "status", "--json"],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    assert "pending_total" in json.loads(done.stdout)


# -- participants and tokens -----------------------------------------------------------------


def test_participants_add_list_revoke(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = unique("cli-bank")
    code, added = run_json(capsys, "participants", "add", pid, "--name", "CLI Bank")
    assert code == 0
    assert (added["participant_id"], added["display_name"], added["status"]) == (
        pid, "CLI Bank", "ACTIVE")
    code, listed = run_json(capsys, "participants", "list")
    assert code == 0
    assert {"participant_id": pid, "status": "ACTIVE"}.items() <= next(
        p for p in listed["participants"] if p["participant_id"] == pid).items()
    code, revoked = run_json(capsys, "participants", "revoke", pid)
    assert code == 0 and revoked["status"] == "REVOKED" and revoked["revoked_at"]
    # A revoked participant can no longer enqueue.
    code, body = run_json(capsys, *enqueue_args(unique("cli"), unique("key"), participant=pid))
    assert code == 1 and body["error"]["code"] == "PARTICIPANT_NOT_ACTIVE"


def test_participants_revoke_says_its_pending_payments_go_on(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    # Accepted payments are obligations: revoking stops new ones, not these, and says so.
    pid = unique("cli-revoked")
    assert main(["participants", "add", pid, "--name", "Revoked Bank"]) == 0
    for _ in range(2):
        assert main(enqueue_args(unique("cli"), unique("key"), participant=pid)) == 0
    capsys.readouterr()
    code, revoked = run_json(capsys, "participants", "revoke", pid)
    assert code == 0 and revoked["status"] == "REVOKED"
    assert revoked["pending_payments"] == 2 and revoked["pending_payments_continue"] is True
    assert "obligations" in revoked["note"] and "still dispatched" in revoked["note"]
    # Again (harmless), as text.
    assert main(["participants", "revoke", pid]) == 0
    out = capsys.readouterr().out
    assert f"revoked participant {pid}  REVOKED" in out
    assert "2 pending payments of it go on: accepted payments are obligations" in out
    assert "only an operator's cancellation of a payment stops that payment" in out


def test_participants_text_output(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = unique("cli-text")
    assert main(["participants", "add", pid, "--name", "Text Bank"]) == 0
    assert f"added participant {pid}  ACTIVE  Text Bank" in capsys.readouterr().out
    assert main(["participants", "list"]) == 0
    assert pid in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "exit_code", "expected"),
    [
        (["participants", "add", "bad id", "--name", "x"], 2, "INVALID_PARTICIPANT_ID"),
        (["participants", "add", "participant-cli", "--name", "x"], 1, "PARTICIPANT_EXISTS"),
        (["participants", "revoke", "no-such-participant-zz"], 1, "UNKNOWN_PARTICIPANT"),
        (["tokens", "issue", "--kind", "participant"], 2, "INVALID_TOKEN_REQUEST"),
        (["tokens", "issue", "--kind", "operator", "--participant", "participant-cli"], 2,
         "INVALID_TOKEN_REQUEST"),
        (["tokens", "issue", "--kind", "participant", "--participant", "no-such-zz"], 1,
         "UNKNOWN_PARTICIPANT"),
        (["tokens", "revoke", "not-a-uuid"], 2, "INVALID_TOKEN_ID"),
        (["tokens", "revoke", "00000000-0000-4000-8000-000000000000"], 1, "UNKNOWN_TOKEN"),
    ],
)
def test_access_command_errors(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str], argv: list[str],
    exit_code: int, expected: str,
) -> None:
    code, body = run_json(capsys, *argv)
    assert code == exit_code
    assert body["error"]["code"] == expected and body["error"]["incident_id"]


def test_tokens_issue_shows_the_token_once_and_revoke_kills_it(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, issued = run_json(capsys, "tokens", "issue", "--kind", "participant",
                            "--participant", "participant-cli", "--label", "cli test")
    assert code == 0
    assert issued["token"].startswith("sy_pt_") and "not stored" not in issued["token"]
    assert issued["kind"] == "PARTICIPANT" and issued["participant_id"] == "participant-cli"
    assert "cannot show it again" in issued["warning"]

    async def who(token: str) -> Any:
        async with await Database.open(cli_env) as db:
            return await AccessStore(db).authenticate(token)

    assert asyncio.run(who(issued["token"])) is not None
    code, revoked = run_json(capsys, "tokens", "revoke", issued["token_id"])
    assert code == 0 and revoked == {"token_id": issued["token_id"], "revoked": True}
    assert asyncio.run(who(issued["token"])) is None


def test_tokens_issue_text_output_warns_on_stderr(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tokens", "issue", "--kind", "operator", "--label", "ops"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "cannot show it again" in captured.err
    token = captured.out.strip().splitlines()[-1]
    assert token.startswith("sy_op_") and len(token) == len("sy_op_") + 32 + 1 + 43
    assert token not in captured.err


@pytest.mark.parametrize(("argv", "scope"), [
    ([], "VIEWER"), (["--scope", "viewer"], "VIEWER"), (["--scope", "operator"], "OPERATOR")])
def test_tokens_issue_operator_scope(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str], argv: list[str], scope: str
) -> None:
    code, issued = run_json(capsys, "tokens", "issue", "--kind", "operator", *argv)
    assert code == 0 and issued["scope"] == scope

    async def who(token: str) -> Any:
        async with await Database.open(cli_env) as db:
            return await AccessStore(db).authenticate(token)

    caller = asyncio.run(who(issued["token"]))
    assert caller is not None and caller.scope.value == scope


def test_tokens_issue_scope_is_for_operator_tokens_only(
    cli_env: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, body = run_json(capsys, "tokens", "issue", "--kind", "participant", "--participant",
                          "participant-cli", "--scope", "operator")
    assert code == 2 and body["error"]["code"] == "INVALID_TOKEN_REQUEST"


def test_status_shows_the_fleet_and_an_uncovered_bucket(
    own_db: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    from symphony.db import test_only

    dsn = own_db.database_url.get_secret_value()  # type: ignore[union-attr]
    asyncio.run(test_only.query_no_role(
        dsn, "INSERT INTO symphony_ops.worker_heartbeats (worker_id, bucket_from, bucket_to, "
             "version, started_at, in_flight, stale_after_seconds, heartbeat_at) VALUES "
             "('cli-a', 0, 127, '1', now(), 2, 15, now()), "
             "('cli-b', 128, 255, '1', now(), 0, 15, now() - interval '1 minute')"))
    code, status = run_json(capsys, "status")
    assert code == 0
    fleet = status["fleet"]
    assert (fleet["live_workers"], fleet["stale_workers"], fleet["alert"]) == (1, 1, True)
    assert fleet["uncovered_buckets"] == [{"bucket_from": 128, "bucket_to": 255}]
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "ALERT uncovered  buckets 128-255" in text and "STALE  cli-b" in text


def test_history_shows_the_ledger_and_who_resolved(
    own_db: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.ops import put_under_review

    from symphony.outbox import OutboxStore

    dsn = own_db.database_url.get_secret_value()  # type: ignore[union-attr]

    async def under_review() -> Any:
        async with await Database.open(own_db) as db:
            return await put_under_review(OutboxStore(db), dsn)

    outbox_id = str(asyncio.run(under_review()))
    assert main(["review", "resolve", outbox_id, "--outcome", "failed", "--by", "carol",
                 "--reason", "rail says never received"]) == 0
    capsys.readouterr()
    code, history = run_json(capsys, "history", outbox_id)
    assert code == 0
    assert [r["state"] for r in history["ledger"]] == ["DISPATCHING", "FAILED"]
    [action] = history["actions"]
    assert (action["action"], action["actor_label"], action["reason"]) == (
        "RESOLVE_REVIEW", "carol", "rail says never received")
    assert main(["history", outbox_id]) == 0
    assert "RESOLVE_REVIEW  by carol" in capsys.readouterr().out
    code, body = run_json(capsys, "history", "00000000-0000-4000-8000-000000000000")
    assert code == 1 and body["error"]["code"] == "UNKNOWN_OUTBOX_ID"


def test_cancel_cancels_once_answers_the_same_again_and_refuses_a_leased_payment(
    own_db: DatabaseSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, first = run_json(capsys, *enqueue_args(unique("cli"), unique("key")))
    assert code == 0
    code, canceled = run_json(capsys, "cancel", first["outbox_id"], "--reason",
                              "duplicate instruction", "--by", "dora")
    assert code == 0
    assert (canceled["result"], canceled["state"]) == ("CANCELED", "CANCELED")
    assert canceled["canceled_at"] is not None
    # Again: the same answer, nothing written (exit 0: the payment is canceled).
    code, again = run_json(capsys, "cancel", first["outbox_id"], "--reason", "again")
    assert code == 0 and again["result"] == "ALREADY_CANCELED"
    assert again["canceled_at"] == canceled["canceled_at"]
    code, history = run_json(capsys, "history", first["outbox_id"])
    assert [r["state"] for r in history["ledger"]] == ["CANCELED"]
    # Every operator's cancel is recorded with who, why and what it came to.
    assert [(a["action"], a["actor_label"], a["reason"], a["outcome"]["result"])
            for a in history["actions"]] == [
        ("CANCEL_PAYMENT", "dora", "duplicate instruction", "CANCELED"),
        ("CANCEL_PAYMENT", "cli", "again", "ALREADY_CANCELED")]

    # A payment being dispatched (leased) is refused with its state: exit 1, nothing written.
    code, second = run_json(capsys, *enqueue_args(unique("cli"), unique("key")))

    async def lease_it() -> None:
        async with await Database.open(own_db) as db:
            claimed = await OutboxStore(db).claim("cli-cancel-worker", 1000, 60)
            assert second["outbox_id"] in {str(item.outbox_id) for item in claimed}

    asyncio.run(lease_it())
    assert main(["cancel", second["outbox_id"], "--reason", "too late"]) == 1
    out = capsys.readouterr().out
    assert f"{second['outbox_id']}: not cancelable, the payment is DISPATCHING" in out
    code, history = run_json(capsys, "history", second["outbox_id"])
    assert [r["state"] for r in history["ledger"]] == ["DISPATCHING"]
    assert [(a["actor_label"], a["outcome"]["result"], a["outcome"]["state"])
            for a in history["actions"]] == [("cli", "NOT_CANCELABLE", "DISPATCHING")]
    # An unknown payment is an error with its code.
    code, body = run_json(capsys, "cancel", "00000000-0000-4000-8000-000000000000",
                          "--reason", "x")
    assert code == 1 and body["error"]["code"] == "PAYMENT_NOT_FOUND"
