"""Runtime roles, the login principals that may switch to them, and the services that log in.

A role is an enum, never a string from the outside: an unknown role is refused here, before
any SQL is built. Each principal is a login that holds no privilege of its own and may
`SET ROLE` only to the runtime roles listed for it (granted WITH INHERIT FALSE, SET TRUE).
`ROLES_OF_PRINCIPAL` mirrors those grants (migrations 0001, 0006 and the webhooks'); a
`Database` routes
each role only to a principal it holds whose grants include that role.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum


class Role(StrEnum):
    """The runtime roles. Values are the PostgreSQL role names (part of the contract).

    OPERATOR (the operators migration) may only execute the operator actions, each of which
    verifies the acting operator token itself; the API's login may become it. WEBHOOKS
    manages a participant's webhook endpoints and the operator's disable/enable/replay (the
    API's); DELIVERY fans events out, claims and completes deliveries (the delivery
    service's). None of them reads a table directly.
    """

    CONTROL = "symphony_control"
    INGEST = "symphony_ingest"
    EXECUTOR = "symphony_executor"
    READONLY = "symphony_readonly"
    AUDITOR = "symphony_auditor"
    OPERATOR = "symphony_operator"
    WEBHOOKS = "symphony_webhooks"
    DELIVERY = "symphony_delivery"


class Principal(StrEnum):
    """Login principals, one per service. Values are the PostgreSQL login role names."""

    CONTROL = "symphony_control_svc"
    INGEST = "symphony_ingest_svc"
    EXECUTOR = "symphony_executor_svc"
    READER = "symphony_reader_svc"
    API = "symphony_api_svc"
    DELIVERY = "symphony_delivery_svc"


ROLES_OF_PRINCIPAL: dict[Principal, frozenset[Role]] = {
    Principal.CONTROL: frozenset({Role.CONTROL}),
    Principal.INGEST: frozenset({Role.INGEST}),
    Principal.EXECUTOR: frozenset({Role.EXECUTOR}),
    Principal.READER: frozenset({Role.READONLY, Role.AUDITOR}),
    Principal.API: frozenset({Role.INGEST, Role.READONLY, Role.OPERATOR, Role.WEBHOOKS}),
    Principal.DELIVERY: frozenset({Role.DELIVERY}),
}

# Which principal serves a role when a Database holds several that could: the single-purpose
# principal first (what `Database.open` has always used), the API's shared login after it.
_PREFERENCE: tuple[Principal, ...] = (
    Principal.CONTROL, Principal.INGEST, Principal.EXECUTOR, Principal.READER, Principal.API,
    Principal.DELIVERY,
)


def route_roles(held: Collection[Principal]) -> dict[Role, Principal]:
    """The principal each role goes through, among the principals `held`.

    A role no held principal may become is absent: asking for it is refused before any
    connection is made.
    """
    routes: dict[Role, Principal] = {}
    for principal in _PREFERENCE:
        if principal in held:
            for role in ROLES_OF_PRINCIPAL[principal]:
                routes.setdefault(role, principal)
    return routes


PRINCIPAL_FOR_ROLE: dict[Role, Principal] = route_roles(list(Principal))
"""The routing of a Database that holds every principal (admin or embedded mode)."""


class Service(StrEnum):
    """The long-running services that can run from their own principal's DSN alone."""

    API = "api"
    WORKER = "worker"
    REPAIR = "repair"
    DELIVERY = "delivery"


SERVICE_PRINCIPAL: dict[Service, Principal] = {
    Service.API: Principal.API,
    Service.WORKER: Principal.EXECUTOR,
    Service.REPAIR: Principal.EXECUTOR,
    Service.DELIVERY: Principal.DELIVERY,
}
"""The only principal each service logs in as (the API: ingest, readonly, operator and
webhooks; the worker and the repair: executor; the webhook delivery service: delivery)."""

OWNER_ROLE = "symphony_owner"
