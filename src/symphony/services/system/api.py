"""The product's HTTP API with every router mounted: what `symphony api` and `symphony run`
serve. Routers of other services (the operator API, metrics, the dashboard) are added here,
in one place, so both commands always serve the same app."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter

from symphony.db import Database
from symphony.services.api import ApiConfig, ApiServer


def product_routers() -> Sequence[APIRouter]:
    """The routers mounted beside the participant API (which `create_app` always has)."""
    return ()


def build_api_server(db: Database, config: ApiConfig) -> ApiServer:
    """The API on `db`, tokens checked against the database's token store."""
    return ApiServer(db, config, routers=product_routers())
