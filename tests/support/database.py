"""Database fixtures shared by `tests/` and `src/symphony/db/tests/`: a real PostgreSQL, always.

With `DATABASE_URL` unset, the suite starts its own throwaway embedded PostgreSQL once per
session (deleted at the end); with it set, it uses that server, creating (and dropping) its
own databases on it. Either way no test depends on a server someone started by hand.

Roles are cluster-wide, so the whole session shares one `SYMPHONY_HOME` (one set of principal
passwords): use the `symphony_home` fixture for anything that needs one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

os.environ["SYMPHONY_ENV"] = "test"

import pytest
from tests.support.outbox import TEST_PARTICIPANTS

from symphony.db import Database, DatabaseSettings, EmbeddedServer, bootstrap, test_only


@pytest.fixture(scope="session")
def server_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin DSN of the server the suite runs against (maintenance database)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    root = tmp_path_factory.mktemp("pg")
    server = EmbeddedServer(root / "pgdata", delete_on_stop=True)
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def symphony_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("symphony-home")


DatabaseFactory = Callable[[], DatabaseSettings]


@pytest.fixture(scope="session")
def make_database(
    server_admin_dsn: str, symphony_home: Path
) -> Iterator[DatabaseFactory]:
    """Create a fresh, migrated, provisioned database; returns settings that point at it."""
    created: list[str] = []

    async def create() -> DatabaseSettings:
        name = f"symphony_test_{uuid.uuid4().hex[:12]}"
        dsn = await test_only.create_database(server_admin_dsn, name)
        created.append(name)
        settings = DatabaseSettings(DATABASE_URL=dsn, SYMPHONY_HOME=str(symphony_home))
        await bootstrap(settings)
        # Enqueue accepts registered, ACTIVE participants only: the shared test ones exist.
        for participant_id in TEST_PARTICIPANTS:
            await test_only.query_no_role(
                dsn, "SELECT 1 FROM symphony.add_participant(%s, %s)",
                (participant_id, f"Test participant {participant_id}"),
            )
        return settings

    def factory() -> DatabaseSettings:
        # Callable from sync fixtures and from inside a running test loop alike.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, create()).result()

    yield factory
    for name in created:
        asyncio.run(test_only.drop_database(server_admin_dsn, name))


@pytest.fixture(scope="session")
def db_settings(make_database: DatabaseFactory) -> DatabaseSettings:
    """The session's shared, migrated database. Tests isolate themselves by unique ids."""
    return make_database()


def admin_dsn_of(settings: DatabaseSettings) -> str:
    """The admin DSN a test database's settings point at."""
    assert settings.database_url is not None
    return settings.database_url.get_secret_value()


async def _opened(settings: DatabaseSettings) -> AsyncIterator[Database]:
    database = await Database.open(settings)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def admin_dsn(db_settings: DatabaseSettings) -> str:
    return admin_dsn_of(db_settings)


@pytest.fixture
async def db(db_settings: DatabaseSettings) -> AsyncIterator[Database]:
    async for database in _opened(db_settings):
        yield database


@pytest.fixture(scope="module")
def isolated_settings(make_database: DatabaseFactory) -> DatabaseSettings:
    """A database of this test module's own: for tests that claim, count or repair the queue."""
    return make_database()


@pytest.fixture
def isolated_admin_dsn(isolated_settings: DatabaseSettings) -> str:
    return admin_dsn_of(isolated_settings)


@pytest.fixture
async def isolated_db(isolated_settings: DatabaseSettings) -> AsyncIterator[Database]:
    async for database in _opened(isolated_settings):
        yield database


def unique(prefix: str) -> str:
    """An id no other test uses (tests share the session database)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"
