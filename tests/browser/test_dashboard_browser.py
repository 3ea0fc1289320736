"""The operator dashboard in a real headless Chromium, against the real API and database.

Chromium is Debian's package (`scripts/ensure-chromium.sh`, run by `make pytest`, installs it
where it is missing and the test set-up runs as root); Playwright drives it through
`executable_path` and never downloads a browser. Where neither can be had, these tests skip
and say why.

What a person would check: sign in with an operator token, see the numbers the database has,
see the page follow a new payment by itself, and see an error, not old numbers, when the
token is refused or the database is down. A screenshot of the signed-in page is written under
`build/test-artifacts/` (its path is printed).
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support.api import Running, serve
from tests.support.ops import database_now, ended_item
from tests.support.outbox import TEST_PARTICIPANT, instruction
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import delivery_service, hooked_participant, make_due, pay, retire

from symphony.db import Database, DatabaseSettings, Endpoint, Principal
from symphony.outbox import OutboxStore
from symphony.outbox.access import AccessStore, TokenKind
from symphony.services.api.ops import operator_routers

async_api = pytest.importorskip(
    "playwright.async_api",
    reason="playwright is not installed (it is in the dev extra: make install)",
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
COUNT_FIELDS = ("due", "scheduled", "dispatching", "zombies", "awaiting_lookup", "under_review",
                "pending_total", "dispatched_total", "failed_total")
# Two refresh periods and then some: the page refreshes every 2 s.
UPDATE_TIMEOUT_MS = 10_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium on this machine: scripts/ensure-chromium.sh installs Debian's "
        "package when run as root with apt-get",
    ),
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # Loopback only: no proxy from the environment may see the traffic.
            args=["--no-proxy-server"],
        )
        try:
            yield launched
        finally:
            await launched.close()


class Page:
    """A browser page that remembers every console error, page error and failed request."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", lambda req: self.problems.append(
            f"request failed: {req.url} {req.failure}"))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 1000}, locale="en-US")
    try:
        yield Page(await context.new_page())
    finally:
        await context.close()


@pytest.fixture
async def api(isolated_db: Database) -> AsyncIterator[Running]:
    async with serve(isolated_db, routers=operator_routers(),
                     authenticator=AccessStore(isolated_db)) as running:
        yield running


async def sign_in(page: Page, url: str, token: str) -> None:
    await page.page.goto(url)
    await page.page.get_by_label("Operator token").fill(token)
    await page.page.get_by_role("button", name="Connect").click()


def number(value: int) -> str:
    return f"{value:,}"


async def test_the_dashboard_shows_the_database_and_follows_it(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, page: Page
) -> None:
    expect = async_api.expect
    store = OutboxStore(isolated_db)
    now = await database_now(isolated_admin_dsn)
    # A recent history to draw: items that ended over the last minutes, some failures.
    for minute in range(12):
        for second in range(minute % 4 + 1):
            await ended_item(store, isolated_admin_dsn, "DISPATCHED",
                             now - timedelta(minutes=minute, seconds=second))
        if minute % 5 == 0:
            await ended_item(store, isolated_admin_dsn, "FAILED", now - timedelta(minutes=minute),
                             error_code="INSUFFICIENT_FUNDS",
                             error_detail="the rail declined the payment")
    for _ in range(3):
        await store.enqueue(instruction())
    token = (await AccessStore(isolated_db).issue_token(TokenKind.OPERATOR)).token

    await sign_in(page, f"{api.url}/", token)

    status = await store.status()
    for field in COUNT_FIELDS:
        await expect(page.page.locator(f"#count-{field}")).to_have_text(
            number(getattr(status, field)), timeout=UPDATE_TIMEOUT_MS)
    await expect(page.page.locator("#freshness")).to_contain_text("last updated")
    await expect(page.page.locator("#error")).to_be_hidden()
    await expect(page.page.locator("#failures-body tr")).to_have_count(3)
    await expect(page.page.locator("#failures-body")).to_contain_text("INSUFFICIENT_FUNDS")
    await expect(page.page.locator("#throughput-chart rect")).not_to_have_count(0)
    await expect(page.page.locator("#throughput-summary")).to_contain_text("failed")

    # A new payment arrives through the participant API: the page shows it by itself, with
    # no reload and no click.
    before = status.pending_total
    participant = await AccessStore(isolated_db).issue_token(
        TokenKind.PARTICIPANT, participant_id=TEST_PARTICIPANT)
    submitted = await api.client.post(
        "/v1/payments",
        json={"instruction_id": f"browser-{uuid.uuid4().hex[:12]}", "rail_type": "SEPA_CT",
              "amount": "42.00", "currency": "EUR", "destination": "DE89370400440532013000"},
        headers={"Authorization": f"Bearer {participant.token}",
                 "Idempotency-Key": str(uuid.uuid4())},
    )
    assert submitted.status_code == 201, submitted.text
    await expect(page.page.locator("#count-pending_total")).to_have_text(
        number(before + 1), timeout=UPDATE_TIMEOUT_MS)
    assert (await store.status()).pending_total == before + 1

    # An item lookup shows its ledger.
    await page.page.locator("#failures-body button").first.click()
    await expect(page.page.locator("#ledger tbody tr")).to_have_count(2)
    await expect(page.page.locator("#lookup-result")).to_contain_text("FAILED")

    # The token is in no URL and nowhere in the page.
    assert token not in page.page.url
    assert token not in await page.page.content()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    await page.page.screenshot(path=str(shot), full_page=True)
    print(f"dashboard screenshot: {shot}")
    assert page.problems == [], page.problems


async def test_a_refused_token_asks_again_and_shows_no_numbers(
    api: Running, isolated_db: Database, page: Page
) -> None:
    expect = async_api.expect
    participant = await AccessStore(isolated_db).issue_token(
        TokenKind.PARTICIPANT, participant_id=instruction().participant_id)

    await sign_in(page, f"{api.url}/", participant.token)

    await expect(page.page.locator("#error")).to_contain_text("refused")
    await expect(page.page.locator("#error")).to_contain_text("401")
    await expect(page.page.get_by_label("Operator token")).to_be_visible()
    await expect(page.page.locator("#board")).to_be_hidden()
    await expect(page.page.locator("#count-due")).to_have_text("—")


@pytest.fixture
async def down_db() -> AsyncIterator[Database]:
    """A database that is not there: a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = Database(
        DatabaseSettings(SYMPHONY_DB_CONNECT_TIMEOUT_S=1),
        Endpoint(admin_dsn=f"host=127.0.0.1 port={port} dbname=none user=none",
                 server_key="down", embedded=False),
        {p: "unused" for p in Principal},
    )
    try:
        yield db
    finally:
        await db.close()


async def test_a_database_that_is_down_is_an_error_not_old_numbers(
    down_db: Database, page: Page
) -> None:
    expect = async_api.expect
    async with serve(down_db, routers=operator_routers(),
                     authenticator=AccessStore(down_db)) as api:
        await sign_in(page, f"{api.url}/", "sy_op_" + "0" * 32 + "_" + "A" * 43)
        await expect(page.page.locator("#error")).to_contain_text(
            "database is unavailable", timeout=UPDATE_TIMEOUT_MS)
        await expect(page.page.locator("#error")).to_contain_text("503")
        await expect(page.page.locator("#freshness")).to_contain_text("Not updating")
        await expect(page.page.locator("#count-pending_total")).to_have_text("—")
        # Still signed in: it keeps trying, and the token was not thrown away.
        await expect(page.page.locator("#board")).to_be_visible()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard-database-down.png"
        await page.page.screenshot(path=str(shot))
        print(f"dashboard screenshot (database down): {shot}")


async def test_the_webhook_card_shows_a_failing_endpoint(
    api: Running, isolated_db: Database, page: Page
) -> None:
    """An endpoint whose receiver keeps answering 503 is marked failing by the delivery
    service; the card shows the count in warning colour and the endpoint's row."""
    expect = async_api.expect
    receiver = Receiver(mode="status:503")
    await receiver.start()
    service, sender = delivery_service(isolated_db, failing_after_failures=2)
    hooked = await hooked_participant(isolated_db, receiver)
    healthy = await hooked_participant(isolated_db, Receiver())
    try:
        await pay(isolated_db, hooked.participant_id, 2)
        for _ in range(3):
            await service.run_once()
            await make_due(isolated_db, hooked.participant_id)
        token = (await AccessStore(isolated_db).issue_token(TokenKind.OPERATOR)).token
        await sign_in(page, f"{api.url}/", token)
        card = page.page.locator("#webhooks")
        await expect(card).to_be_visible(timeout=UPDATE_TIMEOUT_MS)
        await expect(page.page.locator("#hooks-endpoints_failing")).to_have_text(
            "1", timeout=UPDATE_TIMEOUT_MS)
        await expect(page.page.locator("#hooks-endpoints_enabled")).not_to_have_text("—")
        row = page.page.locator("#hooks-failing-body tr.failing")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text(hooked.participant_id)
        await expect(row).to_contain_text("http_5xx")
        await expect(row).to_contain_text(receiver.url)
        failing_card = page.page.locator("#hooks-endpoints_failing").locator("xpath=..")
        await expect(failing_card).to_have_class("count warn-if-nonzero alert")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard-webhooks.png"
        await card.screenshot(path=str(shot))
        print(f"webhook card screenshot: {shot}")
        assert page.problems == [], page.problems
    finally:
        await retire(isolated_db, hooked)
        await retire(isolated_db, healthy)
        await sender.aclose()
        await receiver.stop()
