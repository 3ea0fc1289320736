"""The product's HTTP API with every router mounted: what `symphony api` and `symphony run`
serve, so both always serve the same app.

`create_app` always has health, docs and the participant API; this adds the operator side
(`/v1/ops/...`, `/metrics`, the dashboard at `/`) and the webhook endpoints (participant and
operator routes), which need the deployment's webhook key (`SYMPHONY_WEBHOOK_KEY`, else the
key file under `SYMPHONY_HOME`) and its URL policy (`SYMPHONY_WEBHOOK_*`).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from symphony.db import Database
from symphony.services.api import ApiConfig, ApiServer
from symphony.services.api.ops import operator_routers
from symphony.services.api.webhooks import webhook_routers
from symphony.webhooks import SecretBox, UrlPolicy, WebhookSettings, configured_secret_box


def product_routers(
    *,
    process_registries: Sequence[CollectorRegistry] = (),
    webhooks: tuple[SecretBox | None, UrlPolicy] = (None, UrlPolicy()),
) -> Sequence[APIRouter]:
    """The routers mounted beside the participant API. `process_registries` are this
    process's own metrics (a worker running in it), exported at `/metrics`; `webhooks` the key
    (None: registrations answer 503) and URL policy of the webhook routes."""
    return [*operator_routers(process_registries=process_registries),
            *webhook_routers(*webhooks)]


def build_api_server(
    db: Database,
    config: ApiConfig,
    *,
    process_registries: Sequence[CollectorRegistry] = (),
    webhook_settings: WebhookSettings | None = None,
) -> ApiServer:
    """The API on `db`, tokens checked against the database's token store."""
    settings = webhook_settings or WebhookSettings.load()
    # A service on its own principal's DSN (no endpoint: it manages no SYMPHONY_HOME) takes
    # the key from SYMPHONY_WEBHOOK_KEY only.
    box = configured_secret_box(db.settings.home, manages_home=db.endpoint is not None)
    return ApiServer(
        db, config, routers=product_routers(process_registries=process_registries,
                                            webhooks=(box, settings.policy))
    )
