"""Each service runs from its own principal's DSN alone: no admin DSN, no credentials file.

The principal DSNs are built from this module's test database and the session's credentials
file; every service under test then sees only that DSN (`DATABASE_URL` removed, and
`SYMPHONY_HOME` an empty directory, so no credentials file is in reach). What each principal
may do is shown twice: the Database refuses to route a role its principal cannot become, and
the server itself refuses (SQLSTATE 42501) what the principal's roles may not do.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.support.database import admin_dsn_of
from tests.support.outbox import instruction

from symphony.cli import main
from symphony.db import (
    DSN_VARIABLE,
    PENDING_CHANNEL,
    ConfigurationError,
    Database,
    DatabaseSettings,
    MigrationError,
    PermissionDeniedError,
    Principal,
    Role,
    RoleError,
    Service,
    SymphonyError,
    test_only,
)
from symphony.db import migration as migration_module
from symphony.db.credential import CredentialStore
from symphony.db.dsn import parse_dsn, server_key
from symphony.db.migration import Migration, load_migrations
from symphony.db.role import PRINCIPAL_FOR_ROLE, route_roles
from symphony.outbox import Completion, OutboxStore, Outcome

ENQUEUE_SQL = (
    "SELECT * FROM symphony.enqueue_payment_outbox('i-x', 'k-x', 'p-x', 'SEPA_CT', "
    "'{\"amount\": \"1.00\", \"currency\": \"EUR\", \"destination\": \"a\"}'::jsonb)"
)
CLAIM_SQL = "SELECT * FROM symphony.claim_outbox_batch('api-would-claim', 1, 60)"


def principal_dsn(settings: DatabaseSettings, principal: Principal) -> str:
    """The principal's own DSN to the test database, password from the credentials file."""
    admin = admin_dsn_of(settings)
    passwords = CredentialStore(settings.credentials_file).load(server_key(parse_dsn(admin, "x")))
    return psycopg.conninfo.make_conninfo(
        admin, user=principal.value, password=passwords[principal]
    )


@pytest.fixture
def empty_home(tmp_path: Path) -> Path:
    home = tmp_path / "home-without-credentials"
    home.mkdir()
    return home


@pytest.fixture
def only_dsn(
    monkeypatch: pytest.MonkeyPatch, empty_home: Path
) -> Iterator[pytest.MonkeyPatch]:
    """An environment with no admin DSN, no principal DSN and a home with no credentials."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for variable in DSN_VARIABLE.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("SYMPHONY_HOME", str(empty_home))
    yield monkeypatch
    assert list(empty_home.iterdir()) == [], "nothing may be written to SYMPHONY_HOME"


async def _expire_leases(admin: str) -> None:
    await test_only.query_no_role(
        admin,
        "UPDATE symphony.payment_outbox_pending "
        "   SET lease_expires_at = now() - interval '1 second', "
        "       claimed_at = now() - interval '1 day' "
        " WHERE lease_token IS NOT NULL",
    )


# -- routing ---------------------------------------------------------------------------------


def test_routing_with_every_principal_is_unchanged() -> None:
    assert PRINCIPAL_FOR_ROLE == {
        Role.CONTROL: Principal.CONTROL,
        Role.INGEST: Principal.INGEST,
        Role.EXECUTOR: Principal.EXECUTOR,
        Role.READONLY: Principal.READER,
        Role.AUDITOR: Principal.READER,
        # 0013: the operator actions, only through the API's login.
        Role.OPERATOR: Principal.API,
        Role.WEBHOOKS: Principal.API,
        Role.DELIVERY: Principal.DELIVERY,
    }


def test_routing_through_the_api_principal_alone() -> None:
    assert route_roles([Principal.API]) == {
        Role.INGEST: Principal.API, Role.READONLY: Principal.API, Role.OPERATOR: Principal.API,
        Role.WEBHOOKS: Principal.API,
    }
    assert route_roles([Principal.DELIVERY]) == {Role.DELIVERY: Principal.DELIVERY}
    assert route_roles([Principal.EXECUTOR]) == {Role.EXECUTOR: Principal.EXECUTOR}


def test_provisioning_gives_the_api_principal_a_password(
    isolated_settings: DatabaseSettings,
) -> None:
    admin = admin_dsn_of(isolated_settings)
    stored = CredentialStore(isolated_settings.credentials_file).load(
        server_key(parse_dsn(admin, "x")))
    assert set(stored) == set(Principal)
    assert Principal.API in stored


# -- the worker's principal ------------------------------------------------------------------


async def test_worker_dsn_claims_completes_and_repairs_but_cannot_enqueue(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings, isolated_db: Database,
) -> None:
    admin = admin_dsn_of(isolated_settings)
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL",
                    principal_dsn(isolated_settings, Principal.EXECUTOR))
    first = await OutboxStore(isolated_db).enqueue(instruction())
    second = await OutboxStore(isolated_db).enqueue(instruction())

    async with await Database.open_for_service(Service.WORKER) as db:
        assert db.endpoint is None
        assert db.principals == {Principal.EXECUTOR}
        assert db.roles == {Role.EXECUTOR}
        store = OutboxStore(db)
        claimed = {c.outbox_id: c for c in await store.claim("dsn-worker", 10, 60)}
        assert set(claimed) == {first.outbox_id, second.outbox_id}
        done = await store.complete(Completion(
            first.outbox_id, claimed[first.outbox_id].lease_token, Outcome.DISPATCHED,
                rail_transaction_id="rtx-test"))
        assert done.state == "DISPATCHED"

        await _expire_leases(admin)
        repaired = await store.repair_expired_leases(10, threshold_seconds=60)
        assert [r.outbox_id for r in repaired] == [second.outbox_id]

        # The Database will not route a role the executor principal cannot become ...
        with pytest.raises(RoleError) as routed:
            await store.enqueue(instruction())
        assert routed.value.code == "ROLE_NOT_AVAILABLE"
        # ... and the server refuses what the executor role may not do.
        with pytest.raises(PermissionDeniedError) as denied:
            await test_only.execute_as_role(db, Role.EXECUTOR, ENQUEUE_SQL)
        assert denied.value.sqlstate == "42501"
        for role in ("symphony_ingest", "symphony_control", "symphony_readonly"):
            with pytest.raises(PermissionDeniedError) as switch:
                await test_only.switch_role_as_principal(db, Principal.EXECUTOR, role)
            assert switch.value.sqlstate == "42501"

    writers = await test_only.query_no_role(
        admin, "SELECT DISTINCT recorded_by FROM symphony.payment_outbox_attempts "
               " WHERE outbox_id = ANY(%s)",
        ([first.outbox_id, second.outbox_id],))
    assert writers == [{"recorded_by": Principal.EXECUTOR.value}]


async def test_repair_service_uses_the_executor_principal(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL",
                    principal_dsn(isolated_settings, Principal.EXECUTOR))
    async with await Database.open_for_service(Service.REPAIR) as db:
        assert db.principals == {Principal.EXECUTOR}
        assert await OutboxStore(db).repair_expired_leases(10) == []


# -- the API's principal ---------------------------------------------------------------------


async def test_api_dsn_enqueues_and_reads_but_cannot_claim_or_become_more(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    admin = admin_dsn_of(isolated_settings)
    only_dsn.setenv("SYMPHONY_API_DATABASE_URL", principal_dsn(isolated_settings, Principal.API))

    async with await Database.open_for_service(Service.API) as db:
        assert db.principals == {Principal.API}
        assert db.roles == {Role.INGEST, Role.READONLY, Role.OPERATOR, Role.WEBHOOKS}
        store = OutboxStore(db)
        enqueued = await store.enqueue(instruction())
        assert enqueued.created
        item = await db.fetch_one(Role.READONLY, "item_summary",
                                  {"outbox_id": enqueued.outbox_id})
        assert item is not None and item["pending"] is True
        assert (await store.status()).pending_total >= 1

        # Not routed: the API principal may not become the executor or the control role.
        for role in (Role.EXECUTOR, Role.CONTROL, Role.AUDITOR):
            with pytest.raises(RoleError) as routed:
                async with db.transaction(role):
                    pass
            assert routed.value.code == "ROLE_NOT_AVAILABLE"
        with pytest.raises(RoleError):
            await store.claim("api-would-claim", 1, 60)
        # Refused by the server: its roles cannot claim, and it cannot SET ROLE further.
        for role in (Role.INGEST, Role.READONLY, Role.OPERATOR):
            with pytest.raises(PermissionDeniedError) as denied:
                await test_only.execute_as_role(db, role, CLAIM_SQL)
            assert denied.value.sqlstate == "42501"
        for name in ("symphony_executor", "symphony_control", "symphony_auditor",
                     "symphony_delivery"):
            with pytest.raises(PermissionDeniedError) as switch:
                await test_only.switch_role_as_principal(db, Principal.API, name)
            assert switch.value.sqlstate == "42501"

    pending = await test_only.query_no_role(
        admin, "SELECT count(*) AS n FROM symphony.payment_outbox_pending WHERE outbox_id = %s",
        (enqueued.outbox_id,))
    assert pending == [{"n": 1}]


async def test_schema_status_through_a_runtime_role(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    only_dsn.setenv("SYMPHONY_API_DATABASE_URL", principal_dsn(isolated_settings, Principal.API))
    latest = load_migrations()[-1].version
    async with await Database.open_for_service(Service.API) as db:
        status = await db.schema_status()
    assert (status.expected_version, status.applied_version, status.ok) == (latest, latest, True)
    assert status.pending == () and status.problem is None


# -- refused configurations ------------------------------------------------------------------


async def test_worker_given_the_api_dsn_is_refused(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    api_dsn = principal_dsn(isolated_settings, Principal.API)
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL", api_dsn)
    with pytest.raises(ConfigurationError) as info:
        await Database.open_for_service(Service.WORKER)
    assert info.value.code == "WRONG_PRINCIPAL"
    assert "symphony_executor_svc" in info.value.message
    assert parse_dsn(api_dsn, "x")["password"] not in str(info.value)


async def test_api_given_the_admin_dsn_is_refused(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    only_dsn.setenv("SYMPHONY_API_DATABASE_URL", admin_dsn_of(isolated_settings))
    with pytest.raises(ConfigurationError) as info:
        await Database.open_for_service(Service.API)
    assert info.value.code == "WRONG_PRINCIPAL"


async def test_login_is_checked_after_connecting_too(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    """A DSN that names no user logs in as PGUSER: caught on the first connection."""
    api = parse_dsn(principal_dsn(isolated_settings, Principal.API), "x")
    userless = psycopg.conninfo.make_conninfo(
        **{k: str(v) for k, v in api.items() if k != "user"})
    only_dsn.setenv("PGUSER", Principal.API.value)
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL", userless)
    with pytest.raises(ConfigurationError) as info:
        await Database.open_for_service(Service.WORKER)
    assert info.value.code == "WRONG_PRINCIPAL"
    assert "'symphony_api_svc'" in info.value.message


async def test_a_principal_granted_more_than_its_role_is_refused(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    admin = admin_dsn_of(isolated_settings)
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL",
                    principal_dsn(isolated_settings, Principal.EXECUTOR))
    # Roles are cluster-wide: the extra grant is taken back whatever happens.
    await test_only.query_no_role(
        admin, "GRANT symphony_ingest TO symphony_executor_svc WITH INHERIT FALSE, SET TRUE")
    try:
        with pytest.raises(ConfigurationError) as info:
            await Database.open_for_service(Service.WORKER)
    finally:
        await test_only.query_no_role(admin, "REVOKE symphony_ingest FROM symphony_executor_svc")
    assert info.value.code == "PRINCIPAL_TOO_POWERFUL"
    assert "symphony_ingest" in info.value.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("", "set but empty"), ("mysql://u:hunter2@h/db", "not a valid"),
     ("postgresql://u:hunter2@h:99999/db", "invalid port")],
)
async def test_a_malformed_service_dsn_is_a_configuration_error(
    only_dsn: pytest.MonkeyPatch, value: str, fragment: str,
) -> None:
    only_dsn.setenv("SYMPHONY_API_DATABASE_URL", value)
    with pytest.raises(ConfigurationError) as info:
        await Database.open_for_service(Service.API)
    assert info.value.code == "INVALID_DATABASE_CONFIG"
    assert "SYMPHONY_API_DATABASE_URL" in info.value.message
    assert fragment in info.value.message
    assert "hunter2" not in str(info.value)


async def test_unknown_service_is_refused() -> None:
    with pytest.raises(ConfigurationError) as info:
        await Database.open_for_service("cron")  # type: ignore[arg-type]
    assert info.value.code == "UNKNOWN_SERVICE"


# -- the schema must match, checked without admin ---------------------------------------------


async def test_a_schema_behind_the_code_is_migrations_pending(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    real = load_migrations()
    ahead = Migration(version=real[-1].version + 1, name=f"{real[-1].version + 1:04d}_next.sql",
                      sql="SELECT 1", checksum="0" * 64)
    only_dsn.setattr(migration_module, "load_migrations", lambda: [*real, ahead])
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL",
                    principal_dsn(isolated_settings, Principal.EXECUTOR))
    with pytest.raises(MigrationError) as info:
        await Database.open_for_service(Service.WORKER)
    assert info.value.code == "MIGRATIONS_PENDING"
    assert "symphony migrate" in info.value.message


async def test_a_changed_migration_is_reported_not_ignored(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
) -> None:
    real = load_migrations()
    tampered = [*real[:-1], Migration(real[-1].version, real[-1].name, real[-1].sql, "f" * 64)]
    only_dsn.setattr(migration_module, "load_migrations", lambda: tampered)
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL",
                    principal_dsn(isolated_settings, Principal.EXECUTOR))
    with pytest.raises(MigrationError) as info:
        await Database.open_for_service(Service.WORKER)
    assert info.value.code == "MIGRATION_CHECKSUM_MISMATCH"


async def test_a_schema_runtime_roles_cannot_read_yet_is_migrations_pending(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
    server_admin_dsn: str, unique_db_name: str,
) -> None:
    """Before 0006 the runtime roles may not read the migration record: still a clear error."""
    admin = await test_only.create_database(server_admin_dsn, unique_db_name)
    try:
        real = load_migrations()
        with pytest.MonkeyPatch.context() as older_code:
            older_code.setattr(migration_module, "load_migrations", lambda: real[:5])
            await migration_module.migrate(admin)
        executor = parse_dsn(principal_dsn(isolated_settings, Principal.EXECUTOR), "x")
        only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL", psycopg.conninfo.make_conninfo(
            admin, user=executor["user"], password=executor["password"]))
        with pytest.raises(MigrationError) as info:
            await Database.open_for_service(Service.WORKER)
        assert info.value.code == "MIGRATIONS_PENDING"
    finally:
        await test_only.drop_database(server_admin_dsn, unique_db_name)


@pytest.fixture
def unique_db_name() -> str:
    return f"symphony_test_{uuid.uuid4().hex[:12]}"


# -- without a service DSN: today's admin/embedded mode, still least privilege ---------------


@pytest.mark.parametrize(
    ("service", "principal", "roles"),
    [(Service.API, Principal.API, {Role.INGEST, Role.READONLY, Role.OPERATOR, Role.WEBHOOKS}),
     (Service.WORKER, Principal.EXECUTOR, {Role.EXECUTOR}),
     (Service.REPAIR, Principal.EXECUTOR, {Role.EXECUTOR}),
     (Service.DELIVERY, Principal.DELIVERY, {Role.DELIVERY})],
)
async def test_fallback_uses_the_credentials_file_but_holds_only_the_service_principal(
    monkeypatch: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
    service: Service, principal: Principal, roles: set[Role],
) -> None:
    for variable in DSN_VARIABLE.values():
        monkeypatch.delenv(variable, raising=False)
    async with await Database.open_for_service(service, isolated_settings) as db:
        assert db.endpoint is not None
        assert db.principals == {principal}
        assert db.roles == roles
        assert (await db.schema_status()).ok


async def test_admin_mode_schema_status_and_every_principal(isolated_db: Database) -> None:
    assert isolated_db.principals == set(Principal)
    assert (await isolated_db.schema_status()).ok


def test_schema_status_as_dict_is_json() -> None:
    status = migration_module.assess_schema({m.version: m.checksum for m in load_migrations()})
    assert json.loads(json.dumps(status.as_dict()))["ok"] is True
    assert isinstance(status, migration_module.SchemaStatus)
    with pytest.raises(SymphonyError):
        migration_module.assess_schema(None).require()


async def test_the_worker_listens_for_new_work_through_its_own_dsn(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings, isolated_db: Database,
) -> None:
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL",
                    principal_dsn(isolated_settings, Principal.EXECUTOR))
    async with (
        await Database.open_for_service(Service.WORKER) as db,
        db.listen(Role.EXECUTOR, PENDING_CHANNEL) as listener,
    ):
        await OutboxStore(isolated_db).enqueue(instruction())
        assert await listener.wait(30)


async def test_other_principals_dsns_in_reach_are_warned_about(
    only_dsn: pytest.MonkeyPatch, isolated_settings: DatabaseSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    only_dsn.setenv("SYMPHONY_API_DATABASE_URL", principal_dsn(isolated_settings, Principal.API))
    only_dsn.setenv("SYMPHONY_EXECUTOR_DATABASE_URL",
                    principal_dsn(isolated_settings, Principal.EXECUTOR))
    only_dsn.setenv("DATABASE_URL", admin_dsn_of(isolated_settings))
    with caplog.at_level(logging.WARNING, logger="symphony.db"):
        async with await Database.open_for_service(Service.API) as db:
            assert db.principals == {Principal.API}
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "DATABASE_URL is set but not used" in warnings
    assert "SYMPHONY_EXECUTOR_DATABASE_URL set but not used" in warnings


# -- the CLI commands with their own principal's DSN ------------------------------------------


def test_cli_commands_run_from_their_principals_dsns(
    only_dsn: pytest.MonkeyPatch, make_database: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    settings: DatabaseSettings = make_database()
    for principal in (Principal.INGEST, Principal.EXECUTOR, Principal.READER):
        only_dsn.setenv(DSN_VARIABLE[principal], principal_dsn(settings, principal))

    def run(*argv: str) -> Any:
        assert main([*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    enqueued = run("enqueue", "--instruction-id", "i-cli-dsn", "--idempotency-key", "k-1",
                   "--participant", "participant-cli", "--rail", "SEPA_CT", "--amount", "5.00",
                   "--currency", "EUR", "--destination", "acct-1")
    assert enqueued["created"] is True
    assert run("status")["pending_total"] == 1
    assert run("repair", "--once")["repaired"] == 0
    assert run("audit", "verify")["ok"] is True
