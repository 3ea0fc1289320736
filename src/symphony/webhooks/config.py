"""Settings every part that touches webhook URLs shares (the API and the delivery service).

SYMPHONY_WEBHOOK_ALLOW_LOOPBACK: admit http:// and loopback addresses (default false). For
    development and tests: refused when SYMPHONY_ENV is production (its default).
SYMPHONY_WEBHOOK_ALLOWED_NETWORKS: CIDR blocks whose addresses are admitted whatever their
    class, comma-separated (default none), e.g. a partner's private link `10.20.0.0/16`.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from symphony.db import ConfigurationError
from symphony.webhooks.urlsafety import IPNetwork, UrlPolicy, parse_networks


class WebhookSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    allow_loopback: bool = Field(default=False, validation_alias="SYMPHONY_WEBHOOK_ALLOW_LOOPBACK")
    # NoDecode: the variable is a comma-separated list, not JSON.
    allowed_networks: Annotated[tuple[IPNetwork, ...], NoDecode] = Field(
        default=(), validation_alias="SYMPHONY_WEBHOOK_ALLOWED_NETWORKS"
    )

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_networks(value)
        return value

    @model_validator(mode="after")
    def _loopback_not_in_production(self) -> WebhookSettings:
        env = os.environ.get("SYMPHONY_ENV", "production").strip().lower() or "production"
        if self.allow_loopback and env == "production":
            raise ValueError("SYMPHONY_WEBHOOK_ALLOW_LOOPBACK is for development and tests; "
                             "it is refused when SYMPHONY_ENV is production")
        return self

    @property
    def policy(self) -> UrlPolicy:
        return UrlPolicy(allow_loopback=self.allow_loopback,
                         allowed_networks=self.allowed_networks)

    @classmethod
    def load(cls, **overrides: Any) -> WebhookSettings:
        explicit = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**explicit)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_url=False, include_input=False))
            raise ConfigurationError("invalid webhook setting: " + problems,
                                     code="INVALID_WEBHOOK_CONFIG") from None
