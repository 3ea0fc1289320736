// Symphony Outbox operator dashboard: reads only the operator API (/v1/ops/...), with the
// operator token the person enters, kept in sessionStorage (never in a URL or in the page).
// Plain DOM, no libraries; every value from the API is set as text, never parsed as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "symphony.operatorToken";
  const REFRESH_MS = 2000;
  const MINUTES = 30;
  const FAILURES_LIMIT = 20;
  const REVIEW_LIMIT = 20;
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
  let me = null; // the signed-in token: {label, scope, may_act}; actions only when may_act
  let shownParticipant = null;
  let shownParticipantJson = null;
  let browse = { state: "", participant: "", rail: "", after: null, next: null };
  let browseJson = null;
  const rendered = {}; // section name -> JSON last rendered, so a refresh re-renders on change

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

  async function api(path, body) {
    const current = token();
    if (!current) throw new ApiError(401, "NO_TOKEN", "no operator token entered", null);
    const headers = { Authorization: `Bearer ${current}`, Accept: "application/json" };
    const init = { headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, "API_UNREACHABLE", "the API server cannot be reached", null);
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (_) {
      answer = null;
    }
    if (!response.ok) {
      const code = (answer && answer.code) || `HTTP_${response.status}`;
      const message = (answer && answer.message) || response.statusText || "request failed";
      const err = new ApiError(response.status, code, message, answer && answer.request_id);
      err.current = answer && answer.current;
      throw err;
    }
    return answer;
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
    $("fleet-body").replaceChildren(emptyRow("No current data.", 8));
    $("fleet-summary").textContent = "No current data.";
    $("fleet-alert").hidden = true;
    $("review-body").replaceChildren(emptyRow("No current data.", 7));
    $("browse-body").replaceChildren(emptyRow("No current data.", 8));
    $("browse-summary").textContent = "";
    $("tokens-body").replaceChildren(emptyRow("No current data.", 8));
    for (const key of Object.keys(rendered)) delete rendered[key];
    browseJson = null;
    if (shownParticipant) {
      shownParticipantJson = null;
      $("participant-result").replaceChildren(el("p", "No current data.", "notice"));
    }
    if (shownItem) {
      // Shown again (fresh) by the first refresh that succeeds.
      shownItemJson = null;
      $("lookup-result").replaceChildren(el("p", "No current data.", "notice"));
    }
  }

  function emptyRow(text, columns) {
    const row = el("tr");
    const cell = el("td", text, "empty");
    cell.colSpan = columns || 6;
    row.append(cell);
    return row;
  }

  function changed(name, data) {
    const json = JSON.stringify(data);
    if (rendered[name] === json) return false;
    rendered[name] = json;
    return true;
  }

  function mayAct() {
    return Boolean(me && me.may_act);
  }

  function amountOf(item) {
    if (!item.amount) return "—";
    return item.currency ? `${item.amount} ${item.currency}` : String(item.amount);
  }

  let lastTrigger = null; // the action button last pressed: its form opens beside it

  function actionButton(text, onClick, label) {
    const button = el("button", text, "act");
    button.type = "button";
    if (label) button.setAttribute("aria-label", label);
    button.addEventListener("click", (event) => {
      lastTrigger = button;
      onClick(event);
    });
    return button;
  }

  const UUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  // A long id shortened for a table cell (the whole value stays in the cell's title).
  function brief(value) {
    const text = String(value);
    return UUID_TEXT.test(text) ? `${text.slice(0, 8)}…` : text;
  }

  function participantButton(participantId) {
    const button = el("button", participantId, "link");
    button.type = "button";
    button.setAttribute("aria-label", `Open participant ${participantId}`);
    button.addEventListener("click", () => openParticipant(participantId));
    return button;
  }

  function stateCell(state) {
    return el("td", state || "—", `state state-${state}`);
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
      ["Under review", item.review_reason ? `yes: ${item.review_reason}` : "no"],
    ];
    for (const [name, value] of fields) {
      const dd = el("dd", value);
      if (name === "State") dd.className = `state state-${item.state}`;
      if (name === "Payload" || name === "Outbox id") dd.classList.add("mono");
      dl.append(el("dt", name), dd);
    }
    box.append(dl);
    const tools = el("p", null, "tools");
    const open = actionButton("Open participant", () => openParticipant(item.participant_id));
    open.className = "quiet";
    tools.append(open);
    if (mayAct() && item.review_reason) {
      tools.append(actionButton("Resolve…", () => openResolve(item.outbox_id),
        `Resolve item ${item.outbox_id}`));
    }
    // Cancelable only while no attempt can have reached the rail: the database decides (a
    // 409 says where the payment stands); the button is offered for a waiting payment.
    if (mayAct() && item.state === "PENDING" && !item.review_reason) {
      tools.append(actionButton("Cancel…", () => openCancel(item),
        `Cancel payment ${item.outbox_id}`));
    }
    box.append(tools);
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
    const history = actionsTable(item.actions || [], "Operator actions, oldest first");
    history.id = "item-actions";
    box.append(history);
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
      const json = JSON.stringify([item, mayAct()]);
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

  // -- the fleet ----------------------------------------------------------------------------

  function bucketRanges(ranges) {
    return ranges.map((r) => (r.bucket_from === r.bucket_to ? `${r.bucket_from}`
      : `${r.bucket_from}–${r.bucket_to}`)).join(", ");
  }

  function renderFleet(fleet) {
    if (!changed("fleet", fleet)) return;
    $("fleet-summary").textContent =
      `${fleet.live_workers} live, ${fleet.stale_workers} stale ` +
      `(${fleet.bucket_count - fleet.uncovered_bucket_count} of ${fleet.bucket_count} ` +
      "buckets covered by a live worker).";
    const alert = $("fleet-alert");
    if (fleet.alert) {
      alert.textContent = `⚠ ALERT: no live worker covers bucket(s) ` +
        `${bucketRanges(fleet.uncovered_buckets)} (${fleet.uncovered_bucket_count} of ` +
        `${fleet.bucket_count}): payments of those participants are claimed by nobody.`;
      alert.hidden = false;
    } else {
      alert.hidden = true;
      alert.textContent = "";
    }
    $("fleet-panel").classList.toggle("alarm", fleet.alert);
    const body = $("fleet-body");
    if (!fleet.workers.length) {
      body.replaceChildren(emptyRow("No worker has sent a heartbeat in the last day.", 8));
      return;
    }
    body.replaceChildren(...fleet.workers.map((w) => {
      const row = el("tr", null, w.stale ? "stale-row" : "");
      row.append(el("td", w.stale ? "STALE" : "LIVE", w.stale ? "tag bad" : "tag ok"),
        el("td", w.worker_id, "mono"), el("td", `${w.bucket_from}–${w.bucket_to}`),
        el("td", w.version), el("td", number.format(w.in_flight)),
        el("td", `${age(w.heartbeat_age_seconds)} ago`), el("td", when(w.last_cycle_at)),
        el("td", when(w.started_at)));
      return row;
    }));
  }

  // -- review queue, browse, tokens ----------------------------------------------------------

  function renderReview(page) {
    if (!changed("review", [page, mayAct()])) return;
    const body = $("review-body");
    if (!page.data.length) {
      body.replaceChildren(emptyRow("Nothing waits for an operator.", 7));
      return;
    }
    body.replaceChildren(...page.data.map((item) => {
      const row = el("tr");
      const cell = el("td");
      cell.append(lookupButton(item.outbox_id));
      const who = el("td");
      who.append(participantButton(item.participant_id));
      const act = el("td");
      if (mayAct()) {
        act.append(actionButton("Resolve…", () => openResolve(item.outbox_id),
          `Resolve item ${item.outbox_id}`));
      } else {
        act.textContent = "—";
      }
      row.append(el("td", when(item.updated_at)), cell, who, el("td", item.rail_type),
        el("td", amountOf(item)), el("td", item.review_reason || "—", "mono"), act);
      return row;
    }));
  }

  function browseQuery() {
    const params = new URLSearchParams({ limit: "25" });
    if (browse.state) params.set("state", browse.state);
    if (browse.participant) params.set("participant", browse.participant);
    if (browse.rail) params.set("rail", browse.rail);
    if (browse.after) params.set("after", browse.after);
    return `/v1/ops/payments?${params}`;
  }

  function renderBrowse(page) {
    const json = JSON.stringify(page);
    if (json === browseJson) return;
    browseJson = json;
    browse.next = page.has_more ? page.next_after : null;
    $("browse-next").disabled = !browse.next;
    const filters = [browse.state && `state ${browse.state}`,
      browse.participant && `participant ${browse.participant}`,
      browse.rail && `rail ${browse.rail}`].filter(Boolean).join(", ");
    $("browse-summary").textContent =
      `${page.data.length} item(s)${filters ? ` with ${filters}` : ""}` +
      `${browse.after ? " (a later page)" : ", newest first"}` +
      `${page.has_more ? "; more on the next page" : ""}.`;
    const body = $("browse-body");
    if (!page.data.length) {
      body.replaceChildren(emptyRow(page.has_more
        ? "None among the items looked at; try the next page." : "No items match.", 8));
      return;
    }
    body.replaceChildren(...page.data.map((item) => {
      const row = el("tr");
      const cell = el("td");
      cell.append(lookupButton(item.outbox_id));
      const who = el("td");
      who.append(participantButton(item.participant_id));
      row.append(el("td", when(item.created_at)), cell, who, el("td", item.rail_type),
        stateCell(item.state), el("td", amountOf(item)), el("td", item.destination || "—"),
        el("td", item.last_error_code || "—", "mono"));
      return row;
    }));
  }

  async function refreshBrowse(gen) {
    const page = await api(browseQuery());
    if (gen === generation) renderBrowse(page);
  }

  function renderTokens(data) {
    if (!changed("tokens", [data, mayAct()])) return;
    const body = $("tokens-body");
    if (!data.data.length) {
      body.replaceChildren(emptyRow("No tokens.", 8));
      return;
    }
    body.replaceChildren(...data.data.map((t) => {
      const row = el("tr");
      const act = el("td");
      if (!t.revoked_at && mayAct()) {
        act.append(actionButton("Revoke…", () => openRevokeToken(t),
          `Revoke token ${t.token_id}`));
      } else {
        act.textContent = "—";
      }
      row.append(el("td", when(t.created_at)), el("td", t.token_id, "mono"),
        el("td", t.kind), el("td", t.scope || "—"), el("td", t.participant_id || "—"),
        el("td", t.label || "—"),
        el("td", t.revoked_at ? `REVOKED ${when(t.revoked_at)}` : "ACTIVE",
          t.revoked_at ? "tag bad" : "tag ok"), act);
      return row;
    }));
  }

  // -- one participant -----------------------------------------------------------------------

  async function openParticipant(participantId) {
    shownParticipant = participantId;
    shownParticipantJson = null;
    $("participant-panel").hidden = false;
    await refreshParticipant(generation).catch(() => {});
    $("participant-panel").scrollIntoView({ block: "nearest" });
  }

  async function refreshParticipant(gen) {
    if (!shownParticipant) return;
    const id = shownParticipant;
    try {
      const p = await api(`/v1/ops/participants/${encodeURIComponent(id)}`);
      const json = JSON.stringify([p, mayAct()]);
      if (gen === generation && id === shownParticipant && json !== shownParticipantJson) {
        shownParticipantJson = json;
        renderParticipant(p);
      }
    } catch (err) {
      if (gen !== generation || id !== shownParticipant) return;
      if (err.status === 401 || err.status === 403) throw err;
      shownParticipantJson = null;
      $("participant-result").replaceChildren(el("p", err.status === 404
        ? `No participant ${id}.` : `Participant view failed: ${describe(err)}`, "notice bad"));
      if (err.status !== 404 && err.status !== 422) throw err;
    }
  }

  function renderParticipant(p) {
    const box = el("div", null, "item");
    const head = el("p");
    head.append(el("strong", p.display_name), el("span", ` · ${p.participant_id} · `),
      el("span", p.status, p.status === "ACTIVE" ? "tag ok" : "tag bad"),
      el("span", ` · bucket ${p.bucket}`));
    box.append(head);
    const ended = p.dispatched_last_hour + p.failed_last_hour;
    const rate = p.failure_rate_last_hour === null ? "no item ended in the last hour"
      : `${(p.failure_rate_last_hour * 100).toFixed(1)} % (${p.failed_last_hour} of ${ended} ` +
        "ended in the last hour)";
    const dl = el("dl", null, "counts");
    for (const [name, value] of [
      ["Due", p.due], ["Scheduled", p.scheduled], ["Dispatching", p.dispatching],
      ["Zombies", p.zombies], ["Under review", p.under_review],
      ["Pending total", p.pending_total],
      ["Oldest pending", age(p.oldest_pending_age_seconds)],
      ["Dispatched (24 h)", p.dispatched_last_day], ["Failed (24 h)", p.failed_last_day],
    ]) {
      const card = el("div", null, "count");
      card.append(el("dt", name), el("dd", typeof value === "number" ? number.format(value)
        : value));
      dl.append(card);
    }
    box.append(dl, el("p", `Failure rate over the last hour: ${rate}.`, "rate"));
    const tools = el("p", null, "tools");
    const show = actionButton("Show its payments", () => {
      $("browse-participant").value = p.participant_id;
      applyBrowse();
    });
    show.className = "quiet";
    tools.append(show);
    if (mayAct() && p.status === "ACTIVE") {
      tools.append(actionButton("Revoke participant…", () => openRevokeParticipant(p),
        `Revoke participant ${p.participant_id}`));
    }
    box.append(tools);
    box.append(actionsTable(p.actions, "Operator actions on this participant"));
    $("participant-result").replaceChildren(box);
  }

  function actionsTable(actions, title) {
    const table = el("table", null, "actions");
    table.append(el("caption", `${title}: ${actions.length}`, "notice"));
    const head = el("thead");
    const hr = el("tr");
    for (const h of ["When", "Action", "By", "Token", "Reason", "Outcome", "Via login"]) {
      const th = el("th", h);
      th.scope = "col";
      hr.append(th);
    }
    head.append(hr);
    const body = el("tbody");
    for (const a of actions) {
      const tr = el("tr");
      const entries = Object.entries(a.outcome || {})
        .filter(([, v]) => v !== null && v !== undefined);
      const outcome = el("td", entries.map(([k, v]) => `${k}: ${brief(v)}`).join(", ") || "—");
      outcome.title = entries.map(([k, v]) => `${k}: ${v}`).join("\n");
      const tokenCell = el("td", a.actor_token_id ? brief(a.actor_token_id) : "command line",
        "mono");
      if (a.actor_token_id) tokenCell.title = a.actor_token_id;
      tr.append(el("td", when(a.recorded_at)), el("td", a.action, "mono"),
        el("td", a.actor_label || "—", "who"), tokenCell,
        el("td", a.reason), outcome, el("td", a.recorded_by, "mono"));
      body.append(tr);
    }
    if (!actions.length) body.append(emptyRow("None.", 7));
    table.append(head, body);
    return table;
  }

  // -- actions: a form, then a confirmation, then the request ---------------------------------

  function closeAction() {
    $("action-panel").hidden = true;
    $("action-body").replaceChildren();
  }

  function field(labelText, control, id) {
    control.id = id;
    const wrap = el("p", null, "field");
    const label = el("label", labelText);
    label.htmlFor = id;
    wrap.append(label, control);
    return wrap;
  }

  function reasonInput() {
    const input = el("input");
    input.required = true;
    input.maxLength = 500;
    input.autocomplete = "off";
    input.placeholder = "why (kept in the item's history with your token's label)";
    return input;
  }

  // One action: `build` fills the form and returns a function that reads it into
  // {summary, path, body} (or throws an Error whose message is shown); the person confirms
  // the summary before anything is sent.
  function openAction(title, build) {
    const panel = $("action-panel");
    // Beside the section whose button opened it, so the person does not lose their place.
    const home = lastTrigger && lastTrigger.isConnected ? lastTrigger.closest("section") : null;
    if (home && home !== panel && home.nextElementSibling !== panel) home.after(panel);
    $("action-title").textContent = title;
    const form = el("form", null, "action-form");
    form.autocomplete = "off";
    // The script checks and says what is missing, in the page (not a browser bubble).
    form.noValidate = true;
    const read = build(form);
    const error = el("p", null, "notice bad");
    error.setAttribute("role", "alert");
    const submit = el("button", "Review…");
    submit.type = "submit";
    const cancel = el("button", "Close", "quiet");
    cancel.type = "button";
    cancel.addEventListener("click", closeAction);
    form.append(submit, cancel, error);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      let request;
      try {
        request = read();
      } catch (err) {
        error.textContent = err.message;
        return;
      }
      confirmAction(title, request);
    });
    $("action-body").replaceChildren(form);
    panel.hidden = false;
    panel.scrollIntoView({ block: "nearest" });
    const first = form.querySelector("select, input");
    if (first) first.focus();
  }

  function confirmAction(title, request) {
    const box = el("div", null, "confirm");
    box.setAttribute("role", "alertdialog");
    box.setAttribute("aria-label", `Confirm: ${title}`);
    box.append(el("p", `Confirm: ${request.summary}`, "confirm-text"),
      el("p", "This cannot be undone. It is recorded with your token's id and label and the " +
        "reason.", "notice"));
    const go = el("button", "Confirm", "danger");
    go.type = "button";
    const back = el("button", "Back", "quiet");
    back.type = "button";
    back.addEventListener("click", () => request.reopen());
    const result = el("p", null, "notice");
    result.setAttribute("role", "status");
    go.addEventListener("click", async () => {
      go.disabled = true;
      back.disabled = true;
      try {
        await api(request.path, request.body);
        box.replaceChildren(el("p", `Done: ${request.summary}.`, "done"));
        const close = el("button", "Close", "quiet");
        close.type = "button";
        close.addEventListener("click", closeAction);
        box.append(close);
        if (request.after) await request.after();
        rendered.review = null;
        rendered.tokens = null;
      } catch (err) {
        if (err.status === 409) {
          const now = err.current ? Object.entries(err.current)
            .filter(([, v]) => v !== null && v !== undefined)
            .map(([k, v]) => `${k}: ${v}`).join(", ") : "unknown";
          result.textContent = err.code === "payment_not_cancelable"
            ? `Not done: the payment cannot be canceled now (an attempt may have reached the ` +
              `rail, or it has ended). Now: ${now}.`
            : `Not done: someone or something got there first. Now: ${now}.`;
        } else if (err.status === 403) {
          result.textContent = `Not allowed: ${describe(err)}.`;
        } else {
          result.textContent = `Failed: ${describe(err)}.`;
        }
        result.className = "notice bad";
        back.disabled = false;
      }
    });
    box.append(go, back, result);
    $("action-body").replaceChildren(box);
    go.focus();
  }

  function openResolve(outboxId) {
    const build = (form) => {
      const outcome = el("select");
      for (const [value, text] of [["", "choose the rail's outcome"],
        ["DISPATCHED", "DISPATCHED: the rail executed it"],
        ["FAILED", "FAILED: the rail did not execute it"]]) {
        const option = el("option", text);
        option.value = value;
        outcome.append(option);
      }
      outcome.required = true;
      const tx = el("input");
      tx.maxLength = 200;
      tx.autocomplete = "off";
      tx.placeholder = "required for DISPATCHED";
      const reason = reasonInput();
      form.append(el("p", `Item ${outboxId}`, "mono"),
        field("Outcome", outcome, "resolve-outcome"),
        field("Rail transaction id", tx, "resolve-tx"),
        field("Reason", reason, "resolve-reason"));
      return () => {
        if (!outcome.value) throw new Error("Choose the rail's confirmed outcome.");
        if (outcome.value === "DISPATCHED" && !tx.value.trim()) {
          throw new Error("DISPATCHED needs the rail's transaction id.");
        }
        if (!reason.value.trim()) throw new Error("Give a reason.");
        const body = { outcome: outcome.value, reason: reason.value.trim() };
        if (tx.value.trim()) body.rail_transaction_id = tx.value.trim();
        return {
          summary: `record ${outcome.value} for item ${outboxId}` +
            (body.rail_transaction_id ? ` (rail transaction ${body.rail_transaction_id})` : ""),
          path: `/v1/ops/payments/${encodeURIComponent(outboxId)}/resolve`,
          body,
          reopen: () => openResolve(outboxId),
          after: () => lookup(outboxId),
        };
      };
    };
    openAction("Resolve a review item", build);
  }

  function openCancel(item) {
    openAction("Cancel a payment", (form) => {
      const reason = reasonInput();
      form.append(el("p", `Payment ${item.outbox_id} of ${item.participant_id} ` +
        `(${item.rail_type}, instruction ${item.instruction_id}): canceled only if no attempt ` +
        "of it can have reached the rail; it then never goes to the rail.", "notice"),
        field("Reason", reason, "cancel-reason"));
      return () => {
        if (!reason.value.trim()) throw new Error("Give a reason.");
        return {
          summary: `cancel payment ${item.outbox_id} of ${item.participant_id}`,
          path: `/v1/ops/payments/${encodeURIComponent(item.outbox_id)}/cancel`,
          body: { reason: reason.value.trim() },
          reopen: () => openCancel(item),
          after: () => lookup(item.outbox_id),
        };
      };
    });
  }

  function openRevokeParticipant(p) {
    openAction("Revoke a participant", (form) => {
      const reason = reasonInput();
      form.append(el("p", `${p.display_name} (${p.participant_id}) and all its tokens: its ` +
        "accepted payments still go on unless canceled.", "notice"),
        field("Reason", reason, "revoke-participant-reason"));
      return () => {
        if (!reason.value.trim()) throw new Error("Give a reason.");
        return {
          summary: `revoke participant ${p.participant_id} and all its tokens`,
          path: `/v1/ops/participants/${encodeURIComponent(p.participant_id)}/revoke`,
          body: { reason: reason.value.trim() },
          reopen: () => openRevokeParticipant(p),
          after: () => openParticipant(p.participant_id),
        };
      };
    });
  }

  function openRevokeToken(t) {
    openAction("Revoke a token", (form) => {
      const reason = reasonInput();
      form.append(el("p", `${t.kind} token ${t.token_id}` +
        (t.label ? ` (“${t.label}”)` : ""), "mono"),
        field("Reason", reason, "revoke-token-reason"));
      return () => {
        if (!reason.value.trim()) throw new Error("Give a reason.");
        return {
          summary: `revoke token ${t.token_id}`,
          path: `/v1/ops/tokens/${encodeURIComponent(t.token_id)}/revoke`,
          body: { reason: reason.value.trim() },
          reopen: () => openRevokeToken(t),
          after: null,
        };
      };
    });
  }

  function applyBrowse() {
    browse = {
      state: $("browse-state").value,
      participant: $("browse-participant").value.trim(),
      rail: $("browse-rail").value.trim(),
      after: null,
      next: null,
    };
    browseJson = null;
    refreshBrowse(generation).catch((err) => {
      $("browse-summary").textContent = `Browse failed: ${describe(err)}`;
    });
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
      const [status, throughput, failures, fleet, review, tokens] = await Promise.all([
        api("/v1/ops/status"),
        api(`/v1/ops/throughput?minutes=${MINUTES}`),
        api(`/v1/ops/failures?limit=${FAILURES_LIMIT}`),
        api("/v1/ops/fleet"),
        api(`/v1/ops/payments?state=REVIEW&limit=${REVIEW_LIMIT}`),
        api("/v1/ops/tokens?limit=50"),
      ]);
      if (gen !== generation) return;
      renderStatus(status);
      renderFleet(fleet);
      renderReview(review);
      renderThroughput(throughput);
      renderFailures(failures);
      renderTokens(tokens);
      await refreshBrowse(gen);
      await refreshItem(gen);
      await refreshParticipant(gen);
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

  function showIdentity() {
    const who = $("identity");
    if (!me) {
      who.hidden = true;
      who.textContent = "";
      return;
    }
    who.textContent = `${me.label || "(no label)"} · ${me.scope}` +
      (me.may_act ? " (may act)" : " (read only)");
    who.title = `Signed in with token ${me.token_id}`;
    who.className = `identity scope-${me.scope}`;
    who.hidden = false;
  }

  async function signIn(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
    generation += 1;
    const gen = generation;
    hideError();
    me = null;
    $("login").hidden = true;
    $("board").hidden = false;
    $("forget-token").hidden = false;
    $("freshness").textContent = "Connecting …";
    clearTimeout(timer);
    closeAction();
    try {
      const found = await api("/v1/ops/whoami");
      if (gen !== generation) return;
      me = found;
    } catch (err) {
      if (gen !== generation) return;
      if (err.status === 401 || err.status === 403) {
        signOut(`The operator token was refused (${describe(err)}). Enter a valid operator ` +
          "token.");
        return;
      }
      // Unknown for now: read only until a refresh can tell.
      me = null;
    }
    showIdentity();
    refresh();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    generation += 1;
    clearTimeout(timer);
    timer = null;
    shownItem = null;
    shownItemJson = null;
    me = null;
    showIdentity();
    closeAction();
    clearNumbers();
    shownParticipant = null;
    $("participant-panel").hidden = true;
    closeDeliveries();
    $("participant-result").replaceChildren();
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
    "endpoints_enabled", "endpoints_disabled", "endpoints_failing", "endpoints_held",
    "deliveries_pending", "events_waiting", "deliveries_failed",
  ];

  let shownEndpoint = null; // the endpoint whose deliveries are open: {id, url, participant}

  function renderWebhooks(health) {
    for (const field of HOOK_FIELDS) {
      const dd = $(`hooks-${field}`);
      const value = health[field];
      dd.textContent = number.format(value);
      const card = dd.parentElement;
      card.classList.toggle("alert", card.classList.contains("warn-if-nonzero") && value > 0);
    }
    $("hooks-oldest").textContent = age(health.oldest_due_age_seconds);
  }

  function shortId(id) {
    return id ? `${String(id).slice(0, 8)}…` : "—";
  }

  function endpointStatus(e) {
    if (e.status === "ENABLED" && e.failing_since) {
      return el("td", `FAILING since ${when(e.failing_since)}`, "tag bad");
    }
    if (e.status === "ENABLED" && e.held_since) {
      return el("td", `HELD since ${when(e.held_since)}`, "tag warn");
    }
    return el("td", e.status, e.status === "ENABLED" ? "tag ok" : "tag warn");
  }

  function pendingText(e) {
    const pending = number.format(e.pending_deliveries ?? 0);
    const waiting = e.events_waiting ?? 0;
    return waiting > 0 ? `${pending} (+${number.format(waiting)} events waiting)` : pending;
  }

  function renderEndpoints(data) {
    if (!changed("hooks-endpoints", data)) return;
    const body = $("hooks-failing-body");
    const endpoints = Array.isArray(data.data) ? data.data : [];
    if (endpoints.length === 0) {
      body.replaceChildren(emptyRow("No webhook endpoint is registered.", 7));
      return;
    }
    body.replaceChildren(...endpoints.map((e) => {
      const row = el("tr", null, e.failing ? "failing" : "");
      const open = el("button", "Deliveries", "quiet small");
      open.type = "button";
      open.setAttribute("aria-label", `Deliveries of endpoint ${e.url}`);
      open.addEventListener("click", () => openDeliveries(
        { id: e.id, url: e.url, participant: e.participant_id }));
      const cell = el("td");
      cell.append(open);
      row.append(endpointStatus(e), el("td", e.participant_id, "mono"), el("td", e.url, "mono"),
        el("td", number.format(e.consecutive_failures)),
        el("td", e.last_error_class || "—", "mono"),
        el("td", pendingText(e)), cell);
      return row;
    }));
  }

  function lastAnswer(d) {
    if (d.last_http_status) return `HTTP ${d.last_http_status}`;
    if (d.last_error_class) return d.last_error_class;
    return d.attempt_count ? "—" : "not sent yet";
  }

  function renderDeliveries(data) {
    if (!changed("hooks-deliveries", [data, mayAct()])) return;
    const body = $("hooks-deliveries-body");
    const rows = Array.isArray(data.data) ? data.data : [];
    $("hooks-deliveries-summary").textContent =
      `${rows.length} newest deliver${rows.length === 1 ? "y" : "ies"} to ${shownEndpoint.url} ` +
      `(participant ${shownEndpoint.participant}). A replay sends the event again with the ` +
      "same webhook-id, as a new delivery.";
    if (rows.length === 0) {
      body.replaceChildren(emptyRow("No deliveries yet.", 8));
      return;
    }
    body.replaceChildren(...rows.map((d) => {
      const row = el("tr", null, d.status === "FAILED" ? "failed-row" : "");
      const id = el("td", shortId(d.delivery_id), "mono");
      id.title = d.delivery_id;
      const of = el("td", d.replay_of ? `replay of ${shortId(d.replay_of)}` : "—", "mono");
      if (d.replay_of) of.title = d.replay_of;
      const act = el("td");
      if (mayAct()) {
        act.append(actionButton("Replay…", () => openReplay(d),
          `Replay delivery ${d.delivery_id}`));
      } else {
        act.textContent = "—";
      }
      row.append(el("td", when(d.created_at)), id, el("td", `#${d.event_seq}`, "mono"),
        stateCell(d.status), el("td", number.format(d.attempt_count)),
        el("td", lastAnswer(d), "mono"), of, act);
      return row;
    }));
  }

  async function openDeliveries(endpoint) {
    shownEndpoint = endpoint;
    delete rendered["hooks-deliveries"];
    $("hooks-deliveries-title").textContent = "Deliveries, newest first";
    $("hooks-deliveries-body").replaceChildren(emptyRow("Loading …", 8));
    $("hooks-deliveries").hidden = false;
    await refreshDeliveries();
    $("hooks-deliveries").scrollIntoView({ block: "nearest" });
  }

  function closeDeliveries() {
    shownEndpoint = null;
    delete rendered["hooks-deliveries"];
    $("hooks-deliveries").hidden = true;
    $("hooks-deliveries-body").replaceChildren();
  }

  async function refreshDeliveries() {
    if (!shownEndpoint) return;
    const endpoint = shownEndpoint;
    try {
      const data = await api(
        `/v1/ops/webhook_endpoints/${encodeURIComponent(endpoint.id)}/deliveries?limit=20`);
      if (endpoint === shownEndpoint) renderDeliveries(data);
    } catch (err) {
      if (endpoint !== shownEndpoint) return;
      delete rendered["hooks-deliveries"];
      $("hooks-deliveries-summary").textContent = err.status === 404
        ? "This endpoint is gone." : `Deliveries failed to load: ${describe(err)}`;
      $("hooks-deliveries-body").replaceChildren(emptyRow("No current data.", 8));
    }
  }

  function openReplay(d) {
    openAction("Replay a webhook delivery", (form) => {
      const reason = reasonInput();
      form.append(el("p", `Delivery ${d.delivery_id} (event #${d.event_seq}, ${d.status}) to ` +
        `${shownEndpoint ? shownEndpoint.url : "its endpoint"}: the event is sent again, with ` +
        "the same webhook-id, as a new delivery.", "notice"),
        field("Reason", reason, "replay-reason"));
      return () => {
        if (!reason.value.trim()) throw new Error("Give a reason.");
        return {
          summary: `send event #${d.event_seq} of delivery ${d.delivery_id} again`,
          path: `/v1/ops/webhook_deliveries/${encodeURIComponent(d.delivery_id)}/replay`,
          body: { reason: reason.value.trim() },
          reopen: () => openReplay(d),
          after: async () => {
            delete rendered["hooks-deliveries"];
            await refreshDeliveries();
          },
        };
      };
    });
  }

  function clearWebhooks() {
    for (const field of HOOK_FIELDS) {
      const dd = $(`hooks-${field}`);
      dd.textContent = "—";
      dd.parentElement.classList.remove("alert");
    }
    $("hooks-oldest").textContent = "—";
    delete rendered["hooks-endpoints"];
    $("hooks-failing-body").replaceChildren(emptyRow("No current data.", 7));
  }

  async function refreshWebhooks() {
    const card = $("webhooks");
    if (token() && !$("board").hidden) {
      try {
        const [health, endpoints] = await Promise.all([
          api("/v1/ops/webhook_health"), api("/v1/ops/webhook_endpoints?limit=20"),
        ]);
        renderWebhooks(health);
        renderEndpoints(endpoints);
        card.hidden = false;
        await refreshDeliveries();
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
    $("hooks-deliveries-close").addEventListener("click", closeDeliveries);
    $("browse-form").addEventListener("submit", (event) => {
      event.preventDefault();
      applyBrowse();
    });
    $("browse-clear").addEventListener("click", () => {
      $("browse-state").value = "";
      $("browse-participant").value = "";
      $("browse-rail").value = "";
      applyBrowse();
    });
    $("browse-first").addEventListener("click", () => {
      browse.after = null;
      browseJson = null;
      refreshBrowse(generation).catch(() => {});
    });
    $("browse-next").addEventListener("click", () => {
      if (!browse.next) return;
      browse.after = browse.next;
      browseJson = null;
      refreshBrowse(generation).catch(() => {});
    });
    const saved = token();
    if (saved) signIn(saved); else signOut(null);
  });
})();
