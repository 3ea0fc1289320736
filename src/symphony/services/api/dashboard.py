"""The operator dashboard at `/`: one static page that reads only the operator API.

The page, its script, style sheet and icon ship inside the package (`static/`); nothing is
loaded from anywhere else, and the Content-Security-Policy says so to the browser too. The page
holds no data and no token: it asks the operator for a token, keeps it in the tab's
sessionStorage and sends it as a bearer token to `/v1/ops/...`. So serving the page needs no
authentication, and the token never appears in a URL, the HTML or a server log.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Final

from fastapi import APIRouter, HTTPException, Response

# Served files and their types: a fixed list, so no path from a request ever reaches the
# file system.
ASSETS: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PAGE: Final = "index.html"

# Everything from this origin only; no inline script or style; not frameable.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@cache
def asset(name: str) -> bytes:
    """One shipped file of `static/` (read once)."""
    return (resources.files("symphony.services.api") / "static" / name).read_bytes()


def dashboard_router() -> APIRouter:
    """`GET /` (the page) and `GET /static/{name}` (its assets). No authentication."""
    router = APIRouter(tags=["dashboard"])

    @router.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(
            content=asset(PAGE),
            media_type="text/html; charset=utf-8",
            headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"},
        )

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="no such file")
        return Response(
            content=asset(name),
            media_type=media_type,
            headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"},
        )

    return router
