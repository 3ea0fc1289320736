"""The API started with nothing but its own principal's DSN (`SYMPHONY_API_DATABASE_URL`, no
admin DSN, no credentials file) serves participants end to end, and its login still cannot
claim, complete or become any other role."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

import httpx
import psycopg
import pytest
from tests.support.api import new_member, payment_body
from tests.support.database import admin_dsn_of

from symphony.db import (
    DSN_VARIABLE,
    Database,
    DatabaseSettings,
    PermissionDeniedError,
    Principal,
    Role,
    RoleError,
    Service,
    test_only,
)
from symphony.db.credential import CredentialStore
from symphony.db.dsn import parse_dsn, server_key
from symphony.outbox import OutboxStore
from symphony.services.api import ApiConfig
from symphony.services.system.api import build_api_server


def _principal_dsn(settings: DatabaseSettings, principal: Principal) -> str:
    admin = admin_dsn_of(settings)
    passwords = CredentialStore(settings.credentials_file).load(server_key(parse_dsn(admin, "x")))
    return psycopg.conninfo.make_conninfo(admin, user=principal.value,
                                          password=passwords[principal])


async def test_the_api_runs_on_its_own_principal_alone(
    isolated_settings: DatabaseSettings, isolated_db: Database,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    member = await new_member(isolated_db, "api-only")  # set up with the operator's powers
    api_dsn = _principal_dsn(isolated_settings, Principal.API)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for variable in DSN_VARIABLE.values():
        monkeypatch.delenv(variable, raising=False)
    empty_home = tmp_path / "no-credentials"
    empty_home.mkdir()
    monkeypatch.setenv("SYMPHONY_HOME", str(empty_home))
    monkeypatch.setenv("SYMPHONY_API_DATABASE_URL", api_dsn)

    async with await Database.open_for_service(Service.API) as db:
        assert db.principals == {Principal.API}
        server = build_api_server(db, ApiConfig(host="127.0.0.1", port=0, auth_cache_seconds=0))
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
                created = await client.post(
                    "/v1/payments", content=json.dumps(payment_body()),
                    headers={**member.headers(f"k-{uuid4()}"),
                             "Content-Type": "application/json"})
                assert created.status_code == 201, created.text
                outbox_id = created.json()["outbox_id"]
                got = await client.get(f"/v1/payments/{outbox_id}", headers=member.headers())
                assert got.status_code == 200 and got.json()["state"] == "PENDING"
                listed = await client.get("/v1/payments", headers=member.headers())
                assert [p["outbox_id"] for p in listed.json()["data"]] == [outbox_id]
                assert (await client.get("/readyz")).status_code == 200
        finally:
            await server.stop()

        # What the API's login may not do, refused by the handle and by the server.
        with pytest.raises(RoleError):
            await OutboxStore(db).claim("api-must-not-claim", 1, 60)
        for role in (Role.INGEST, Role.READONLY):
            with pytest.raises(PermissionDeniedError) as denied:
                await test_only.execute_as_role(
                    db, role, "SELECT * FROM symphony.claim_outbox_batch('api', 1, 60)")
            assert denied.value.sqlstate == "42501"
    assert list(empty_home.iterdir()) == [], "nothing written to SYMPHONY_HOME"
