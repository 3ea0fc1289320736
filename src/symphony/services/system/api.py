"""The product's HTTP API with every router mounted: what `symphony api` and `symphony run`
serve, so both always serve the same app.

`create_app` always has health, docs and the participant API; this adds the operator side
(`/v1/ops/...`, `/metrics`, the dashboard at `/`).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from symphony.db import Database
from symphony.services.api import ApiConfig, ApiServer
from symphony.services.api.ops import operator_routers


def product_routers(
    *, process_registries: Sequence[CollectorRegistry] = ()
) -> Sequence[APIRouter]:
    """The routers mounted beside the participant API. `process_registries` are this
    process's own metrics (a worker running in it), exported at `/metrics`."""
    return operator_routers(process_registries=process_registries)


def build_api_server(
    db: Database,
    config: ApiConfig,
    *,
    process_registries: Sequence[CollectorRegistry] = (),
) -> ApiServer:
    """The API on `db`, tokens checked against the database's token store."""
    return ApiServer(
        db, config, routers=product_routers(process_registries=process_registries)
    )
