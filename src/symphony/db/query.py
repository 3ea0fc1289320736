"""Named runtime queries, loaded once from `sql/queries.sql`.

Callers outside `symphony.db` name a query; they never hand SQL to the boundary. The file
holds blocks that start with `-- name: <query_name>`; the text is trusted (it ships with the
package), which is what lets it be typed as `LiteralString`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import LiteralString

from symphony.db.error import SymphonyError

_HEADER = re.compile(r"^--\s*name:\s*([a-z][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    sql: LiteralString


def parse_queries(text: str) -> dict[str, Query]:
    """Split a queries file into named queries; names must be unique and bodies non-empty."""
    queries: dict[str, Query] = {}
    headers = list(_HEADER.finditer(text))
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        body_lines = [
            line for line in text[header.end():end].splitlines()
            if line.strip() and not line.lstrip().startswith("--")
        ]
        body = "\n".join(body_lines).strip().rstrip(";").strip()
        name = header.group(1)
        if not body:
            raise ValueError(f"query {name!r} has no SQL")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        # Trusted text: it ships inside the package, never built from input.
        queries[name] = Query(name=name, sql=body)
    return queries


@cache
def all_queries() -> dict[str, Query]:
    text = resources.files("symphony.db").joinpath("sql", "queries.sql").read_text("utf-8")
    return parse_queries(text)


def get_query(name: str) -> Query:
    """The named query, or a clear error before any SQL runs."""
    try:
        return all_queries()[name]
    except KeyError:
        raise SymphonyError(
            f"unknown query name {name!r}", code="UNKNOWN_QUERY", context="query-lookup"
        ) from None
