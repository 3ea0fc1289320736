"""`symphony worker` with a fault point: the real command, stopped dead at one point of its cycle.

Run as `python -m tests.support.fault_worker worker ...` (any `symphony` arguments). The hook
lives here, in the tests, and nowhere in the product: the shipped wheel has no fault switch to
leave on by mistake. `SYMPHONY_FAULT_POINT` names the point and `SYMPHONY_FAULT_HIT` which
time it is reached (1 = the first). On that hit the task that reached it prints
`FAULT <point>` on stdout and blocks for ever, so the test can SIGKILL the process exactly
there; the worker's other tasks (other dispatches, the repair loop) go on meanwhile, as they
would in a process that dies at a random moment.

Points:
    before_claim_commit       the claim statement ran, its transaction is not committed
    after_claim_commit        the items are leased, no rail call made yet
    during_rail_call          a dispatch is on its way to the rail, no answer yet
    before_completion_commit  the rail answered, the completion statement ran, not committed
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from symphony import cli
from symphony.db.database import Database, Transaction
from symphony.outbox import OutboxStore
from symphony.rails import HttpRailClient

POINTS = ("before_claim_commit", "after_claim_commit", "during_rail_call",
          "before_completion_commit")
# How long a dispatch is given to reach the rail before the worker stops dead.
_REQUEST_ON_ITS_WAY_SECONDS = 0.02

_point = os.environ.get("SYMPHONY_FAULT_POINT", "")
_hits_left = int(os.environ.get("SYMPHONY_FAULT_HIT", "1"))


async def _reached(point: str) -> None:
    """Count a hit of `point`; on the chosen one, announce it and never return."""
    global _hits_left
    if point != _point:
        return
    _hits_left -= 1
    if _hits_left != 0:
        return
    sys.stdout.write(f"FAULT {point}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


# The statements whose uncommitted transaction is a fault point. `Database.fetch_all` sends a
# single statement and its COMMIT back to back (pipelined), leaving no moment in between to
# stop at; for these two the faulting worker takes the explicit transaction path instead,
# which runs the same statement as the same role and commits it the same way.
_FAULTED_STATEMENTS = frozenset({"claim_outbox_batch", "complete_outbox_batch"})


def _install() -> None:
    database_fetch_all: Callable[..., Any] = Database.fetch_all

    async def fetch_all_in_transaction(
        self: Database, role: Any, query: str, params: Any = None, *, label: str | None = None
    ) -> Any:
        if query not in _FAULTED_STATEMENTS:
            return await database_fetch_all(self, role, query, params, label=label)
        async with self.transaction(role, label=label or query) as tx:
            return await tx.fetch_all(query, params)

    fetch_all: Callable[..., Any] = Transaction.fetch_all

    async def transaction_fetch_all(self: Transaction, query: str, params: Any = None) -> Any:
        rows = await fetch_all(self, query, params)
        if query == "claim_outbox_batch" and rows:
            await _reached("before_claim_commit")
        elif query == "complete_outbox_batch":
            await _reached("before_completion_commit")
        return rows

    claim: Callable[..., Any] = OutboxStore.claim

    async def store_claim(self: OutboxStore, *args: Any, **kwargs: Any) -> Any:
        items = await claim(self, *args, **kwargs)
        if items:
            await _reached("after_claim_commit")
        return items

    dispatch: Callable[..., Any] = HttpRailClient.dispatch

    async def rail_dispatch(self: HttpRailClient, *args: Any, **kwargs: Any) -> Any:
        call = asyncio.ensure_future(dispatch(self, *args, **kwargs))
        if _point == "during_rail_call":
            await asyncio.wait([call], timeout=_REQUEST_ON_ITS_WAY_SECONDS)
            if not call.done():
                await _reached("during_rail_call")
        return await call

    Database.fetch_all = fetch_all_in_transaction  # type: ignore[method-assign]
    Transaction.fetch_all = transaction_fetch_all  # type: ignore[method-assign]
    OutboxStore.claim = store_claim  # type: ignore[method-assign]
    HttpRailClient.dispatch = rail_dispatch  # type: ignore[method-assign]


if __name__ == "__main__":
    if _point not in (*POINTS, ""):
        raise SystemExit(f"unknown SYMPHONY_FAULT_POINT {_point!r}: one of {', '.join(POINTS)}")
    _install()
    sys.exit(cli.main(sys.argv[1:]))
