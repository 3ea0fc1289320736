// Symphony Outbox operator dashboard: reads only the operator API (/v1/ops/...), with the
// operator token the person enters, kept in sessionStorage (never in a URL or in the page).
// Plain DOM, no libraries; every value from the API is set as text, never parsed as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "symphony.operatorToken";
  const REFRESH_MS = 2000;
  const MINUTES = 30;
  const FAILURES_LIMIT = 20;
  const COUNT_FIELDS = [
    "due", "scheduled", "dispatching", "zombies", "awaiting_lookup", "under_review",
    "pending_total",
    "dispatched_total", "failed_total",
  ];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0; // bumps on sign-in/out so a late answer of an old session is dropped
  let lastGood = null;
  let shownItem = null;
  let shownItemJson = null; // what the lookup shows, so a refresh re-renders only on change

  class ApiError extends Error {
    constructor(status, code, message, requestId) {
      super(message);
      this.status = status;
      this.code = code;
      this.requestId = requestId;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  async function api(path) {
    const current = token();
    if (!current) throw new ApiError(401, "NO_TOKEN", "no operator token entered", null);
    let response;
    try {
      response = await fetch(path, {
        headers: { Authorization: `Bearer ${current}`, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
      });
    } catch (_) {
      throw new ApiError(0, "API_UNREACHABLE", "the API server cannot be reached", null);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const code = (body && body.code) || `HTTP_${response.status}`;
      const message = (body && body.message) || response.statusText || "request failed";
      throw new ApiError(response.status, code, message, body && body.request_id);
    }
    return body;
  }

  // -- formatting ---------------------------------------------------------------------------

  const number = new Intl.NumberFormat();
  const clock = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });
  const minuteClock = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", hour12: false,
  });

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "none";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} m ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- rendering ----------------------------------------------------------------------------

  function renderStatus(status) {
    for (const field of COUNT_FIELDS) {
      const value = status[field];
      const dd = $(`count-${field}`);
      dd.textContent = number.format(value);
      const card = dd.parentElement;
      card.classList.toggle("alert", card.classList.contains("warn-if-nonzero") && value > 0);
    }
    $("oldest-pending").textContent = age(status.oldest_pending_age_seconds);
  }

  function clearNumbers() {
    // An error must not leave numbers on screen that look current.
    for (const field of COUNT_FIELDS) {
      const dd = $(`count-${field}`);
      dd.textContent = "—";
      dd.parentElement.classList.remove("alert");
    }
    $("oldest-pending").textContent = "—";
    const chart = $("throughput-chart");
    while (chart.firstChild) chart.removeChild(chart.firstChild);
    $("throughput-summary").textContent = "No current data.";
    const body = $("failures-body");
    body.replaceChildren(emptyRow("No current data."));
    if (shownItem) {
      // Shown again (fresh) by the first refresh that succeeds.
      shownItemJson = null;
      $("lookup-result").replaceChildren(el("p", "No current data.", "notice"));
    }
  }

  function emptyRow(text) {
    const row = el("tr");
    const cell = el("td", text, "empty");
    cell.colSpan = 6;
    row.append(cell);
    return row;
  }

  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) {
      if (value <= step * power) return step * power;
    }
    return 10 * power;
  }

  function renderThroughput(data) {
    const chart = $("throughput-chart");
    while (chart.firstChild) chart.removeChild(chart.firstChild);
    const buckets = data.buckets;
    $("throughput-minutes").textContent = String(data.minutes);
    const W = 720, H = 200, left = 44, right = 8, top = 10, bottom = 26;
    const plotW = W - left - right, plotH = H - top - bottom;
    const totals = buckets.map((b) => b.dispatched + b.failed);
    const peak = Math.max(0, ...totals);
    const scale = niceCeiling(Math.max(1, peak));
    for (const f of [0, 0.5, 1]) {
      const y = top + plotH * (1 - f);
      chart.append(svg("line", { x1: left, x2: W - right, y1: y, y2: y,
        class: f === 0 ? "axis" : "grid" }));
      const label = f === 0.5 && scale % 2 ? (scale / 2).toFixed(1) : String(scale * f);
      chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "label" },
        label));
    }
    const slot = plotW / Math.max(1, buckets.length);
    const width = Math.max(1, slot * 0.72);
    buckets.forEach((b, i) => {
      const x = left + i * slot + (slot - width) / 2;
      const hd = (b.dispatched / scale) * plotH;
      const hf = (b.failed / scale) * plotH;
      const group = svg("g", {});
      const minute = minuteClock.format(new Date(b.minute));
      group.append(svg("title", {},
        `${minute}: ${b.dispatched} dispatched, ${b.failed} failed`));
      if (hd > 0) {
        group.append(svg("rect", { x, y: top + plotH - hd, width, height: hd,
          class: "bar-dispatched" }));
      }
      if (hf > 0) {
        group.append(svg("rect", { x, y: top + plotH - hd - hf, width, height: hf,
          class: "bar-failed" }));
      }
      chart.append(group);
    });
    const ticks = [0, Math.floor((buckets.length - 1) / 2), buckets.length - 1];
    for (const i of new Set(ticks)) {
      if (!buckets[i]) continue;
      const x = left + i * slot + slot / 2;
      chart.append(svg("text", { x, y: H - 8, "text-anchor": "middle", class: "label" },
        minuteClock.format(new Date(buckets[i].minute))));
    }
    const dispatched = buckets.reduce((n, b) => n + b.dispatched, 0);
    const failed = buckets.reduce((n, b) => n + b.failed, 0);
    const now = buckets.length ? totals[totals.length - 1] : 0;
    $("throughput-summary").textContent =
      `Last ${buckets.length} minutes: ${number.format(dispatched)} dispatched, ` +
      `${number.format(failed)} failed; peak ${number.format(peak)} per minute; ` +
      `${number.format(now)} so far this minute.`;
  }

  function lookupButton(outboxId) {
    const button = el("button", outboxId, "link mono");
    button.type = "button";
    button.setAttribute("aria-label", `Look up item ${outboxId}`);
    button.addEventListener("click", () => {
      $("lookup-input").value = outboxId;
      lookup(outboxId);
    });
    return button;
  }

  function renderFailures(data) {
    const body = $("failures-body");
    if (!data.items.length) {
      body.replaceChildren(emptyRow("No failed items."));
      return;
    }
    body.replaceChildren(...data.items.map((f) => {
      const row = el("tr");
      const item = el("td");
      item.append(lookupButton(f.outbox_id));
      row.append(el("td", when(f.failed_at)), item, el("td", f.participant_id),
        el("td", f.rail_type), el("td", f.error_code || "—", "mono"),
        el("td", f.error_detail || ""));
      return row;
    }));
  }

  function renderItem(item) {
    const box = el("div", null, "item");
    const dl = el("dl");
    const fields = [
      ["Outbox id", item.outbox_id], ["State", item.state],
      ["Participant", item.participant_id], ["Instruction", item.instruction_id],
      ["Idempotency key", item.idempotency_key],
      ["Rail", item.rail_type], ["Payload", JSON.stringify(item.payload)],
      ["Created", when(item.created_at)], ["Attempts started", item.attempt_count ?? "—"],
      ["Next attempt", when(item.next_attempt_at)], ["Leased by", item.claimed_by || "—"],
      ["Lease expires", when(item.lease_expires_at)],
    ];
    for (const [name, value] of fields) {
      const dd = el("dd", value);
      if (name === "State") dd.className = `state state-${item.state}`;
      if (name === "Payload" || name === "Outbox id") dd.classList.add("mono");
      dl.append(el("dt", name), dd);
    }
    box.append(dl);
    const table = el("table");
    table.id = "ledger";
    const caption = el("caption", `Ledger: ${item.ledger.length} row(s), oldest first`);
    caption.className = "notice";
    const head = el("thead");
    const hr = el("tr");
    for (const h of ["#", "State", "Worker", "Error", "Detail", "Rail transaction", "Recorded"]) {
      const th = el("th", h);
      th.scope = "col";
      hr.append(th);
    }
    head.append(hr);
    const body = el("tbody");
    for (const row of item.ledger) {
      const tr = el("tr");
      tr.append(el("td", row.attempt_no), el("td", row.state, `state state-${row.state}`),
        el("td", row.worker_id || "—"), el("td", row.error_code || "—", "mono"),
        el("td", row.error_detail || ""), el("td", row.rail_transaction_id || "—", "mono"),
        el("td", when(row.recorded_at)));
      body.append(tr);
    }
    table.append(caption, head, body);
    box.append(table);
    $("lookup-result").replaceChildren(box);
  }

  async function lookup(outboxId) {
    shownItem = outboxId.trim();
    shownItemJson = null;
    await refreshItem(generation);
  }

  async function refreshItem(gen) {
    if (!shownItem) return;
    const id = shownItem;
    try {
      const item = await api(`/v1/ops/payments/${encodeURIComponent(id)}`);
      const json = JSON.stringify(item);
      if (gen === generation && id === shownItem && json !== shownItemJson) {
        shownItemJson = json;
        renderItem(item);
      }
    } catch (err) {
      if (gen !== generation || id !== shownItem) return;
      if (err.status === 401 || err.status === 403) throw err;
      const text = err.status === 404 ? `No item with outbox id ${id}.`
        : err.status === 422 ? `${id} is not an outbox id.`
          : `Lookup failed: ${describe(err)}`;
      shownItemJson = null;
      $("lookup-result").replaceChildren(el("p", text, "notice bad"));
      if (err.status !== 404 && err.status !== 422) throw err;
    }
  }

  // -- errors and freshness -----------------------------------------------------------------

  function describe(err) {
    const ref = err.requestId ? ` (request ${err.requestId})` : "";
    if (err.status === 0) return `the API server cannot be reached${ref}`;
    return `${err.message} [${err.code}, HTTP ${err.status}]${ref}`;
  }

  function showError(text) {
    const banner = $("error");
    banner.textContent = text;
    banner.hidden = false;
  }

  function hideError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function markLive(observedAt) {
    lastGood = new Date();
    const f = $("freshness");
    f.className = "freshness live";
    const db = observedAt ? ` · database time ${clock.format(new Date(observedAt))}` : "";
    f.textContent = `Live · last updated ${clock.format(lastGood)}${db}`;
  }

  function markStale() {
    const f = $("freshness");
    f.className = "freshness stale";
    f.textContent = lastGood
      ? `Not updating · last good update ${clock.format(lastGood)}`
      : "Not updating · no data yet";
  }

  // -- the refresh loop ---------------------------------------------------------------------

  async function refresh() {
    const gen = generation;
    try {
      const [status, throughput, failures] = await Promise.all([
        api("/v1/ops/status"),
        api(`/v1/ops/throughput?minutes=${MINUTES}`),
        api(`/v1/ops/failures?limit=${FAILURES_LIMIT}`),
      ]);
      if (gen !== generation) return;
      renderStatus(status);
      renderThroughput(throughput);
      renderFailures(failures);
      await refreshItem(gen);
      if (gen !== generation) return;
      hideError();
      markLive(status.observed_at);
    } catch (err) {
      if (gen !== generation) return;
      clearNumbers();
      markStale();
      if (err.status === 401 || err.status === 403) {
        signOut(err.status === 401
          ? `The operator token was refused (${describe(err)}). Enter a valid operator token.`
          : `This token may not use the operator API (${describe(err)}). Enter an operator token.`);
        return;
      }
      const prefix = err.status === 503 ? "The database is unavailable"
        : err.status === 0 ? "The dashboard lost its connection" : "Refresh failed";
      showError(`${prefix}: ${describe(err)}. Numbers are hidden until a refresh succeeds; ` +
        `retrying every ${REFRESH_MS / 1000} s.`);
    }
    if (gen === generation) timer = setTimeout(refresh, REFRESH_MS);
  }

  function signIn(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
    generation += 1;
    hideError();
    $("login").hidden = true;
    $("board").hidden = false;
    $("forget-token").hidden = false;
    $("freshness").textContent = "Connecting …";
    clearTimeout(timer);
    refresh();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    generation += 1;
    clearTimeout(timer);
    timer = null;
    shownItem = null;
    shownItemJson = null;
    clearNumbers();
    $("lookup-result").replaceChildren();
    $("board").hidden = true;
    $("forget-token").hidden = true;
    $("login").hidden = false;
    const f = $("freshness");
    f.className = "freshness";
    f.textContent = "Not connected";
    if (message) showError(message); else hideError();
    $("token-input").focus();
  }

  // -- webhook endpoint health (its own card and loop) -------------------------------------

  const HOOK_FIELDS = [
    "endpoints_enabled", "endpoints_disabled", "endpoints_failing", "deliveries_pending",
    "deliveries_failed",
  ];

  function renderWebhooks(health) {
    for (const field of HOOK_FIELDS) {
      const dd = $(`hooks-${field}`);
      const value = health[field];
      dd.textContent = number.format(value);
      const card = dd.parentElement;
      card.classList.toggle("alert", card.classList.contains("warn-if-nonzero") && value > 0);
    }
    $("hooks-oldest").textContent = age(health.oldest_due_age_seconds);
    const body = $("hooks-failing-body");
    const failing = Array.isArray(health.failing) ? health.failing : [];
    if (failing.length === 0) {
      const row = el("tr");
      const cell = el("td", "No endpoint is failing.", "empty");
      cell.colSpan = 5;
      row.appendChild(cell);
      body.replaceChildren(row);
      return;
    }
    body.replaceChildren(...failing.map((e) => {
      const row = el("tr", null, "failing");
      row.appendChild(el("td", when(e.failing_since)));
      row.appendChild(el("td", e.participant_id, "mono"));
      row.appendChild(el("td", e.url, "mono"));
      row.appendChild(el("td", number.format(e.consecutive_failures)));
      row.appendChild(el("td", e.last_error_class || "—", "mono"));
      return row;
    }));
  }

  function clearWebhooks() {
    for (const field of HOOK_FIELDS) {
      const dd = $(`hooks-${field}`);
      dd.textContent = "—";
      dd.parentElement.classList.remove("alert");
    }
    $("hooks-oldest").textContent = "—";
    const row = el("tr");
    const cell = el("td", "No current data.", "empty");
    cell.colSpan = 5;
    row.appendChild(cell);
    $("hooks-failing-body").replaceChildren(row);
  }

  async function refreshWebhooks() {
    const card = $("webhooks");
    if (token() && !$("board").hidden) {
      try {
        renderWebhooks(await api("/v1/ops/webhook_health"));
        card.hidden = false;
      } catch (err) {
        clearWebhooks();
        // Not served by this API (no webhook routes): the card stays away.
        if (err.status === 404) card.hidden = true;
      }
    }
    setTimeout(refreshWebhooks, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", refreshWebhooks);

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token-input");
      const value = input.value.trim();
      input.value = "";
      if (value) signIn(value);
    });
    $("lookup-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("lookup-input").value.trim();
      if (value) lookup(value).catch(() => {});
    });
    $("forget-token").addEventListener("click", () => signOut(null));
    const saved = token();
    if (saved) signIn(saved); else signOut(null);
  });
})();
