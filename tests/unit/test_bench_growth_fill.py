"""`make bench`'s growth fill (scripts/bench/growth.py), run at a tiny size against a fresh
database, so a fill the ledger's rules refuse breaks here and not in a bench run.

Failed on a fresh clone of main before (issue 14): the fill's INSERT .. SELECT had no ORDER BY,
so nothing guaranteed an item's attempt 1 was inserted before its attempt 2, and the sequence
check refused the chunk ("attempt_no must continue the item's history without gaps"). The
fill now orders by item and attempt; here it runs in several chunks (a chunk boundary inside
the fill, as the bench's 100,000-row chunks) and the whole audit passes on what it wrote.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from tests.support.database import admin_dsn_of, unique

from symphony.db import Database, DatabaseSettings, test_only
from symphony.outbox import AccessStore, verify

GROWTH = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "growth.py"
PAYLOAD = {"amount": "10.00", "currency": "EUR", "destination": "acct-1"}


def _growth() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_growth", GROWTH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("chunk", [7, 100_000], ids=["several-chunks", "one-chunk"])
async def test_the_growth_fill_writes_a_ledger_the_database_and_the_audit_accept(
    isolated_settings: DatabaseSettings, isolated_db: Database, chunk: int,
) -> None:
    growth = _growth()
    dsn = admin_dsn_of(isolated_settings)
    participant = unique("bench-growth")
    await AccessStore(isolated_db).add_participant(participant, "benchmark participant")
    before = growth.ledger_rows(dsn)

    offset = growth.grow_ledger_to(dsn, participant, before + 60, 0, payload=PAYLOAD,
                                   chunk=chunk)
    offset = growth.grow_ledger_to(dsn, participant, before + 100, offset, payload=PAYLOAD,
                                   chunk=chunk)

    assert offset == 50
    assert growth.ledger_rows(dsn) == before + 100
    rows = await test_only.query_no_role(
        dsn, "SELECT a.attempt_no, a.state::text AS state, count(*) AS n "
             "  FROM symphony.payment_outbox_attempts a "
             "  JOIN symphony.payment_instruction_registry r ON r.outbox_id = a.outbox_id "
             " WHERE r.participant_id = %s GROUP BY 1, 2 ORDER BY 1", (participant,))
    assert [(r["attempt_no"], r["state"], r["n"]) for r in rows] == [
        (1, "DISPATCHING", 50), (2, "DISPATCHED", 50)]
    report = await verify(isolated_db)
    assert report.ok, [c.as_dict() for c in report.failed()]
