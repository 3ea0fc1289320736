"""One error envelope for every error the API returns, and the request ids that tie them to
the log.

Every error body is `{"code", "message", "request_id"}` (plus `errors`, a list of field-level
problems, for 422 `invalid_request`), and every response, error or not, carries `X-Request-Id`.
The id is made here; a client's own `X-Request-Id` is kept only when it matches
`REQUEST_ID_PATTERN`, so nothing a client sends can forge log lines or smuggle header text.

Codes are lowercase and stable; messages are fixed text chosen here, never copied from the
database or an exception.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("symphony.api")

REQUEST_ID_HEADER: Final = "X-Request-Id"
# Letters, digits and `._:-`, 8 to 64 of them: enough for a UUID or a trace id, too little
# for anything a log reader could mistake for another field.
REQUEST_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,63}")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def accept_request_id(candidate: str | None) -> str:
    """The client's id when it is safe to echo, else a fresh one."""
    if candidate is not None and REQUEST_ID_PATTERN.fullmatch(candidate):
        return candidate
    return new_request_id()


class FieldError(BaseModel):
    """One problem with one field of the request."""

    field: str | None
    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    code: str
    message: str
    request_id: str
    errors: list[FieldError] | None = None
    current: dict[str, Any] | None = None


@dataclass(slots=True)
class ApiError(Exception):
    """An error answered with the envelope. `headers` are added to the response."""

    status: int
    code: str
    message: str
    errors: Sequence[FieldError] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    # For a 409: where the resource stands now (an action that lost a race says what won).
    current: Mapping[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def request_id_of(request: Request) -> str:
    """The id the request-context middleware gave this request."""
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else new_request_id()


def error_response(
    request_id: str,
    status: int,
    code: str,
    message: str,
    *,
    errors: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
    current: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if errors:
        body["errors"] = [e.model_dump() for e in errors]
    if current is not None:
        body["current"] = jsonable_encoder(current)
    all_headers = {REQUEST_ID_HEADER: request_id, "Cache-Control": "no-store"}
    all_headers.update(headers or {})
    return JSONResponse(body, status_code=status, headers=all_headers)


class RequestRefused(StarletteHTTPException):
    """A refusal raised below the routes (while a route reads the body, say), answered with
    the envelope's `code` and `message`. An HTTPException, so FastAPI passes it through even
    where it wraps other errors of reading a body into a 400."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, detail=message, headers=dict(headers or {}))
        self.code = code
        self.message = message


# Starlette's own refusals (no such route, wrong method), in the envelope.
_HTTP_CODES: Final[dict[int, tuple[str, str]]] = {
    400: ("bad_request", "the request is malformed"),
    401: ("unauthorized", "a valid token is required"),
    404: ("not_found", "no such resource"),
    405: ("method_not_allowed", "the method is not allowed on this resource"),
    406: ("not_acceptable", "the response cannot be given in an acceptable form"),
    413: ("payload_too_large", "the request body is too large"),
    415: ("unsupported_media_type", "the request body must be application/json"),
}


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request_id_of(request), exc.status, exc.code, exc.message,
                          errors=exc.errors, headers=exc.headers, current=exc.current)


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, RequestRefused):
        code, message = exc.code, exc.message
    else:
        code, message = _HTTP_CODES.get(exc.status_code, ("http_error", "the request failed"))
    return error_response(request_id_of(request), exc.status_code, code, message,
                          headers=dict(exc.headers or {}))


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own parameter validation (query, path, header), as field errors."""
    assert isinstance(exc, RequestValidationError)
    errors = [validation_field_error(e) for e in exc.errors()]
    return error_response(request_id_of(request), 422, "invalid_request",
                          "the request has invalid fields", errors=errors)


def validation_field_error(error: Mapping[str, Any]) -> FieldError:
    """A pydantic error as a FieldError: the field path without its location prefix, a code
    from the error type, and a fixed message (pydantic's carry the input value)."""
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    name = ".".join(loc) or None
    kind = str(error.get("type", ""))
    if kind == "missing":
        return FieldError(field=name, code="REQUIRED", message="this field is required")
    if kind == "extra_forbidden":
        return FieldError(field=name, code="UNKNOWN_FIELD", message="this field is not known")
    if kind in ("enum", "literal_error"):
        return FieldError(field=name, code="INVALID_VALUE",
                          message="this field must be one of the documented values")
    if kind.startswith(("greater_than", "less_than")):
        return FieldError(field=name, code="OUT_OF_RANGE",
                          message="this field is outside the documented range")
    if kind == "uuid_parsing" or kind == "uuid_type":
        return FieldError(field=name, code="INVALID_ID", message="this field must be a UUID")
    return FieldError(field=name, code="INVALID_TYPE",
                      message="this field has the wrong type or format")


EXCEPTION_HANDLERS: Final = {
    ApiError: handle_api_error,
    StarletteHTTPException: handle_http_exception,
    RequestValidationError: handle_validation_error,
}
