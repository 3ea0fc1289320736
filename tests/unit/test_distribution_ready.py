"""Readiness for a distributed PostgreSQL (Citus), sharded by participant_id, checked on the
catalog of a migrated database (docs/scale-out.md):

* every per-item table (every table of the schema that is not reference data) has
  participant_id in its primary key, in every unique constraint and unique index, and in every
  foreign key to another per-item table; no reference table refers to a per-item table;
* every hot-path function has its routing argument (participant_id, or a bucket range);
* the statements inside the bucket functions, run with one bucket and explained (auto_explain,
  JSON, nested statements), scan per-item tables only under a condition on participant_id or
  the bucket: none reads across buckets where it should read one.

The check is proven too: it passes on the shipped migrations and fails on a throwaway
database where a scratch migration (applied as the owner) plants a table or an index without
participant_id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from tests.support.database import DatabaseFactory, admin_dsn_of
from tests.support.outbox import register_participant

from symphony.db import Database, DatabaseSettings, test_only
from symphony.db.query import get_query
from symphony.outbox import BucketRange, OutboxStore, PaymentInstruction

# Small, replicated to every node, read by every shard: rails, the retry policy, currencies,
# participants and API tokens (looked up by token_id before the participant is known).
# ledger_checkpoints: one row per checkpoint, taken over every shard at once.
REFERENCE_TABLES = frozenset(
    {"payment_rails", "outbox_retry_policy", "currencies", "participants", "api_tokens",
     "ledger_checkpoints"})

# Hot-path functions and the argument(s) a router places their call by.
ROUTED_FUNCTIONS = {
    "enqueue_payment_outbox": ("p_participant_id",),
    "participant_payment": ("p_participant_id",),
    "participant_payment_attempts": ("p_participant_id",),
    "participant_payments": ("p_participant_id",),
    "claim_outbox_batch": ("p_bucket_from", "p_bucket_to"),
    "complete_outbox_batch": ("p_bucket_from", "p_bucket_to"),
    "repair_expired_leases": ("p_bucket_from", "p_bucket_to"),
}

# The named queries (queries.sql) that must stay within one bucket when given one.
ONE_BUCKET_QUERIES = (
    "claim_outbox_batch_buckets", "complete_outbox_batch_buckets",
    "repair_expired_leases_buckets",
)

_KEYS = """
SELECT c.relname AS table_name, k.conname AS name, k.contype::text AS kind,
       ARRAY(SELECT a.attname::text FROM unnest(k.conkey) n
               JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = n) AS columns,
       f.relname AS ref_table,
       ARRAY(SELECT a.attname::text FROM unnest(k.confkey) n
               JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = n) AS ref_columns
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid
  LEFT JOIN pg_class f ON f.oid = k.confrelid
 WHERE c.relnamespace = 'symphony'::regnamespace AND k.contype IN ('p', 'u', 'f')
"""

_TABLES = """
SELECT c.relname AS table_name,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                  AND a.attname = 'participant_id' AND NOT a.attisdropped) AS has_participant
  FROM pg_class c
 WHERE c.relnamespace = 'symphony'::regnamespace AND c.relkind IN ('r', 'p')
"""

_UNIQUE_INDEXES = """
SELECT c.relname AS table_name, i.relname AS name,
       ARRAY(SELECT a.attname::text FROM unnest(x.indkey) n
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = n) AS columns,
       x.indexprs IS NOT NULL AS has_expressions
  FROM pg_index x
  JOIN pg_class c ON c.oid = x.indrelid
  JOIN pg_class i ON i.oid = x.indexrelid
 WHERE c.relnamespace = 'symphony'::regnamespace AND x.indisunique
   -- The indexes of primary keys and unique constraints are checked as those.
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                    WHERE k.conindid = x.indexrelid AND k.contype IN ('p', 'u'))
"""

_FUNCTIONS = """
SELECT p.proname::text AS name, coalesce(p.proargnames, '{}')::text[] AS args
  FROM pg_proc p
 WHERE p.pronamespace = 'symphony'::regnamespace
"""


def schema_problems(dsn: str) -> list[str]:
    """What keeps the schema from being distributed by participant_id (empty: ready)."""
    problems: list[str] = []
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        tables = {r["table_name"]: r["has_participant"] for r in conn.execute(_TABLES)}
        per_item = {t for t in tables if t not in REFERENCE_TABLES}
        for table in sorted(per_item):
            if not tables[table]:
                problems.append(f"{table}: per-item table without a participant_id column")
        keyed = {r["table_name"] for r in conn.execute(_KEYS) if r["kind"] == "p"}
        for table in sorted(per_item - keyed):
            problems.append(f"{table}: per-item table without a primary key")
        for k in conn.execute(_KEYS):
            if k["table_name"] in REFERENCE_TABLES:
                if k["kind"] == "f" and k["ref_table"] in per_item:
                    problems.append(f"{k['name']}: reference table {k['table_name']} refers to "
                                    f"per-item table {k['ref_table']}")
                continue
            if k["kind"] in ("p", "u") and "participant_id" not in k["columns"]:
                problems.append(f"{k['name']}: key of {k['table_name']} without participant_id")
            if k["kind"] == "f" and k["ref_table"] in per_item and not (
                    "participant_id" in k["columns"] and "participant_id" in k["ref_columns"]):
                problems.append(f"{k['name']}: foreign key between per-item tables without "
                                f"participant_id on both sides")
        for ix in conn.execute(_UNIQUE_INDEXES):
            if ix["table_name"] in per_item and (
                    "participant_id" not in ix["columns"] or ix["has_expressions"]):
                problems.append(f"{ix['name']}: unique index of {ix['table_name']} without "
                                f"participant_id as a column")
        overloads: dict[str, list[list[str]]] = {}
        for f in conn.execute(_FUNCTIONS):
            overloads.setdefault(f["name"], []).append(list(f["args"]))
        for name, needed in ROUTED_FUNCTIONS.items():
            if not any(set(needed) <= set(args) for args in overloads.get(name, [])):
                problems.append(f"{name}: no signature with its routing argument(s) "
                                f"{', '.join(needed)}")
    return problems


_CONDITIONS = ("Index Cond", "Filter", "Recheck Cond", "TID Cond")
_JOIN_CONDITIONS = ("Hash Cond", "Merge Cond", "Join Filter")


def _scans(node: dict[str, Any], joins: str = "") -> Iterator[tuple[dict[str, Any], str]]:
    """Every relation scan, with the join conditions of the joins above it: a scan joined on
    participant_id to rows of one bucket is a co-located join, on the same shard."""
    if "Relation Name" in node and "Scan" in node.get("Node Type", ""):
        yield node, joins
    here = " ".join(str(node.get(c, "")) for c in _JOIN_CONDITIONS)
    for child in node.get("Plans", []):
        yield from _scans(child, f"{joins} {here}".strip())


def plan_problems(plans: list[dict[str, Any]], per_item: set[str]) -> list[str]:
    """Scans of per-item tables with no condition on participant_id or bucket, neither their
    own nor that of a join they are in."""
    problems: list[str] = []
    for plan in plans:
        for scan, joins in _scans(plan["Plan"]):
            if scan["Relation Name"] not in per_item:
                continue
            conditions = " ".join(str(scan.get(c, "")) for c in _CONDITIONS) + " " + joins
            if "participant_id" not in conditions and "bucket" not in conditions:
                problems.append(
                    f"{scan['Node Type']} on {scan['Relation Name']} reads across buckets "
                    f"({conditions.strip() or 'no condition'}) in: "
                    f"{plan.get('Query Text', '').strip()[:160]}")
    return problems


async def explained_one_bucket(dsn: str, name: str, params: dict[str, Any]) -> list[Any]:
    """The JSON plans of every statement the named query runs (nested ones included), rolled
    back afterwards."""
    statement = get_query(name).sql
    notices: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                        "SET auto_explain.log_nested_statements = on",
                        "SET auto_explain.log_format = 'json'",
                        "SET auto_explain.log_level = 'notice'",
                        "SET client_min_messages = 'notice'"):
            await conn.execute(setting)  # type: ignore[arg-type]
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        async with conn.transaction(force_rollback=True):
            await conn.execute(statement, params)  # type: ignore[arg-type]
    plans = []
    for notice in notices:
        start = notice.find("{")
        if notice.startswith("duration:") and start >= 0:
            plans.append(json.loads(notice[start:]))
    return plans


# -- the fixtures: a migrated database with items in several buckets --------------------------


@pytest.fixture(scope="module")
def ready_settings(make_database: DatabaseFactory) -> DatabaseSettings:
    return make_database()


@pytest.fixture(scope="module")
def ready_dsn(ready_settings: DatabaseSettings) -> str:
    return admin_dsn_of(ready_settings)


@pytest.fixture
async def seeded(ready_settings: DatabaseSettings, ready_dsn: str) -> dict[str, int]:
    """Items of a dozen participants, some leased with an expired lease; their buckets."""
    db = await Database.open(ready_settings)
    try:
        store = OutboxStore(db)
        for n in range(12):
            p = await register_participant(db)
            for i in range(3):
                await store.enqueue(PaymentInstruction(
                    instruction_id=f"ready-{n}-{i}", idempotency_key=f"k-{n}-{i}",
                    participant_id=p, rail_type="ACH",
                    payload={"amount": "1.00", "currency": "EUR", "destination": "d"}))
        await store.claim("ready-worker", 12, 60)
        await test_only.query_no_role(
            ready_dsn, "UPDATE symphony.payment_outbox_pending "
                       "   SET lease_expires_at = now() - interval '1 s' "
                       " WHERE lease_token IS NOT NULL")
        await test_only.query_no_role(ready_dsn, "ANALYZE")
        return await store.participant_buckets()
    finally:
        await db.close()


# -- the check on today's migrations ------------------------------------------------------------


def test_every_per_item_key_carries_the_participant(ready_dsn: str) -> None:
    assert schema_problems(ready_dsn) == []


@pytest.mark.auto_explain
async def test_bucket_statements_stay_within_one_bucket(
    ready_dsn: str, seeded: dict[str, int]
) -> None:
    with psycopg.connect(ready_dsn, row_factory=dict_row) as conn:
        per_item = {r["table_name"] for r in conn.execute(_TABLES)} - REFERENCE_TABLES
        leased = conn.execute(
            "SELECT outbox_id, lease_token, bucket FROM symphony.payment_outbox_pending "
            " WHERE lease_token IS NOT NULL LIMIT 1").fetchone()
        due = conn.execute(
            "SELECT bucket FROM symphony.payment_outbox_pending "
            " WHERE lease_token IS NULL LIMIT 1").fetchone()
    assert leased is not None and due is not None
    bucket = int(leased["bucket"])
    one = {"bucket_from": bucket, "bucket_to": bucket}
    calls = {
        # A bucket with due items: the claim leases some, so the ledger's triggers run too.
        "claim_outbox_batch_buckets": {
            "worker_id": "ready", "batch_size": 8, "lease_seconds": 60,
            "bucket_from": int(due["bucket"]), "bucket_to": int(due["bucket"])},
        "repair_expired_leases_buckets": {"limit": 8, "threshold_seconds": None, **one},
        "complete_outbox_batch_buckets": {
            "outbox_ids": [leased["outbox_id"]], "lease_tokens": [leased["lease_token"]],
            "outcomes": ["RETRYABLE"], "error_codes": ["BUSY"], "error_details": [None],
            "ambiguous": [False], "rail_transaction_ids": [None], **one},
    }
    assert set(calls) == set(ONE_BUCKET_QUERIES)
    for name, params in calls.items():
        plans = await explained_one_bucket(ready_dsn, name, params)
        scanned = {s["Relation Name"] for p in plans for s, _ in _scans(p["Plan"])}
        assert "payment_outbox_pending" in scanned, (name, plans)
        assert plan_problems(plans, per_item) == [], name
        if name == "claim_outbox_batch_buckets":
            # The claim leased items and appended their ledger rows: the transition check
            # (a trigger) read each item's own history, within its participant.
            assert "payment_outbox_attempts" in scanned, plans


# -- the check itself: it fails on a planted table or index ---------------------------------------


def test_the_plan_check_flags_a_scan_across_buckets() -> None:
    plan = {"Query Text": "SELECT 1", "Plan": {
        "Node Type": "Index Scan", "Relation Name": "payment_outbox_pending",
        "Index Cond": "(outbox_id = $1)"}}
    assert plan_problems([plan], {"payment_outbox_pending"})
    plan["Plan"]["Filter"] = "((bucket >= 3) AND (bucket <= 3))"
    assert plan_problems([plan], {"payment_outbox_pending"}) == []
    # A scan under a join on participant_id is co-located; under a join on outbox_id alone
    # it is not.
    joined = {"Query Text": "SELECT 2", "Plan": {
        "Node Type": "Hash Join", "Hash Cond": "(r.outbox_id = l.outbox_id)",
        "Plans": [{"Node Type": "Seq Scan", "Relation Name": "payment_instruction_registry"}]}}
    assert plan_problems([joined], {"payment_instruction_registry"})
    joined["Plan"]["Hash Cond"] = ("((r.outbox_id = l.outbox_id) AND "
                                   "(r.participant_id = l.participant_id))")
    assert plan_problems([joined], {"payment_instruction_registry"}) == []


PLANTED = {
    "table_without_participant": (
        "CREATE TABLE symphony.payment_outbox_notes (\n"
        "    note_id   bigint NOT NULL,\n"
        "    outbox_id uuid   NOT NULL,\n"
        "    note      text   NOT NULL,\n"
        "    CONSTRAINT payment_outbox_notes_pkey PRIMARY KEY (note_id)\n"
        ");\n",
        ["payment_outbox_notes: per-item table without a participant_id column",
         "payment_outbox_notes_pkey: key of payment_outbox_notes without participant_id"]),
    "key_without_participant": (
        "CREATE TABLE symphony.payment_outbox_tags (\n"
        "    tag_id         bigint NOT NULL,\n"
        "    participant_id text   NOT NULL,\n"
        "    outbox_id      uuid   NOT NULL,\n"
        "    CONSTRAINT payment_outbox_tags_pkey PRIMARY KEY (tag_id),\n"
        "    CONSTRAINT payment_outbox_tags_outbox_fkey FOREIGN KEY (outbox_id, participant_id)\n"
        "        REFERENCES symphony.payment_instruction_registry (outbox_id, participant_id)\n"
        ");\n",
        ["payment_outbox_tags_pkey: key of payment_outbox_tags without participant_id"]),
    "unique_index_without_participant": (
        "CREATE UNIQUE INDEX payment_outbox_attempts_rail_tx_idx\n"
        "    ON symphony.payment_outbox_attempts (rail_transaction_id);\n",
        ["payment_outbox_attempts_rail_tx_idx: unique index of payment_outbox_attempts "
         "without participant_id as a column"]),
}


@pytest.mark.parametrize("case", [
    "table_without_participant", "key_without_participant",
    "unique_index_without_participant",
])
async def test_the_check_fails_on_a_planted_scratch_migration(
    make_database: DatabaseFactory, tmp_path: Path, case: str
) -> None:
    sql, expected = PLANTED[case]
    assert expected is not None
    scratch = tmp_path / "9999_scratch.sql"
    scratch.write_text(sql, encoding="utf-8")
    dsn = admin_dsn_of(make_database())
    assert schema_problems(dsn) == []
    await test_only.query_as_owner(dsn, scratch.read_text(encoding="utf-8"))
    assert schema_problems(dsn) == expected


async def test_the_check_fails_on_a_function_that_lost_its_routing_argument(
    make_database: DatabaseFactory,
) -> None:
    dsn = admin_dsn_of(make_database())
    await test_only.query_as_owner(
        dsn, "DROP FUNCTION symphony.repair_expired_leases(integer, integer, integer, integer)")
    assert schema_problems(dsn) == [
        "repair_expired_leases: no signature with its routing argument(s) "
        "p_bucket_from, p_bucket_to"]


def test_buckets_cover_a_fleet_without_gaps() -> None:
    # The four ranges of docs/scale-out.md's example fleet are disjoint and cover 0-255.
    ranges = [BucketRange(0, 63), BucketRange(64, 127), BucketRange(128, 191),
              BucketRange(192, 255)]
    covered = [b for r in ranges for b in range(r.first, r.last + 1)]
    assert covered == list(range(256))
