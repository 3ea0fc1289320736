"""Settings of the database boundary, read from the environment.

`DATABASE_URL` is an admin DSN (migrations, provisioning). Unset, an embedded PostgreSQL is
started with its data under `SYMPHONY_HOME` (default `.symphony`). Every setting has a
documented default and is validated at start-up: a bad value stops the process with a clear
error instead of becoming a silent default.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseSettings):
    """How to reach PostgreSQL and how to behave on its connections."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="Admin DSN of a PostgreSQL 18+ server. Unset: the embedded server.",
    )
    home: Path = Field(
        default=Path(".symphony"),
        validation_alias="SYMPHONY_HOME",
        description="Where the embedded server's data and the principals' credentials live.",
    )
    statement_timeout_ms: int = Field(
        default=10_000, ge=100, le=3_600_000,
        validation_alias="SYMPHONY_DB_STATEMENT_TIMEOUT_MS",
        description="Upper bound of every statement on a service connection.",
    )
    lock_timeout_ms: int = Field(
        default=5_000, ge=10, le=3_600_000,
        validation_alias="SYMPHONY_DB_LOCK_TIMEOUT_MS",
        description="How long a statement may wait for a row or table lock.",
    )
    idle_in_transaction_timeout_ms: int = Field(
        default=30_000, ge=1_000, le=3_600_000,
        validation_alias="SYMPHONY_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        description="A transaction left idle this long is ended by the server.",
    )
    connect_timeout_s: int = Field(
        default=10, ge=1, le=300, validation_alias="SYMPHONY_DB_CONNECT_TIMEOUT_S",
        description="How long to wait for a new connection.",
    )
    pool_min_size: int = Field(
        default=1, ge=0, le=100, validation_alias="SYMPHONY_DB_POOL_MIN_SIZE",
        description="Connections each principal's pool keeps open.",
    )
    pool_max_size: int = Field(
        default=10, ge=1, le=200, validation_alias="SYMPHONY_DB_POOL_MAX_SIZE",
        description="Most connections each principal's pool opens.",
    )
    application_name: str = Field(
        default="symphony", min_length=1, max_length=63,
        validation_alias="SYMPHONY_APPLICATION_NAME",
        description="Shown in pg_stat_activity.",
    )

    @property
    def credentials_file(self) -> Path:
        """The principals' passwords, readable by the file's owner only."""
        return self.home / "credentials.json"

    @property
    def embedded_data_dir(self) -> Path:
        """Data directory of the embedded server."""
        return self.home / "pgdata"
