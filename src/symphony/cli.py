"""The `symphony` command.

    symphony run [--demo [--demo-count N]]   the whole system (embedded PostgreSQL by default)
    symphony migrate [--[no-]provision]       apply migrations (and provision principals in dev)
    symphony worker [--once]                  executor worker and zombie repair
    symphony repair [--once]                  requeue items whose lease expired (executor role)
    symphony api [--host H] [--port P]        the HTTP API (participant and operator)
    symphony enqueue ...                      submit one payment instruction
    symphony status                           queue counts and zombies
    symphony cancel ID --reason R [--by NAME] cancel a payment not yet on the rail (control)
    symphony audit verify [--since T | --since-checkpoint]  I1-I10 and the ledger's digests (auditor)
    symphony audit checkpoint                 anchor every ledger chain (control role)
    symphony audit export-checkpoints         the checkpoints as JSON lines (auditor role)
    symphony participants add|list|revoke     who may submit payments (control role)
    symphony tokens issue|revoke              API tokens, shown once at issue (control role)
    symphony rail-sim                         the payment rail simulator
    symphony delivery [--once]                webhook delivery service (delivery role)
    symphony webhooks list|deliveries|disable|enable|replay   webhook endpoints (control role)
    symphony db url | db stop                 the admin DSN; stop the embedded server

`--json` prints one JSON document on stdout, for scripts; an error then is
`{"error": {code, message, sqlstate, context, incident_id}}` on stdout too. Without `--json`
an error is one line on stderr: `error [CODE]: message (incident ID)`.

Exit codes: 0 success; 1 an operation failed (database unavailable, idempotency conflict,
audit violations, ...); 2 the command cannot run as given (bad arguments, bad input, bad or
missing configuration, schema not migrated). Logs go to stderr at `SYMPHONY_LOG_LEVEL`
(default INFO), as JSON lines unless stderr is a terminal (see `symphony.log`).

Each command logs in as one principal: `api` as symphony_api_svc (ingest, readonly, operator),
`worker` and `repair` as symphony_executor_svc, `enqueue` as symphony_ingest_svc, `status`,
`audit verify` and `audit export-checkpoints` as symphony_reader_svc, `audit checkpoint` as
symphony_control_svc, `delivery` as symphony_delivery_svc. Given
that principal's own DSN (`SYMPHONY_<PRINCIPAL>_DATABASE_URL`) a command needs neither the
admin DSN nor the credentials file; without it, it uses the admin/embedded mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from pydantic import ValidationError

from symphony import log as symphony_log
from symphony import strict_json
from symphony.db import (
    ConfigurationError,
    Database,
    DatabaseSettings,
    EmbeddedServer,
    InvalidRequestError,
    MigrationError,
    NotFoundError,
    Principal,
    Role,
    Service,
    SymphonyError,
    UnsupportedServerError,
    bootstrap,
    resolve_endpoint,
)
from symphony.outbox import (
    AccessStore,
    AuditReport,
    AuditStore,
    Checkpoint,
    OutboxStore,
    Participant,
    PaymentInstruction,
    ReviewDecision,
    TokenKind,
    TokenScope,
)
from symphony.outbox.cancel import CancelOutcome, CancelResult, CancelStore
from symphony.outbox.operators import OperatorStore
from symphony.repair import ZombieRepairConfig, ZombieRepairWorker, zombie_threshold_from_env
from symphony.services.api import ApiConfig
from symphony.services.delivery import DeliveryConfig, DeliveryProcess
from symphony.services.rail_sim import add_arguments as add_rail_sim_arguments
from symphony.services.rail_sim import config_from_args as rail_sim_config_from_args
from symphony.services.rail_sim import run_rail_sim
from symphony.services.system import RunOptions, run_system
from symphony.services.system.api import build_api_server
from symphony.services.worker import WorkerConfig, WorkerProcess, stop_on_signals
from symphony.webhooks import WebhookSettings, WebhookStore, configured_secret_box
from symphony.webhooks.store import COMMAND_LINE_REPLAY_REASON, REPLAYED

log = logging.getLogger("symphony.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_USAGE_ERRORS: tuple[type[SymphonyError], ...] = (
    ConfigurationError, InvalidRequestError, MigrationError, UnsupportedServerError,
)
_AUDIT_LIMIT_DEFAULT = 100

Handler = Callable[[argparse.Namespace], int]
T = TypeVar("T")


class UsageError(ConfigurationError):
    """The command line asks for something that cannot be done."""

    default_code = "USAGE_ERROR"


# -- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    try:
        configure_logging(os.environ.get("SYMPHONY_LOG_LEVEL"))
        handler: Handler = args.handler
        return handler(args)
    except SymphonyError as exc:
        return report_error(exc, as_json=as_json)
    except KeyboardInterrupt:
        return 130


def report_error(exc: SymphonyError, *, as_json: bool) -> int:
    """Print an expected error the way the caller asked for; returns the exit code."""
    if as_json:
        print(json.dumps({"error": exc.as_dict()}, sort_keys=True), flush=True)
    else:
        print(f"error [{exc.code}]: {exc.message} (incident {exc.incident_id})",
              file=sys.stderr, flush=True)
    return EXIT_USAGE if isinstance(exc, _USAGE_ERRORS) else EXIT_FAILED


def configure_logging(level_name: str | None) -> None:
    """Logs of every command: see `symphony.log` (JSON lines off a terminal, redacted)."""
    symphony_log.configure_logging(level_name, os.environ.get("SYMPHONY_LOG_FORMAT"))


def database_settings() -> DatabaseSettings:
    return DatabaseSettings.load()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """One JSON document with `--json`, else the human text."""
    if getattr(args, "json", False):
        print(json.dumps(data, default=_json_default, sort_keys=True), flush=True)
    else:
        print(text, flush=True)


def _json_default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symphony",
        description="Symphony Outbox: a PostgreSQL-authoritative transactional payment outbox.",
        epilog="DATABASE_URL unset: an embedded PostgreSQL under SYMPHONY_HOME (.symphony).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the whole system (Ctrl-C stops it)")
    run.add_argument("--demo", action="store_true", help="enqueue sample payments and watch")
    run.add_argument("--demo-count", type=_positive_int, default=40, metavar="N",
                     help="number of demo payments (default 40)")
    run.set_defaults(handler=cmd_run)

    migrate = commands.add_parser("migrate", help="apply migrations, provision principals")
    migrate.add_argument(
        "--provision", action=argparse.BooleanOptionalAction, default=None,
        help="give the service principals generated passwords, kept in SYMPHONY_HOME's "
        "credentials file (default: with the embedded server or SYMPHONY_ENV development/"
        "test; in production the operator sets the passwords, see docs/deployment.md)",
    )
    _json_flag(migrate)
    migrate.set_defaults(handler=cmd_migrate)

    worker = commands.add_parser("worker", help="run the executor worker and the zombie repair")
    worker.add_argument("--once", action="store_true",
                        help="one repair cycle and one claim/dispatch/complete cycle, then exit")
    worker.add_argument("--batch-size", type=_positive_int, help="items claimed per cycle")
    worker.add_argument("--concurrency", type=_positive_int, help="rail calls in flight at most")
    worker.add_argument("--rail-url", help="base URL of the rail (default SYMPHONY_RAIL_URL "
                        "or http://127.0.0.1:8765)")
    worker.add_argument("--dispatch-timeout", type=float, metavar="SECONDS",
                        help="bound of one dispatch call (default 10)")
    worker.add_argument("--lookup-timeout", type=float, metavar="SECONDS",
                        help="bound of one rail lookup (default 5)")
    worker.add_argument("--worker-id", help="lease holder name (default hostname-pid)")
    worker.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on 127.0.0.1:PORT")
    _json_flag(worker)
    worker.set_defaults(handler=cmd_worker)

    repair = commands.add_parser("repair", help="requeue items whose lease expired")
    repair.add_argument("--once", action="store_true", help="one repair cycle, then exit")
    repair.add_argument("--limit", type=_positive_int, default=500,
                        help="most items per cycle (default 500)")
    _json_flag(repair)
    repair.set_defaults(handler=cmd_repair)

    api = commands.add_parser("api", help="run the HTTP API (Ctrl-C stops it)")
    api.add_argument("--host", help="interface to bind (default SYMPHONY_API_HOST or 127.0.0.1)")
    api.add_argument("--port", type=int,
                     help="port to bind, 0 picks a free one (default SYMPHONY_API_PORT or 8080)")
    _json_flag(api)
    api.set_defaults(handler=cmd_api)

    enqueue = commands.add_parser("enqueue", help="submit one payment instruction")
    enqueue.add_argument("--instruction-id", required=True)
    enqueue.add_argument("--idempotency-key", required=True)
    enqueue.add_argument("--participant", required=True,
                         help="participant id (registered: symphony participants add)")
    enqueue.add_argument("--rail", required=True, help="rail type, e.g. RTP, ACH, SEPA_CT")
    enqueue.add_argument("--amount", help="decimal string, e.g. 12.50")
    enqueue.add_argument("--currency", help="ISO 4217 code, e.g. EUR")
    enqueue.add_argument("--destination", help="destination account")
    enqueue.add_argument("--payload", metavar="JSON",
                         help="the whole payload as a JSON object (instead of the three above)")
    _json_flag(enqueue)
    enqueue.set_defaults(handler=cmd_enqueue)

    status = commands.add_parser("status", help="queue counts and zombies")
    _json_flag(status)
    status.set_defaults(handler=cmd_status)

    review = commands.add_parser(
        "review", help="items that may have executed and that the rail did not settle")
    review_commands = review.add_subparsers(dest="review_command", required=True,
                                            metavar="ACTION")
    review_list = review_commands.add_parser("list", help="items under review, oldest first")
    review_list.add_argument("--limit", type=_positive_int, default=100,
                             help="most items listed (default 100)")
    _json_flag(review_list)
    review_list.set_defaults(handler=cmd_review_list)
    resolve = review_commands.add_parser(
        "resolve", help="record the rail's confirmed outcome of an item under review")
    resolve.add_argument("outbox_id", type=_outbox_id, help="the item's outbox_id")
    resolve.add_argument("--outcome", required=True,
                         choices=[d.value.lower() for d in ReviewDecision],
                         help="dispatched or failed as the rail confirms, or retry")
    resolve.add_argument("--by", required=True, metavar="OPERATOR",
                         help="who decided (recorded in the ledger)")
    resolve.add_argument("--reason", required=True,
                         help="the evidence, e.g. the rail's statement reference")
    resolve.add_argument("--rail-transaction-id", metavar="ID",
                         help="the rail's transaction id (required for dispatched)")
    _json_flag(resolve)
    resolve.set_defaults(handler=cmd_review_resolve)

    cancel = commands.add_parser(
        "cancel", help="cancel a payment no attempt of which can have reached the rail")
    cancel.add_argument("outbox_id", type=_outbox_id, help="the payment's outbox_id")
    cancel.add_argument("--reason", required=True,
                        help="why (recorded in the ledger and the operator actions)")
    cancel.add_argument("--by", default="cli", metavar="OPERATOR",
                        help="who cancels (recorded; default: cli)")
    _json_flag(cancel)
    cancel.set_defaults(handler=cmd_cancel)
    history = commands.add_parser(
        "history", help="one item's ledger and the operator actions on it (who, why)")
    history.add_argument("outbox_id", type=_outbox_id, help="the item's outbox_id")
    _json_flag(history)
    history.set_defaults(handler=cmd_history)

    audit = commands.add_parser("audit", help="auditor checks")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_commands.add_parser(
        "verify", help="check every invariant (I1-I10) and the ledger's digests, read-only")
    verify.add_argument("--limit", type=_positive_int, default=_AUDIT_LIMIT_DEFAULT,
                        help=f"most violations listed per check (default "
                             f"{_AUDIT_LIMIT_DEFAULT}, at most 10000); all are counted")
    scope = verify.add_mutually_exclusive_group()
    scope.add_argument("--since", type=_timestamp, metavar="TIMESTAMP",
                       help="incremental: only items registered or with a ledger row at or "
                            "after this ISO 8601 time (with a time zone)")
    scope.add_argument("--since-checkpoint", action="store_true",
                       help="the routine audit: only what was written after the latest "
                            "checkpoint, and every live item (full without a checkpoint; "
                            "without either flag the audit is full)")
    _json_flag(verify)
    verify.set_defaults(handler=cmd_audit_verify)
    checkpoint = audit_commands.add_parser(
        "checkpoint", help="anchor every ledger chain in a new checkpoint (control role)")
    _json_flag(checkpoint)
    checkpoint.set_defaults(handler=cmd_audit_checkpoint)
    export = audit_commands.add_parser(
        "export-checkpoints",
        help="every checkpoint as JSON lines, to keep outside the database (auditor role)")
    export.set_defaults(handler=cmd_audit_export_checkpoints)

    participants = commands.add_parser("participants", help="who may submit payments")
    participant_commands = participants.add_subparsers(
        dest="participants_command", required=True, metavar="ACTION")
    p_add = participant_commands.add_parser("add", help="register an ACTIVE participant")
    p_add.add_argument("participant_id", metavar="ID")
    p_add.add_argument("--name", required=True, help="display name")
    _json_flag(p_add)
    p_add.set_defaults(handler=cmd_participants_add)
    p_list = participant_commands.add_parser("list", help="every participant")
    _json_flag(p_list)
    p_list.set_defaults(handler=cmd_participants_list)
    p_revoke = participant_commands.add_parser(
        "revoke", help="revoke a participant and all its tokens (for good); its payments "
                       "already accepted still go on (obligations)")
    p_revoke.add_argument("participant_id", metavar="ID")
    _json_flag(p_revoke)
    p_revoke.set_defaults(handler=cmd_participants_revoke)

    tokens = commands.add_parser("tokens", help="API tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True,
                                           metavar="ACTION")
    t_issue = token_commands.add_parser(
        "issue", help="issue a token (printed once: it is not stored)")
    t_issue.add_argument("--kind", required=True, choices=["participant", "operator"])
    t_issue.add_argument("--participant", metavar="ID",
                         help="the participant a participant token speaks for")
    t_issue.add_argument("--label", default="", help="what the token is for")
    t_issue.add_argument(
        "--scope", choices=["viewer", "operator"],
        help="an operator token's scope: viewer reads (the default), operator also acts "
             "(resolve, cancel, replay, revoke)")
    _json_flag(t_issue)
    t_issue.set_defaults(handler=cmd_tokens_issue)
    t_revoke = token_commands.add_parser("revoke", help="revoke a token")
    t_revoke.add_argument("token_id", metavar="TOKEN_ID")
    _json_flag(t_revoke)
    t_revoke.set_defaults(handler=cmd_tokens_revoke)

    rail_sim = commands.add_parser("rail-sim", help="run the payment rail simulator")
    add_rail_sim_arguments(rail_sim)
    rail_sim.set_defaults(handler=cmd_rail_sim)

    _webhook_commands(commands)

    db = commands.add_parser("db", help="the database server")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    url = db_commands.add_parser("url", help="print the admin DSN (starts the embedded server)")
    url.set_defaults(handler=cmd_db_url)
    stop = db_commands.add_parser("stop", help="stop the embedded server")
    _json_flag(stop)
    stop.set_defaults(handler=cmd_db_stop)
    return parser


def _webhook_commands(commands: Any) -> None:
    delivery = commands.add_parser("delivery", help="run the webhook delivery service")
    delivery.add_argument("--once", action="store_true",
                          help="one fan-out/claim/call/record cycle, then exit")
    delivery.add_argument("--worker-id", help="lease holder name (default delivery-host-pid)")
    delivery.add_argument("--batch-size", type=_positive_int, help="deliveries per cycle")
    delivery.add_argument("--concurrency", type=_positive_int, help="calls in flight at most")
    delivery.add_argument("--metrics-port", type=int, metavar="PORT",
                          help="serve Prometheus metrics on 127.0.0.1:PORT")
    _json_flag(delivery)
    delivery.set_defaults(handler=cmd_delivery)

    webhooks = commands.add_parser("webhooks", help="webhook endpoints (operator)")
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    w_list = actions.add_parser("list", help="endpoints with their health, failing first")
    w_list.add_argument("--status", choices=["enabled", "disabled", "deleted", "failing"],
                        help="only endpoints in this state")
    w_list.add_argument("--failing", action="store_true", help="same as --status failing")
    w_list.add_argument("--limit", type=_positive_int, default=100)
    _json_flag(w_list)
    w_list.set_defaults(handler=cmd_webhooks_list)
    w_deliveries = actions.add_parser("deliveries", help="an endpoint's newest deliveries")
    w_deliveries.add_argument("endpoint_id", type=_uuid_arg("an endpoint id"))
    w_deliveries.add_argument("--limit", type=_positive_int, default=50)
    _json_flag(w_deliveries)
    w_deliveries.set_defaults(handler=cmd_webhooks_deliveries)
    for name, enabled in (("disable", False), ("enable", True)):
        toggle = actions.add_parser(name, help=f"{name} an endpoint")
        toggle.add_argument("endpoint_id", type=_uuid_arg("an endpoint id"))
        toggle.add_argument("--reason", required=True, help="why (kept on the endpoint)")
        _json_flag(toggle)
        toggle.set_defaults(handler=cmd_webhooks_toggle, enabled=enabled)
    replay = actions.add_parser("replay", help="send a delivery's event again")
    replay.add_argument("delivery_id", type=_uuid_arg("a delivery id"))
    replay.add_argument("--by", required=True, metavar="OPERATOR", help="who asks (recorded)")
    replay.add_argument("--reason", default=COMMAND_LINE_REPLAY_REASON,
                        help="why (recorded in the operator actions and the payment's history)")
    _json_flag(replay)
    replay.set_defaults(handler=cmd_webhooks_replay)


def _uuid_arg(what: str) -> Callable[[str], UUID]:
    def parse(text: str) -> UUID:
        try:
            return UUID(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (a UUID)") from None
    return parse


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _outbox_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an outbox_id (a UUID)") from None


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 timestamp (e.g. 2026-01-31T12:00:00+00:00)") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add one (e.g. +00:00 or Z)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# -- commands --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = database_settings()
    _run(run_system(settings, RunOptions(demo=args.demo, demo_count=args.demo_count)))
    return EXIT_OK


def symphony_env() -> str:
    """`SYMPHONY_ENV`: production (default), development or test."""
    value = (os.environ.get("SYMPHONY_ENV") or "production").strip().lower()
    if value not in ("production", "development", "test"):
        raise ConfigurationError(
            f"SYMPHONY_ENV must be production, development or test; got {value!r}",
            code="INVALID_ENVIRONMENT",
        )
    return value


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = database_settings()
    provision: bool | None = args.provision
    if provision is None:
        # A production migration job must not invent passwords: the operator sets them.
        provision = settings.database_url is None or symphony_env() != "production"

    async def go() -> dict[str, Any]:
        boot = await bootstrap(settings, provision=provision,
                               zombie_threshold_seconds=zombie_threshold_from_env())
        if boot.embedded is not None:
            boot.embedded.stop()
        return {
            "applied": boot.migrations.applied,
            "already_applied": boot.migrations.already_applied,
            "latest": boot.migrations.latest,
            "objects_applied": boot.migrations.objects_applied,
            "database": boot.endpoint.describe(),
            "provisioned": boot.provisioned,
        }

    report = _run(go())
    if report["applied"]:
        text = (f"applied {len(report['applied'])} migration(s): "
                f"{', '.join(report['applied'])}; schema at {report['latest']}")
    elif report["objects_applied"]:
        text = f"schema at {report['latest']}"
    else:
        text = f"schema up to date at {report['latest']}; nothing to apply"
    if report["objects_applied"]:
        text += (f"; {len(report['objects_applied'])} function, view or trigger definition(s) "
                 "applied (sql/objects)")
    if report["provisioned"]:
        text += "; service principals provisioned (credentials file in SYMPHONY_HOME)"
    else:
        text += ("; principal passwords left to the operator (ALTER ROLE ... PASSWORD, see "
                 "docs/deployment.md)")
    emit(args, report, text)
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    # Configuration first: a bad setting is reported before anything connects.
    config = WorkerConfig.load(
        batch_size=args.batch_size,
        max_concurrency=args.concurrency,
        rail_url=args.rail_url,
        dispatch_timeout_seconds=args.dispatch_timeout,
        lookup_timeout_seconds=args.lookup_timeout,
        worker_id=args.worker_id,
        metrics_port=args.metrics_port,
    )
    settings = database_settings()

    async def go() -> dict[str, Any] | None:
        async with await Database.open_for_service(Service.WORKER, settings) as db:
            process = WorkerProcess(db, config)
            if not args.once:
                await process.run_until_signalled()
                return None
            try:
                result = await process.run_once()
            finally:
                await process.aclose()
            return result.as_dict()

    result = _run(go())
    if result is not None:
        emit(args, result, ", ".join(f"{k} {v}" for k, v in result.items()))
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    config = ZombieRepairConfig(
        threshold_seconds=zombie_threshold_from_env(), batch_size=args.limit, role=Role.EXECUTOR
    )
    settings = database_settings()

    async def go() -> list[dict[str, Any]] | None:
        async with await Database.open_for_service(Service.REPAIR, settings) as db:
            repair = ZombieRepairWorker(OutboxStore(db), config)
            if not args.once:
                stop = asyncio.Event()
                with stop_on_signals(stop):
                    await repair.start()
                    try:
                        await stop.wait()
                    finally:
                        await repair.stop()
                return None
            result = await repair.run_once()
            return [
                {"outbox_id": r.outbox_id, "attempt_no": r.attempt_no,
                 "attempt_count": r.attempt_count, "claimed_by": r.claimed_by,
                 "lease_expires_at": r.lease_expires_at}
                for r in result.repaired
            ]

    repaired = _run(go())
    if repaired is not None:
        lines = [f"repaired {len(repaired)} zombie item(s)"] + [
            f"  {r['outbox_id']}  attempt {r['attempt_no']}  lease of {r['claimed_by']} "
            f"expired {r['lease_expires_at']:%Y-%m-%d %H:%M:%S%z}"
            for r in repaired
        ]
        emit(args, {"repaired": len(repaired), "items": repaired}, "\n".join(lines))
    return EXIT_OK


def cmd_api(args: argparse.Namespace) -> int:
    # Configuration first: a bad setting is reported before anything connects.
    config = ApiConfig.load(host=args.host, port=args.port)
    settings = database_settings()

    async def go() -> None:
        async with await Database.open_for_service(Service.API, settings) as db:
            server = build_api_server(db, config)
            stop = asyncio.Event()
            with stop_on_signals(stop):
                await server.start()
                try:
                    emit(args, {"url": server.url, "docs": f"{server.url}/docs"},
                         f"API listening on {server.url} (docs at {server.url}/docs); "
                         "Ctrl-C stops it")
                    await stop.wait()
                finally:
                    await server.stop()

    _run(go())
    return EXIT_OK


def cmd_enqueue(args: argparse.Namespace) -> int:
    instruction = PaymentInstruction(
        instruction_id=args.instruction_id,
        idempotency_key=args.idempotency_key,
        participant_id=args.participant,
        rail_type=args.rail,
        payload=_payload_from(args),
    )
    settings = database_settings()

    async def go() -> dict[str, Any]:
        async with await Database.open_as(Principal.INGEST, settings) as db:
            result = await OutboxStore(db).enqueue(instruction)
        return {"outbox_id": result.outbox_id, "sequence_id": result.sequence_id,
                "state": result.state, "created": result.created}

    result = _run(go())
    verb = "enqueued" if result["created"] else "already enqueued (same request)"
    emit(args, result, f"{verb}: {result['outbox_id']}  sequence {result['sequence_id']}  "
                       f"{result['state']}")
    return EXIT_OK


def _payload_from(args: argparse.Namespace) -> dict[str, Any]:
    fields = {"amount": args.amount, "currency": args.currency, "destination": args.destination}
    given = {k: v for k, v in fields.items() if v is not None}
    if args.payload is not None:
        if given:
            raise UsageError("give either --payload or --amount/--currency/--destination, "
                             "not both", code="CONFLICTING_ARGUMENTS")
        try:
            # Depth is the database's to refuse, with its own code (PAYLOAD_TOO_COMPLEX).
            payload = strict_json.loads(args.payload, max_depth=None)
        except (ValueError, RecursionError):  # nested past Python's limit: no payment either
            raise UsageError("--payload is not valid JSON", code="INVALID_PAYLOAD_JSON") from None
        if not isinstance(payload, dict):
            raise UsageError("--payload must be a JSON object", code="INVALID_PAYLOAD_JSON")
        return payload
    missing = [f"--{k}" for k in fields if k not in given]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or give --payload JSON)",
                         code="MISSING_ARGUMENT")
    return given


def cmd_status(args: argparse.Namespace) -> int:
    threshold = zombie_threshold_from_env()
    settings = database_settings()

    async def go() -> dict[str, Any]:
        async with await Database.open_as(Principal.READER, settings) as db:
            status = await OutboxStore(db).status()
            fleet = await OperatorStore(db).fleet(Role.READONLY)
        return {**status.as_dict(), "zombie_threshold_seconds": threshold,
                "fleet": fleet.as_dict()}

    s = _run(go())
    fleet = s["fleet"]
    uncovered = ", ".join(f"{r['bucket_from']}-{r['bucket_to']}"
                          for r in fleet["uncovered_buckets"])
    workers = [
        f"  {'STALE' if w['stale'] else 'live '}  {w['worker_id']}  buckets "
        f"{w['bucket_from']}-{w['bucket_to']}  v{w['version']}  in flight {w['in_flight']}  "
        f"heartbeat {w['heartbeat_age_seconds']:.0f}s ago"
        for w in fleet["workers"]]
    text = "\n".join([
        f"due              {s['due']}",
        f"retry-scheduled  {s['scheduled']}",
        f"dispatching      {s['dispatching']}",
        f"zombies          {s['zombies']} (lease expired, awaiting repair; leases last "
        f"{threshold}s)",
        f"awaiting lookup  {s['awaiting_lookup']} (may have executed: the rail is asked first)",
        f"under review     {s['under_review']} (may have executed, rail unsettled: "
        "symphony review list)",
        f"pending total    {s['pending_total']}"
        + (f" (oldest since {s['oldest_pending_at']})" if s["oldest_pending_at"] else ""),
        f"dispatched       {s['dispatched_total']}",
        f"failed           {s['failed_total']}",
        f"workers          {fleet['live_workers']} live, {fleet['stale_workers']} stale",
        *workers,
        (f"ALERT uncovered  buckets {uncovered}: no live worker claims their items"
         if uncovered else "buckets          every bucket 0-255 has a live worker"),
    ])
    emit(args, s, text)
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> dict[str, Any] | None:
        async with await Database.open_as(Principal.READER, settings) as db:
            found = await OutboxStore(db).item_with_ledger(args.outbox_id, Role.READONLY)
            if found is None:
                return None
            actions = await OperatorStore(db).item_actions(args.outbox_id, Role.READONLY)
        summary, ledger = found
        return {"outbox_id": args.outbox_id, "participant_id": summary["participant_id"],
                "instruction_id": summary["instruction_id"],
                "terminal_state": summary["terminal_state"],
                "review_reason": summary["review_reason"], "ledger": ledger,
                "actions": actions}

    found = _run(go())
    if found is None:
        raise NotFoundError("no item with this outbox id", code="UNKNOWN_OUTBOX_ID")
    lines = [f"item {found['outbox_id']}  participant {found['participant_id']}  "
             f"instruction {found['instruction_id']}"]
    lines += [f"  #{r['attempt_no']:<3} {r['state']:<15} {r['recorded_at']}  "
              f"{r['worker_id'] or '-'}  {r['error_code'] or ''}  "
              f"{r['rail_transaction_id'] or ''}".rstrip()
              for r in found["ledger"]]
    lines.append(f"operator actions: {len(found['actions'])}")
    lines += [f"  {a['recorded_at']}  {a['action']}  by {a['actor_label'] or '-'}"
              f"{' (token ' + str(a['actor_token_id']) + ')' if a['actor_token_id'] else ''}"
              f"  via {a['recorded_by']}: {a['reason']}"
              for a in found["actions"]]
    emit(args, found, "\n".join(lines))
    return EXIT_OK


def cmd_review_list(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> list[dict[str, Any]]:
        async with await Database.open(settings) as db:
            items = await OutboxStore(db).review_queue(args.limit)
        return [item.as_dict() for item in items]

    items = _run(go())
    lines = [f"{len(items)} item(s) under review"]
    for item in items:
        lines.append(f"  {item['outbox_id']}  {item['participant_id']}  {item['rail_type']}  "
                     f"{item['review_reason']} since {item['review_since']}, "
                     f"{item['attempt_count']} attempt(s), last {item['last_error_code']}")
    if items:
        lines.append("Ask the rail what happened to each, then: symphony review resolve "
                     "OUTBOX_ID --outcome dispatched|failed|retry --by NAME --reason ...")
    emit(args, items, "\n".join(lines))
    return EXIT_OK


def cmd_review_resolve(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> dict[str, Any]:
        async with await Database.open(settings) as db:
            outcome = await OutboxStore(db).resolve_review(
                args.outbox_id, ReviewDecision(args.outcome.upper()), decided_by=args.by,
                reason=args.reason, rail_transaction_id=args.rail_transaction_id)
        return {"outbox_id": str(outcome.outbox_id), "decision": outcome.decision.value,
                "state": outcome.state, "attempt_no": outcome.attempt_no}

    result = _run(go())
    emit(args, result, f"{result['outbox_id']}: {result['decision']} recorded, "
                       f"item now {result['state']}")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> CancelResult:
        async with await Database.open(settings) as db:
            return await CancelStore(db).cancel_as_operator(
                args.outbox_id, canceled_by=args.by, reason=args.reason)

    result = _run(go())
    if result.canceled:
        text = (f"{result.outbox_id}: canceled at {result.canceled_at}"
                + (" (it was already)" if result.outcome is CancelOutcome.ALREADY_CANCELED
                   else ""))
    else:
        text = (f"{result.outbox_id}: not cancelable, the payment is {result.state} "
                f"({result.refusal})")
    emit(args, result.as_dict(), text)
    return EXIT_OK if result.canceled else EXIT_FAILED


def cmd_audit_verify(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> AuditReport:
        async with await Database.open_as(Principal.READER, settings) as db:
            # One read-only snapshot as symphony_auditor: every check sees the same state.
            return await AuditStore(db).verify(since=args.since, limit=args.limit,
                                               since_checkpoint=args.since_checkpoint)

    report = _run(go())
    counts = report.counts
    scope = "whole database" if report.since is None else f"since {report.since.isoformat()}"
    if report.mode == "since-checkpoint":
        scope += f" (checkpoint {report.checkpoint_id})"
    lines = [
        f"audit of the {scope}: items {counts.get('items', 0)}, ledger rows "
        f"{counts.get('ledger_rows', 0)}, pending {counts.get('pending', 0)}, checkpoints "
        f"{counts.get('checkpoints', 0)} ({report.elapsed_seconds:.2f} s, one snapshot)",
    ]
    for check in report.checks:
        if check.skipped:
            lines.append(f"SKIP {check.invariant:<3} {check.name}: full audits only")
            continue
        verdict = "PASS" if check.ok else "FAIL"
        lines.append(f"{verdict} {check.invariant:<3} {check.name}: {check.checked} "
                     f"{check.unit.replace('_', ' ')} checked, {check.violations} "
                     f"violation{'s' if check.violations != 1 else ''} — {check.title}")
        for violation in check.items:
            lines.append(f"       {violation.describe()}")
        if check.violations > len(check.items):
            lines.append(f"       ... {check.violations - len(check.items)} more "
                         f"(--limit {report.limit})")
    lines.append("audit passed" if report.ok else
                 f"AUDIT FAILED: {', '.join(report.failed_invariants)}")
    emit(args, report.as_dict(), "\n".join(lines))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> Checkpoint:
        async with await Database.open_as(Principal.CONTROL, settings) as db:
            return await AuditStore(db).checkpoint()

    cp = _run(go())
    emit(args, cp.as_dict(),
         f"checkpoint {cp.checkpoint_id}: {cp.row_count} ledger rows of {cp.item_count} items "
         f"up to attempt_id {cp.up_to_attempt_id} ({cp.changed_items} items changed since the "
         f"previous one)\n  heads      {cp.heads_digest}\n  checkpoint {cp.checkpoint_digest}"
         f"\nkeep a copy outside the database: symphony audit export-checkpoints")
    return EXIT_OK


def cmd_audit_export_checkpoints(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> list[Checkpoint]:
        async with await Database.open_as(Principal.READER, settings) as db:
            return await AuditStore(db).checkpoints()

    for cp in _run(go()):
        print(json.dumps(cp.as_dict(), sort_keys=True), flush=True)
    return EXIT_OK


def _participant_dict(p: Participant) -> dict[str, Any]:
    return {"participant_id": p.participant_id, "display_name": p.display_name,
            "status": p.status, "created_at": p.created_at, "revoked_at": p.revoked_at}


def _participant_line(p: Participant) -> str:
    since = f"revoked {p.revoked_at:%Y-%m-%d %H:%M:%S%z}" if p.revoked_at else (
        f"since {p.created_at:%Y-%m-%d %H:%M:%S%z}")
    return f"{p.participant_id}  {p.status}  {p.display_name}  ({since})"


def cmd_participants_add(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> Participant:
        async with await Database.open(settings) as db:
            return await AccessStore(db).add_participant(args.participant_id, args.name)

    added = _run(go())
    emit(args, _participant_dict(added), f"added participant {_participant_line(added)}")
    return EXIT_OK


def cmd_participants_list(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> list[Participant]:
        async with await Database.open(settings) as db:
            return await AccessStore(db).list_participants()

    found = _run(go())
    emit(args, {"participants": [_participant_dict(p) for p in found]},
         "\n".join(_participant_line(p) for p in found) if found else "no participants")
    return EXIT_OK


REVOCATION_NOTE = (
    "accepted payments are obligations: the participant's pending payments are still "
    "dispatched and retried as usual; revoking stops new payments and its tokens, and only "
    "an operator's cancellation of a payment stops that payment"
)


def cmd_participants_revoke(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> tuple[Participant, int]:
        async with await Database.open(settings) as db:
            access = AccessStore(db)
            revoked = await access.revoke_participant(args.participant_id)
            # Counted after the revocation committed: no new payment of it can join them.
            return revoked, await access.pending_payment_count(args.participant_id)

    revoked, pending = _run(go())
    payments = "payment" if pending == 1 else "payments"
    emit(args,
         {**_participant_dict(revoked), "pending_payments": pending,
          "pending_payments_continue": True, "note": REVOCATION_NOTE},
         f"revoked participant {_participant_line(revoked)}; its tokens no longer work\n"
         f"{pending} pending {payments} of it go on: {REVOCATION_NOTE}")
    return EXIT_OK


_TOKEN_WARNING = ("this token is shown only now: Symphony stores a salted hash of it, not the "
                  "token, and cannot show it again")


def cmd_tokens_issue(args: argparse.Namespace) -> int:
    kind = TokenKind(args.kind.upper())
    if args.scope is not None and kind != TokenKind.OPERATOR:
        raise UsageError("--scope is for operator tokens (a participant token acts for its "
                         "participant only)", code="INVALID_TOKEN_REQUEST")
    scope = TokenScope(args.scope.upper()) if args.scope else None
    settings = database_settings()

    async def go() -> Any:
        async with await Database.open(settings) as db:
            return await AccessStore(db).issue_token(
                kind, participant_id=args.participant, label=args.label, scope=scope)

    issued = _run(go())
    data = {"token_id": issued.token_id, "kind": issued.kind.value,
            "participant_id": issued.participant_id, "label": issued.label,
            "scope": issued.scope.value if issued.scope else None,
            "created_at": issued.created_at, "token": issued.token, "warning": _TOKEN_WARNING}
    whom = (f"participant {issued.participant_id}" if issued.participant_id
            else f"the operator (scope {issued.scope.value if issued.scope else '-'})")
    if not getattr(args, "json", False):
        print(f"warning: {_TOKEN_WARNING}", file=sys.stderr, flush=True)
    emit(args, data, f"issued token {issued.token_id} for {whom}:\n{issued.token}")
    return EXIT_OK


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    try:
        token_id = UUID(args.token_id)
    except ValueError:
        raise UsageError(f"{args.token_id!r} is not a token id (a UUID)",
                         code="INVALID_TOKEN_ID") from None
    settings = database_settings()

    async def go() -> None:
        async with await Database.open(settings) as db:
            await AccessStore(db).revoke_token(token_id)

    _run(go())
    emit(args, {"token_id": token_id, "revoked": True}, f"revoked token {token_id}")
    return EXIT_OK


def cmd_rail_sim(args: argparse.Namespace) -> int:
    try:
        config = rail_sim_config_from_args(args)
    except ValidationError as exc:
        raise UsageError(
            "invalid rail simulator option: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            ),
            code="INVALID_RAIL_SIM_CONFIG",
        ) from None

    def announce(url: str) -> None:
        print(f"rail-sim listening on {url}", flush=True)

    try:
        _run(run_rail_sim(config, on_ready=announce))
    except OSError as exc:
        raise ConfigurationError(
            f"the rail simulator cannot listen on {config.host}:{config.port} ({exc.strerror})",
            code="RAIL_SIM_BIND_FAILED",
        ) from exc
    return EXIT_OK


def cmd_db_url(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> str:
        endpoint, server = await resolve_endpoint(settings)
        if server is not None:
            server.stop()  # detach only: the embedded server keeps running for later commands
        return endpoint.admin_dsn

    print(_run(go()), flush=True)
    return EXIT_OK


def cmd_db_stop(args: argparse.Namespace) -> int:
    settings = database_settings()
    if settings.database_url is not None:
        raise UsageError("DATABASE_URL is set: `db stop` stops only the embedded server",
                         code="NOT_EMBEDDED")
    server = EmbeddedServer(settings.embedded_data_dir)
    try:
        stopped = server.shutdown()
    except Exception as exc:
        raise SymphonyError(
            f"the embedded PostgreSQL did not stop; its log is {server.data_dir / 'log'}",
            code="EMBEDDED_STOP_FAILED",
        ) from exc
    where = str(server.data_dir)
    emit(args, {"stopped": stopped, "data_dir": where},
         f"stopped the embedded PostgreSQL ({where})" if stopped
         else f"the embedded PostgreSQL was not running ({where})")
    return EXIT_OK


# -- webhooks --------------------------------------------------------------------------------


def cmd_delivery(args: argparse.Namespace) -> int:
    # Configuration first: a bad setting is reported before anything connects.
    config = DeliveryConfig.load(worker_id=args.worker_id, batch_size=args.batch_size,
                                 max_concurrency=args.concurrency,
                                 metrics_port=args.metrics_port)
    hooks = WebhookSettings.load()
    settings = database_settings()

    async def go() -> dict[str, Any] | None:
        async with await Database.open_for_service(Service.DELIVERY, settings) as db:
            box = configured_secret_box(settings.home, manages_home=db.endpoint is not None)
            if box is None:
                raise ConfigurationError(
                    "the delivery service signs with secrets sealed under the webhook key: "
                    "set SYMPHONY_WEBHOOK_KEY (the API's key)", code="WEBHOOK_KEY_MISSING")
            process = DeliveryProcess(db, config, box, hooks.policy)
            if not args.once:
                await process.run_until_signalled()
                return None
            try:
                return (await process.run_once()).as_dict()
            finally:
                await process.aclose()

    result = _run(go())
    if result is not None:
        emit(args, result, ", ".join(f"{k} {v}" for k, v in result.items()))
    return EXIT_OK


def cmd_webhooks_list(args: argparse.Namespace) -> int:
    settings = database_settings()
    status = "FAILING" if args.failing else (args.status.upper() if args.status else None)

    async def go() -> list[dict[str, Any]]:
        async with await Database.open(settings) as db:
            return await WebhookStore(db).ops_endpoints(status=status, limit=args.limit,
                                                        role=Role.CONTROL)

    rows = _run(go())
    lines = [f"{len(rows)} endpoint(s)"]
    for r in rows:
        health = (f"FAILING since {r['failing_since']:%Y-%m-%d %H:%M:%S%z}, "
                  f"{r['consecutive_failures']} failure(s), last {r['last_error_class']}"
                  if r["failing_since"] else
                  f"held since {r['held_since']:%Y-%m-%d %H:%M:%S%z} (one probe at a time)"
                  if r["held_since"] else "healthy")
        lines.append(f"  {r['endpoint_id']}  {r['participant_id']}  {r['status']}  {health}  "
                     f"{r['pending_deliveries']} pending  {r['events_waiting']} waiting  "
                     f"{r['url']}")
    emit(args, rows, "\n".join(lines))
    return EXIT_OK


def cmd_webhooks_deliveries(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> list[dict[str, Any]]:
        async with await Database.open(settings) as db:
            return await WebhookStore(db).deliveries(args.endpoint_id, limit=args.limit,
                                                     role=Role.CONTROL)

    rows = _run(go())
    lines = [f"{len(rows)} delivery(ies), newest first"] + [
        f"  {r['delivery_id']}  event {r['event_id']}  {r['status']}  "
        f"{r['attempt_count']} attempt(s), last {r['last_http_status'] or '-'} "
        f"{r['last_error_class'] or ''}".rstrip()
        for r in rows]
    emit(args, rows, "\n".join(lines))
    return EXIT_OK


def cmd_webhooks_toggle(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> dict[str, Any]:
        async with await Database.open(settings) as db:
            return await WebhookStore(db).set_enabled(args.endpoint_id, args.enabled,
                                                      args.reason, role=Role.CONTROL)

    row = _run(go())
    emit(args, row, f"{row['endpoint_id']}: {row['status']}")
    return EXIT_OK


def cmd_webhooks_replay(args: argparse.Namespace) -> int:
    settings = database_settings()

    async def go() -> dict[str, Any]:
        async with await Database.open(settings) as db:
            return await WebhookStore(db).replay(args.delivery_id, args.by, args.reason,
                                                 role=Role.CONTROL)

    row = _run(go())
    if row["result"] == REPLAYED:
        emit(args, row, f"replay {row['delivery_id']} of event {row['event_id']} queued "
                        f"(webhook-id {row['event_id']}; action {row['action_id']})")
        return EXIT_OK
    if row["result"] == "REPLAY_PENDING":
        text = (f"not replayed: replay {row['delivery_id']} of this delivery is still waiting "
                "to be sent")
    else:
        text = f"not replayed: the endpoint is {row['endpoint_status']}"
    emit(args, row, text)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
