"""The operator dashboard's actions, fleet card and queue browser in a real headless Chromium
(Debian's package, driven by Playwright; see test_dashboard_browser.py), against the real API
and database, at 1280x800.

What an operator would check: a viewer token sees everything and no action button; an
operator token resolves a review item through a confirmation step and the item's history then
names the token's label; the queue filters by state and participant; the fleet card says, in
words and not only in colour, which routing buckets no live worker covers; and text planted
in a destination, a failure detail and a display name shows as text, never as markup.
Screenshots go to build/test-artifacts/ (paths printed).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from tests.support.api import Running, serve
from tests.support.ops import database_now, ended_item, put_under_review
from tests.support.outbox import instruction, payload
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import (
    Hooked,
    admin,
    deliveries_of,
    delivery_service,
    hooked_participant,
    pay,
    retire,
)

from symphony.db import Database, test_only
from symphony.outbox import AccessStore, OutboxStore, TokenKind, TokenScope
from symphony.outbox.model import BucketRange
from symphony.outbox.operators import Heartbeat, OperatorStore
from symphony.services.api.ops import operator_routers

async_api = pytest.importorskip(
    "playwright.async_api",
    reason="playwright is not installed (it is in the dev extra: make install)",
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
TIMEOUT_MS = 10_000

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
            executable_path=CHROMIUM, headless=True, args=["--no-proxy-server"])
        try:
            yield launched
        finally:
            await launched.close()


class Page:
    """A page that remembers console errors, page errors and failed requests."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", lambda req: self.problems.append(
            f"request failed: {req.url} {req.failure}"))


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    try:
        yield Page(await context.new_page())
    finally:
        await context.close()


@pytest.fixture
async def api(isolated_db: Database) -> AsyncIterator[Running]:
    async with serve(isolated_db, routers=operator_routers(),
                     authenticator=AccessStore(isolated_db)) as running:
        yield running


async def token(db: Database, scope: TokenScope, label: str) -> str:
    issued = await AccessStore(db).issue_token(TokenKind.OPERATOR, label=label, scope=scope)
    return issued.token


async def sign_in(page: Page, url: str, secret: str) -> None:
    await page.page.goto(url)
    await page.page.get_by_label("Operator token").fill(secret)
    await page.page.get_by_role("button", name="Connect").click()
    await async_api.expect(page.page.locator("#freshness")).to_contain_text(
        "last updated", timeout=TIMEOUT_MS)


async def shot(page: Page, name: str, *, full: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await page.page.screenshot(path=str(path), full_page=full)
    print(f"screenshot: {path}")


async def failed_delivery(db: Database, receiver: Receiver) -> tuple[Hooked, dict[str, Any]]:
    """An endpoint whose receiver answers 503, and a delivery whose one allowed attempt
    failed (FAILED: the retry schedule ran out)."""
    hooked = await hooked_participant(db, receiver)
    await pay(db, hooked.participant_id)
    service, sender = delivery_service(db, max_attempts=1)
    try:
        await service.run_once()
    finally:
        await sender.aclose()
    [delivery] = await deliveries_of(db, hooked.participant_id)
    assert delivery["status"] == "FAILED"
    return hooked, delivery


async def test_a_viewer_sees_everything_and_no_action_button(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, page: Page
) -> None:
    expect = async_api.expect
    outbox_id = await put_under_review(OutboxStore(isolated_db), isolated_admin_dsn)
    receiver = Receiver(mode="status:503")
    await receiver.start()
    hooked, _delivery = await failed_delivery(isolated_db, receiver)
    try:
        await sign_in(page, f"{api.url}/", await token(isolated_db, TokenScope.VIEWER,
                                                       "night viewer"))
        await expect(page.page.locator("#identity")).to_have_text(
            "night viewer · VIEWER (read only)")
        await expect(page.page.locator("#review-body")).to_contain_text(str(outbox_id))
        await expect(page.page.locator("#tokens-body tr")).not_to_have_count(0)
        # The webhook deliveries are readable, with no replay button.
        await page.page.get_by_role("button", name=f"Deliveries of endpoint {receiver.url}"
                                    ).click()
        deliveries = page.page.locator("#hooks-deliveries-body tr")
        await expect(deliveries).to_have_count(1, timeout=TIMEOUT_MS)
        await expect(deliveries).to_contain_text("FAILED")
        await expect(deliveries).to_contain_text("HTTP 503")
        await page.page.locator(f"#review-body button[aria-label='Look up item {outbox_id}']"
                                ).click()
        await expect(page.page.locator("#lookup-result")).to_contain_text(
            "UNSETTLED_AT_RETRY_LIMIT")
        assert await page.page.locator("button.act").count() == 0
        for name in ("Resolve…", "Revoke…", "Replay…", "Cancel…", "Confirm"):
            assert await page.page.get_by_role("button", name=name).count() == 0, name
        await page.page.locator("#review-panel").scroll_into_view_if_needed()
        await shot(page, "operators-viewer.png")
        await page.page.locator("#webhooks").scroll_into_view_if_needed()
        await shot(page, "operators-viewer-webhooks.png")
        assert page.problems == [], page.problems
    finally:
        await retire(isolated_db, hooked)
        await receiver.stop()


async def test_an_operator_replays_a_failed_webhook_delivery_and_it_is_recorded(
    api: Running, isolated_db: Database, page: Page
) -> None:
    expect = async_api.expect
    receiver = Receiver(mode="status:503")
    await receiver.start()
    hooked, delivery = await failed_delivery(isolated_db, receiver)
    delivery_id = str(delivery["delivery_id"])
    try:
        await sign_in(page, f"{api.url}/", await token(isolated_db, TokenScope.OPERATOR,
                                                       "carol on call"))
        await page.page.get_by_role("button", name=f"Deliveries of endpoint {receiver.url}"
                                    ).click()
        rows = page.page.locator("#hooks-deliveries-body tr")
        await expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
        await page.page.get_by_role("button", name=f"Replay delivery {delivery_id}").click()
        await page.page.get_by_role("button", name="Review…").click()
        await expect(page.page.locator("#action-body [role=alert]")).to_contain_text(
            "Give a reason")
        await page.page.get_by_label("Reason", exact=True).fill("receiver fixed, ticket 77")
        await page.page.get_by_role("button", name="Review…").click()
        confirm = page.page.locator(".confirm")
        await expect(confirm).to_contain_text(f"send event #1 of delivery {delivery_id} again")
        await shot(page, "operators-replay-confirm.png")
        assert len(await deliveries_of(isolated_db, hooked.participant_id)) == 1, \
            "nothing before Confirm"
        await page.page.get_by_role("button", name="Confirm").click()
        await expect(confirm).to_contain_text("Done", timeout=TIMEOUT_MS)
        await expect(rows).to_have_count(2, timeout=TIMEOUT_MS)
        await expect(rows.first).to_contain_text("PENDING")
        await expect(rows.first).to_contain_text(f"replay of {delivery_id[:8]}")
        # Again while that replay waits: lost the race, the page says what stands now.
        await page.page.get_by_role("button", name=f"Replay delivery {delivery_id}").click()
        await page.page.get_by_label("Reason", exact=True).fill("double click")
        await page.page.get_by_role("button", name="Review…").click()
        await page.page.get_by_role("button", name="Confirm").click()
        await expect(confirm).to_contain_text("Not done: someone or something got there first",
                                              timeout=TIMEOUT_MS)
        await expect(confirm).to_contain_text("status: PENDING")
        await shot(page, "operators-replay-409.png")
        assert len(await deliveries_of(isolated_db, hooked.participant_id)) == 2
        # The payment's history names who replayed and why.
        [event] = await admin(isolated_db, "SELECT outbox_id FROM symphony.payment_events "
                                           "WHERE participant_id = %s",
                              (hooked.participant_id,))
        await page.page.get_by_label("Outbox id").fill(str(event["outbox_id"]))
        await page.page.get_by_role("button", name="Look up", exact=True).click()
        history = page.page.locator("#item-actions")
        await expect(history).to_contain_text("REPLAY_WEBHOOK_DELIVERY", timeout=TIMEOUT_MS)
        await expect(history).to_contain_text("carol on call")
        await expect(history).to_contain_text("receiver fixed, ticket 77")
        await history.scroll_into_view_if_needed()
        await shot(page, "operators-replay-history.png")
        # The one console error is the browser's note of the 409 answer.
        assert [p for p in page.problems if "409" not in p] == [], page.problems
    finally:
        await retire(isolated_db, hooked)
        await receiver.stop()


async def test_an_operator_resolves_a_review_item_and_the_history_names_the_token(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, page: Page
) -> None:
    expect = async_api.expect
    outbox_id = await put_under_review(OutboxStore(isolated_db), isolated_admin_dsn)
    await sign_in(page, f"{api.url}/", await token(isolated_db, TokenScope.OPERATOR,
                                                   "alice on call"))
    await expect(page.page.locator("#identity")).to_contain_text("OPERATOR (may act)")
    await page.page.get_by_role("button", name=f"Resolve item {outbox_id}").first.click()
    await page.page.get_by_label("Outcome", exact=True).select_option("DISPATCHED")
    await page.page.get_by_role("button", name="Review…").click()
    # The form says what is missing before anything is sent.
    await expect(page.page.locator("#action-body [role=alert]")).to_contain_text(
        "transaction id")
    await page.page.get_by_label("Rail transaction id", exact=True).fill("RTX-4411")
    await page.page.get_by_label("Reason", exact=True).fill("rail confirmed by phone, ticket 4411")
    await page.page.get_by_role("button", name="Review…").click()
    confirm = page.page.locator(".confirm")
    await expect(confirm).to_contain_text(f"record DISPATCHED for item {outbox_id}")
    await expect(confirm).to_contain_text("cannot be undone")
    await shot(page, "operators-resolve-confirm.png")
    assert await OutboxStore(isolated_db).ledger(outbox_id) == [], "nothing before Confirm"
    await page.page.get_by_role("button", name="Confirm").click()
    await expect(confirm).to_contain_text("Done", timeout=TIMEOUT_MS)
    history = page.page.locator("#item-actions")
    await expect(history).to_contain_text("RESOLVE_REVIEW", timeout=TIMEOUT_MS)
    await expect(history).to_contain_text("alice on call")
    await expect(history).to_contain_text("rail confirmed by phone, ticket 4411")
    await expect(page.page.locator("#ledger")).to_contain_text("RTX-4411")
    await expect(page.page.locator("#review-body")).not_to_contain_text(str(outbox_id),
                                                                         timeout=TIMEOUT_MS)
    await history.scroll_into_view_if_needed()
    await shot(page, "operators-resolved-history.png")
    ledger = await OutboxStore(isolated_db).ledger(outbox_id)
    assert [r["state"] for r in ledger] == ["DISPATCHING", "DISPATCHED"]
    assert page.problems == [], page.problems


async def test_the_queue_filters_by_state_and_participant(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, page: Page
) -> None:
    expect = async_api.expect
    store = OutboxStore(isolated_db)
    pid = f"filter-{uuid.uuid4().hex[:8]}"
    await AccessStore(isolated_db).add_participant(pid, "Filter Bank")
    now = await database_now(isolated_admin_dsn)
    failed = await ended_item(store, isolated_admin_dsn, "FAILED", now - timedelta(minutes=3),
                              error_code="ACCOUNT_CLOSED",
                              submitted=instruction(participant_id=pid))
    for _ in range(3):
        await store.enqueue(instruction(participant_id=pid))
    await store.enqueue(instruction())
    await sign_in(page, f"{api.url}/", await token(isolated_db, TokenScope.VIEWER, "viewer"))
    await page.page.get_by_label("State", exact=True).select_option("FAILED")
    await page.page.get_by_role("textbox", name="Participant").fill(pid)
    await page.page.get_by_role("button", name="Filter", exact=True).click()
    rows = page.page.locator("#browse-body tr")
    await expect(rows).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(rows).to_contain_text(str(failed))
    await expect(rows).to_contain_text("ACCOUNT_CLOSED")
    await expect(page.page.locator("#browse-summary")).to_contain_text(
        f"state FAILED, participant {pid}")
    await page.page.locator("#browse-panel").scroll_into_view_if_needed()
    await shot(page, "operators-browse-filtered.png")
    await page.page.get_by_label("State", exact=True).select_option("")
    await page.page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows).to_have_count(4, timeout=TIMEOUT_MS)
    # A row opens the item's ledger; its participant opens the participant's view.
    await page.page.locator(f"#browse-body button[aria-label='Look up item {failed}']").click()
    await expect(page.page.locator("#ledger tbody tr")).to_have_count(2)
    await page.page.locator(f"#browse-body button[aria-label='Open participant {pid}']"
                            ).first.click()
    view = page.page.locator("#participant-result")
    await expect(view).to_contain_text("Filter Bank")
    await expect(view).to_contain_text("100.0 % (1 of 1 ended in the last hour)")
    await view.scroll_into_view_if_needed()
    await shot(page, "operators-participant.png")
    assert page.problems == [], page.problems


async def test_the_fleet_card_names_the_uncovered_buckets(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, page: Page
) -> None:
    expect = async_api.expect
    await test_only.query_no_role(isolated_admin_dsn,
                                  "DELETE FROM symphony_ops.worker_heartbeats")
    now = await database_now(isolated_admin_dsn)
    ops = OperatorStore(isolated_db)
    for worker_id, first, last in (("worker-a", 0, 63), ("worker-b", 64, 127),
                                   ("worker-d", 192, 255)):
        await ops.heartbeat(Heartbeat(worker_id, BucketRange(first, last), "0.1.0", now, now, 2))
    await ops.heartbeat(Heartbeat("worker-c", BucketRange(128, 191), "0.1.0", now, now, 0))
    await test_only.query_no_role(
        isolated_admin_dsn,
        "UPDATE symphony_ops.worker_heartbeats SET heartbeat_at = now() - interval '5 minutes'"
        " WHERE worker_id = 'worker-c'")
    await sign_in(page, f"{api.url}/", await token(isolated_db, TokenScope.VIEWER, "viewer"))
    alert = page.page.locator("#fleet-alert")
    await expect(alert).to_be_visible(timeout=TIMEOUT_MS)
    await expect(alert).to_contain_text("ALERT: no live worker covers bucket(s) 128\u2013191")
    await expect(page.page.locator("#fleet-summary")).to_contain_text("3 live, 1 stale")
    stale = page.page.locator("#fleet-body tr", has_text="worker-c")
    await expect(stale).to_contain_text("STALE")
    await page.page.locator("#fleet-panel").scroll_into_view_if_needed()
    await shot(page, "operators-fleet-uncovered.png")
    assert page.problems == [], page.problems


async def test_planted_markup_renders_as_text(
    api: Running, isolated_db: Database, isolated_admin_dsn: str, page: Page
) -> None:
    expect = async_api.expect
    store = OutboxStore(isolated_db)
    pid = f"plant-{uuid.uuid4().hex[:8]}"
    name = "<img src=x id=planted-name onerror=alert(1)>Bank"
    await AccessStore(isolated_db).add_participant(pid, name)
    destination = "<b id=planted-destination>DE89</b>"
    detail = "<script id=planted-detail>alert(2)</script>declined"
    now = await database_now(isolated_admin_dsn)
    failed = await ended_item(store, isolated_admin_dsn, "FAILED", now, error_code="DECLINED",
                              error_detail=detail,
                              submitted=instruction(participant_id=pid,
                                                    payload=payload(destination=destination)))
    await sign_in(page, f"{api.url}/", await token(isolated_db, TokenScope.VIEWER, "viewer"))
    await expect(page.page.locator("#failures-body")).to_contain_text(detail,
                                                                      timeout=TIMEOUT_MS)
    await page.page.get_by_role("textbox", name="Participant").fill(pid)
    await page.page.get_by_role("button", name="Filter", exact=True).click()
    await expect(page.page.locator("#browse-body")).to_contain_text(destination,
                                                                    timeout=TIMEOUT_MS)
    await page.page.locator(f"#browse-body button[aria-label='Open participant {pid}']"
                            ).first.click()
    await expect(page.page.locator("#participant-result")).to_contain_text(name)
    await page.page.locator(f"#failures-body button[aria-label='Look up item {failed}']"
                            ).click()
    await expect(page.page.locator("#ledger")).to_contain_text(detail)
    for planted in ("planted-name", "planted-destination", "planted-detail"):
        assert await page.page.locator(f"#{planted}").count() == 0, planted
    await shot(page, "operators-planted-text.png", full=True)
    assert page.problems == [], page.problems


async def test_an_operator_cancels_a_payment_and_a_leased_one_is_refused_with_its_state(
    api: Running, isolated_db: Database, page: Page
) -> None:
    expect = async_api.expect
    store = OutboxStore(isolated_db)
    pid = f"cancel-{uuid.uuid4().hex[:8]}"
    await AccessStore(isolated_db).add_participant(pid, "Cancel Bank")
    waiting = await store.enqueue(instruction(participant_id=pid))
    racing = await store.enqueue(instruction(participant_id=pid))
    await sign_in(page, f"{api.url}/", await token(isolated_db, TokenScope.OPERATOR,
                                                   "dave on call"))

    async def look_up(outbox_id: UUID) -> None:
        await page.page.get_by_label("Outbox id").fill(str(outbox_id))
        await page.page.get_by_role("button", name="Look up", exact=True).click()
        await expect(page.page.locator("#lookup-result")).to_contain_text(str(outbox_id),
                                                                          timeout=TIMEOUT_MS)

    await look_up(waiting.outbox_id)
    await page.page.get_by_role("button", name=f"Cancel payment {waiting.outbox_id}").click()
    await page.page.get_by_role("button", name="Review…").click()
    await expect(page.page.locator("#action-body [role=alert]")).to_contain_text(
        "Give a reason")
    await page.page.get_by_label("Reason", exact=True).fill("customer withdrew, ticket 512")
    await page.page.get_by_role("button", name="Review…").click()
    confirm = page.page.locator(".confirm")
    await expect(confirm).to_contain_text(f"cancel payment {waiting.outbox_id} of {pid}")
    await shot(page, "operators-cancel-confirm.png")
    assert await store.ledger(waiting.outbox_id) == [], "nothing before Confirm"
    await page.page.get_by_role("button", name="Confirm").click()
    await expect(confirm).to_contain_text("Done", timeout=TIMEOUT_MS)
    await expect(page.page.locator("#ledger")).to_contain_text("CANCELED", timeout=TIMEOUT_MS)
    history = page.page.locator("#item-actions")
    await expect(history).to_contain_text("CANCEL_PAYMENT")
    await expect(history).to_contain_text("dave on call")
    await expect(history).to_contain_text("customer withdrew, ticket 512")
    assert await page.page.get_by_role(
        "button", name=f"Cancel payment {waiting.outbox_id}").count() == 0
    await history.scroll_into_view_if_needed()
    await shot(page, "operators-canceled-history.png")
    assert [r["state"] for r in await store.ledger(waiting.outbox_id)] == ["CANCELED"]
    # A worker leases the other payment between the form and Confirm: refused, with its state.
    await look_up(racing.outbox_id)
    await page.page.get_by_role("button", name=f"Cancel payment {racing.outbox_id}").click()
    await page.page.get_by_label("Reason", exact=True).fill("customer withdrew")
    await page.page.get_by_role("button", name="Review…").click()
    claimed = await store.claim("worker-race", 1000, 60)
    assert racing.outbox_id in {c.outbox_id for c in claimed}
    await page.page.get_by_role("button", name="Confirm").click()
    await expect(confirm).to_contain_text("Not done: the payment cannot be canceled now",
                                          timeout=TIMEOUT_MS)
    await expect(confirm).to_contain_text("state: DISPATCHING")
    await shot(page, "operators-cancel-409.png")
    assert [r["state"] for r in await store.ledger(racing.outbox_id)] == ["DISPATCHING"]
    # The one console error is the browser's note of the 409 answer.
    assert [p for p in page.problems if "409" not in p] == [], page.problems
