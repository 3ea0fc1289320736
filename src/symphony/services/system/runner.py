"""`symphony run`: the whole system in one process, on the embedded PostgreSQL by default.

Order of start: the database (embedded unless `DATABASE_URL` is set) with its migrations, the
rail simulator (unless `SYMPHONY_RAIL_URL` names a rail), the worker with its repair loop, the
webhook delivery service, then the HTTP API (`SYMPHONY_API_PORT`, default 8080, or any free port when that one is taken). On
the embedded default it also makes sure a `demo` participant exists and issues it a fresh
token, printed once with a ready-to-paste curl; `--demo` sends its sample payments through
the API with tokens of their own. Tokens issued here are revoked on the way out.
Stop is the reverse, on SIGINT or SIGTERM: the API stops taking requests, then the worker
drains and the delivery service stops, while the rail is still up. An embedded server this command started is stopped on exit; one that was already
running is left to whoever started it. The data stays, so the next start finds it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import httpx

from symphony.db import Database, DatabaseSettings, EmbeddedServer, bootstrap
from symphony.outbox import OutboxStore
from symphony.outbox.access import AccessStore, TokenKind, TokenScope
from symphony.services.api import ApiConfig, ApiServer
from symphony.services.delivery import DeliveryConfig, DeliveryProcess
from symphony.services.rail_sim import RailSimBehaviour, RailSimConfig, RailSimServer
from symphony.services.rail_sim.server import DEFAULT_PORT
from symphony.services.system.api import build_api_server
from symphony.services.system.demo import (
    DEMO_DISPATCH_TIMEOUT_SECONDS,
    DEMO_LOOKUP_TIMEOUT_SECONDS,
    DEMO_PARTICIPANTS,
    DEMO_RETRY_POLICY,
    apply_retry_policy,
    demo_instructions,
    snapshot,
    submit_stream,
)
from symphony.services.worker import WorkerConfig, WorkerProcess, stop_on_signals
from symphony.webhooks import WebhookSettings, load_secret_box

log = logging.getLogger("symphony.run")

# The simulator's hangs only need to outlast the demo's dispatch timeout.
_DEMO_HANG_SECONDS = 5.0
_DEMO_LATENCY_MS = 20
DEMO_PARTICIPANT = "demo"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """demo: enqueue `demo_count` sample payments and show live counts until they settle."""

    demo: bool = False
    demo_count: int = 40


class SystemRunner:
    """Starts and stops the parts of `symphony run`; `run()` does both around a stop event."""

    def __init__(
        self,
        settings: DatabaseSettings,
        options: RunOptions,
        *,
        out: TextIO | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.out = out or sys.stdout
        self.stop_event = stop or asyncio.Event()
        self.embedded: EmbeddedServer | None = None
        self.db: Database | None = None
        self.rail_sim: RailSimServer | None = None
        self.worker: WorkerProcess | None = None
        self.delivery: DeliveryProcess | None = None
        self.api: ApiServer | None = None
        self._issued_tokens: list[UUID] = []
        self._previous_policy: dict[str, Any] | None = None
        self._demo_task: asyncio.Task[None] | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM (or the stop event), then stop everything."""
        with stop_on_signals(self.stop_event):
            try:
                await self.start()
                if not self.stop_event.is_set():
                    self.say("Running. Ctrl-C stops everything.")
                await self.stop_event.wait()
                self.say("Stopping ...")
            finally:
                await self.shutdown()

    async def start(self) -> None:
        settings = self.settings
        self.say("Symphony Outbox")
        # Built before the database starts, so a bad setting stops us before anything runs.
        config_overrides: dict[str, Any] = {}
        if self.options.demo:
            config_overrides.update(
                dispatch_timeout_seconds=DEMO_DISPATCH_TIMEOUT_SECONDS,
                lookup_timeout_seconds=DEMO_LOOKUP_TIMEOUT_SECONDS,
            )
        config = WorkerConfig.load(**config_overrides)
        api_config = ApiConfig.load()
        delivery_config = DeliveryConfig.load()
        self.webhook_settings = WebhookSettings.load()

        if settings.database_url is None:
            self.say(f"  database   starting the embedded PostgreSQL, data in "
                     f"{settings.embedded_data_dir.resolve()}")
        boot = await bootstrap(settings, zombie_threshold_seconds=config.lease_seconds)
        self.embedded = boot.embedded
        if boot.embedded is not None:
            state = "started" if boot.embedded.started_here else "already running, reused"
            self.say(f"  database   embedded PostgreSQL {state}")
        else:
            self.say(f"  database   {boot.endpoint.describe()}")
        self.say(f"  schema     {len(boot.migrations.applied)} migration(s) applied now, "
                 f"{len(boot.migrations.already_applied)} already in place")
        self.db = await Database.open(settings, embedded=boot.embedded)

        if "rail_url" in config.model_fields_set:
            self.say(f"  rail       {config.rail_url} (SYMPHONY_RAIL_URL)")
        else:
            self.rail_sim = await self._start_rail_sim()
            config = WorkerConfig.load(**config_overrides, rail_url=self.rail_sim.url)
            self.say(f"  rail       simulator at {self.rail_sim.url} (in this process)")

        if self.options.demo:
            self._previous_policy = await apply_retry_policy(self.db, DEMO_RETRY_POLICY)
            self.say("  demo       retry backoff 200 ms .. 2 s, dispatch timeout "
                     f"{config.dispatch_timeout_seconds:g}s (restored on exit)")

        self.worker = WorkerProcess(self.db, config)
        await self.worker.start()
        self.say(f"  worker     {config.worker_id}: batch {config.batch_size}, concurrency "
                 f"{config.max_concurrency}, lease {config.lease_seconds}s, zombie repair on")
        if config.metrics_port is not None:
            self.say(f"  metrics    http://127.0.0.1:{config.metrics_port}/metrics")

        self.delivery = DeliveryProcess(self.db, delivery_config,
                                        load_secret_box(settings.home),
                                        self.webhook_settings.policy)
        await self.delivery.start()
        self.say(f"  webhooks   delivery {delivery_config.worker_id}: batch "
                 f"{delivery_config.batch_size}, concurrency {delivery_config.max_concurrency}, "
                 f"lease {delivery_config.lease_seconds}s")

        self.api = await self._start_api(api_config)
        url = self.api.url
        self.say(f"  api        {url}  (docs {url}/docs, dashboard {url}/)")
        if settings.database_url is None:
            await self._demo_participant(url)
        where = ("from this directory" if settings.database_url is None
                 else "with the same DATABASE_URL")
        command = _symphony_command()
        self.say(f"In another terminal, {where}: {command} status   "
                 f"(or: {command} audit verify)")
        if self.options.demo:
            self._demo_task = asyncio.create_task(self._demo(), name="demo")

    async def _start_rail_sim(self) -> RailSimServer:
        behaviour = (
            RailSimBehaviour(latency_ms=_DEMO_LATENCY_MS, hang_seconds=_DEMO_HANG_SECONDS)
            if self.options.demo else RailSimBehaviour()
        )
        # The usual port when it is free, so a separate `symphony worker` finds the rail by
        # default; any free port otherwise.
        for port in (DEFAULT_PORT, 0):
            server = RailSimServer(RailSimConfig(port=port, behaviour=behaviour))
            try:
                await server.start()
            except OSError:
                continue
            return server
        raise RuntimeError("the rail simulator could not bind any port")

    async def _start_api(self, config: ApiConfig) -> ApiServer:
        assert self.db is not None and self.worker is not None and self.delivery is not None
        # The configured port when it is free; any free port otherwise, unless the port was
        # asked for explicitly (then a taken port is the operator's error to see).
        candidates = [config]
        if "port" not in config.model_fields_set:
            candidates.append(config.model_copy(update={"port": 0}))
        for index, candidate in enumerate(candidates):
            server = build_api_server(
                self.db, candidate,
                process_registries=[self.worker.metrics.registry,
                                    self.delivery.metrics.registry],
                webhook_settings=self.webhook_settings,
            )
            try:
                await server.start()
            except OSError:
                if index == len(candidates) - 1:
                    raise
                continue
            return server
        raise RuntimeError("unreachable")

    async def _participant_token(self, participant_id: str, label: str) -> str | None:
        """A fresh token of `participant_id` (created if it does not exist; None if it was
        revoked). Remembered, so that it is revoked when this process stops."""
        assert self.db is not None
        access = AccessStore(self.db)
        known = {p.participant_id: p for p in await access.list_participants()}
        existing = known.get(participant_id)
        if existing is None:
            await access.add_participant(participant_id, f"{participant_id} (symphony run)")
        elif existing.revoked_at is not None:
            return None
        issued = await access.issue_token(
            TokenKind.PARTICIPANT, participant_id=participant_id, label=label
        )
        self._issued_tokens.append(issued.token_id)
        return issued.token

    async def _demo_participant(self, url: str) -> None:
        token = await self._participant_token(DEMO_PARTICIPANT, "symphony run")
        if token is None:
            self.say(f"  token      participant {DEMO_PARTICIPANT!r} is revoked; no token issued")
            return
        self.say(f"  token      {token}")
        self.say(f"             participant {DEMO_PARTICIPANT!r}; shown once, revoked when this "
                 "process stops")
        self.say("Submit a payment (run it twice: the second answer is the same payment, 200):")
        self.say(curl_example(url, token))
        # The dashboard reads through the operator API: hand the newcomer its token too.
        assert self.db is not None
        # A viewer (least privilege): it reads everything; acting needs a token of its own.
        operator = await AccessStore(self.db).issue_token(
            TokenKind.OPERATOR, label="symphony run dashboard", scope=TokenScope.VIEWER)
        self._issued_tokens.append(operator.token_id)
        self.say(f"  dashboard  {url}/  operator token (viewer) {operator.token}")
        self.say("             shown once, revoked when this process stops; to act (resolve, "
                 "cancel, revoke): symphony tokens issue --kind operator --scope operator")

    async def _demo(self) -> None:
        assert self.worker is not None and self.api is not None
        store: OutboxStore = self.worker.store
        ids: list[UUID] = []
        instructions = demo_instructions(self.options.demo_count)
        tokens: dict[str, str] = {}
        for participant_id in DEMO_PARTICIPANTS:
            token = await self._participant_token(participant_id, "symphony run --demo")
            if token is None:
                self.say(f"Demo: participant {participant_id!r} is revoked; no demo.")
                return
            tokens[participant_id] = token
        self.say(f"Demo: submitting {len(instructions)} payments through {self.api.url} "
                 "(every 10th: RETRY:2, FAIL:INSUFFICIENT_FUNDS, HANG:1) ...")
        started = time.monotonic()
        client = httpx.AsyncClient(base_url=self.api.url, trust_env=False, timeout=30.0)
        feed = asyncio.create_task(
            submit_stream(client, tokens, instructions, on_enqueued=ids.append)
        )
        try:
            while True:
                await asyncio.sleep(1.0)
                try:
                    view = await snapshot(store, ids, started)
                except Exception as exc:
                    self.say(f"(status unavailable: {exc})")
                    continue
                self.say(view.line())
                if feed.done() and view.demo_unsettled == 0:
                    feed.result()
                    break
            self.say(f"Demo complete: all {len(ids)} payments settled in "
                     f"{time.monotonic() - started:.1f}s. Still running; Ctrl-C stops.")
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
            await client.aclose()

    async def shutdown(self) -> None:
        """Stop what was started, in reverse order. Safe after a partial start."""
        if self._demo_task is not None:
            self._demo_task.cancel()
            await asyncio.gather(self._demo_task, return_exceptions=True)
            self._demo_task = None
        if self.api is not None:
            await self.api.stop()
            self.api = None
        if self.delivery is not None:
            await self.delivery.stop()
            self.delivery = None
        if self.worker is not None:
            await self.worker.stop()
            self.worker = None
        if self._previous_policy is not None and self.db is not None:
            try:
                await apply_retry_policy(self.db, self._previous_policy)
            except Exception:
                log.exception("could not restore the retry policy after the demo")
            self._previous_policy = None
        if self._issued_tokens and self.db is not None:
            access = AccessStore(self.db)
            for token_id in self._issued_tokens:
                try:
                    await access.revoke_token(token_id)
                except Exception:
                    log.exception("could not revoke a token issued by symphony run; "
                                  "`symphony tokens revoke` does it")
            self._issued_tokens = []
        if self.rail_sim is not None:
            await self.rail_sim.stop()
            self.rail_sim = None
        if self.db is not None:
            await self.db.close()
            self.db = None
        embedded, self.embedded = self.embedded, None
        if embedded is not None:
            if embedded.started_here:
                try:
                    await asyncio.to_thread(embedded.shutdown)
                except Exception:
                    log.exception("could not stop the embedded PostgreSQL; `symphony db stop` "
                                  "stops it")
                else:
                    self.say("Stopped the embedded PostgreSQL; its data stays for the next "
                             "start.")
            else:
                embedded.stop()
                self.say("Left the embedded PostgreSQL running (it was running before).")
        self.say("Stopped.")


async def run_system(
    settings: DatabaseSettings, options: RunOptions, *, out: TextIO | None = None
) -> None:
    """Run the whole system until SIGINT or SIGTERM."""
    await SystemRunner(settings, options, out=out).run()


def curl_example(url: str, token: str) -> str:
    """A ready-to-paste curl that submits one payment with a fixed Idempotency-Key."""
    key = f"curl-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    body = json.dumps({
        "instruction_id": key, "rail_type": "SEPA_CT", "amount": "12.50",
        "currency": "EUR", "destination": "DE89370400440532013000",
    })
    return " \\\n".join([
        f"  curl -sS -X POST {url}/v1/payments",
        f"    -H {shlex.quote('Authorization: Bearer ' + token)}",
        "    -H 'Content-Type: application/json'",
        f"    -H {shlex.quote('Idempotency-Key: ' + key)}",
        f"    -d {shlex.quote(body)}",
    ])


def _symphony_command() -> str:
    """How to call `symphony` from a shell: plain when it is on PATH, else by its path (as in
    a fresh checkout, where it lives in the project's .venv)."""
    if shutil.which("symphony"):
        return "symphony"
    beside = Path(sys.executable).parent / "symphony"
    if beside.exists():
        try:
            return str(beside.relative_to(Path.cwd()))
        except ValueError:
            return str(beside)
    return f"{Path(sys.executable).name} -m symphony"
