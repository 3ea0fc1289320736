"""Settings of the database boundary, read from the environment.

`DATABASE_URL` is an admin DSN (migrations, provisioning). Unset, an embedded PostgreSQL is
started with its data under `SYMPHONY_HOME` (default `.symphony`). Every setting has a
documented default and is validated at start-up: a bad value stops the process with a clear
error instead of becoming a silent default.

`SYMPHONY_<PRINCIPAL>_DATABASE_URL` is one login principal's own DSN: a service given it
connects as that principal alone, with no admin DSN and no credentials file (see
`Database.open_for_service`). Unset, the service falls back to the admin or embedded mode.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from symphony.db.dsn import dsn_problem
from symphony.db.error import ConfigurationError
from symphony.db.role import Principal

DSN_VARIABLE: dict[Principal, str] = {
    Principal.API: "SYMPHONY_API_DATABASE_URL",
    Principal.EXECUTOR: "SYMPHONY_EXECUTOR_DATABASE_URL",
    Principal.CONTROL: "SYMPHONY_CONTROL_DATABASE_URL",
    Principal.INGEST: "SYMPHONY_INGEST_DATABASE_URL",
    Principal.READER: "SYMPHONY_READER_DATABASE_URL",
    Principal.DELIVERY: "SYMPHONY_DELIVERY_DATABASE_URL",
}
"""The environment variable holding each principal's own DSN."""

_DSN_FIELD: dict[Principal, str] = {
    Principal.API: "api_database_url",
    Principal.EXECUTOR: "executor_database_url",
    Principal.CONTROL: "control_database_url",
    Principal.INGEST: "ingest_database_url",
    Principal.READER: "reader_database_url",
    Principal.DELIVERY: "delivery_database_url",
}


class DatabaseSettings(BaseSettings):
    """How to reach PostgreSQL and how to behave on its connections."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="Admin DSN of a PostgreSQL 15+ server. Unset: the embedded server.",
    )
    api_database_url: SecretStr | None = Field(
        default=None,
        validation_alias="SYMPHONY_API_DATABASE_URL",
        description="DSN of symphony_api_svc (ingest, readonly, operator) for `symphony api`. "
        "Unset: the admin/embedded mode.",
    )
    executor_database_url: SecretStr | None = Field(
        default=None,
        validation_alias="SYMPHONY_EXECUTOR_DATABASE_URL",
        description="DSN of symphony_executor_svc for `symphony worker` and "
        "`symphony repair`. Unset: the admin/embedded mode.",
    )
    control_database_url: SecretStr | None = Field(
        default=None,
        validation_alias="SYMPHONY_CONTROL_DATABASE_URL",
        description="DSN of symphony_control_svc for the operator's commands. "
        "Unset: the admin/embedded mode.",
    )
    ingest_database_url: SecretStr | None = Field(
        default=None,
        validation_alias="SYMPHONY_INGEST_DATABASE_URL",
        description="DSN of symphony_ingest_svc for `symphony enqueue`. "
        "Unset: the admin/embedded mode.",
    )
    reader_database_url: SecretStr | None = Field(
        default=None,
        validation_alias="SYMPHONY_READER_DATABASE_URL",
        description="DSN of symphony_reader_svc for `symphony status` and "
        "`symphony audit verify`. Unset: the admin/embedded mode.",
    )
    delivery_database_url: SecretStr | None = Field(
        default=None,
        validation_alias="SYMPHONY_DELIVERY_DATABASE_URL",
        description="DSN of symphony_delivery_svc for `symphony delivery` (webhook "
        "deliveries). Unset: the admin/embedded mode.",
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

    @field_validator(*_DSN_FIELD.values())
    @classmethod
    def _check_dsn(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        name = next(DSN_VARIABLE[p] for p, f in _DSN_FIELD.items() if f == info.field_name)
        # The message never quotes the value: a DSN may hold a password.
        problem = dsn_problem(value.get_secret_value(), name)
        if problem is not None:
            raise ValueError(problem)
        return value

    @classmethod
    def load(cls) -> DatabaseSettings:
        """Read the environment; a bad value is a ConfigurationError that never echoes it."""
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigurationError(
                "invalid database setting: " + "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False, include_input=False)
                ),
                code="INVALID_DATABASE_CONFIG",
            ) from None

    def dsn_of(self, principal: Principal) -> SecretStr | None:
        """The principal's own DSN, if one is configured."""
        value = getattr(self, _DSN_FIELD[principal])
        assert value is None or isinstance(value, SecretStr)
        return value

    @property
    def credentials_file(self) -> Path:
        """The principals' passwords, readable by the file's owner only."""
        return self.home / "credentials.json"

    @property
    def embedded_data_dir(self) -> Path:
        """Data directory of the embedded server."""
        return self.home / "pgdata"
