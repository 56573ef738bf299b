// The loomd web console: a static page over the public HTTP API (see docs/console.md).

const API_ROOT = new URL("../", location.href).pathname; // the console lives at <root>/console/
const KEY_STORAGE = "loomd.console.key";
const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled", "run.interrupted"]);
const FINISHED = new Set(["completed", "failed", "cancelled", "interrupted"]);
// EventSource dispatches named events only to listeners of that name.
const EVENT_TYPES = [
  "run.created", "run.started", "turn.started", "message.delta", "reasoning.delta",
  "message.completed", "tool.started", "tool.completed", "tool.denied", "hook.decision",
  "run.requires_action", "approval.decided", "run.input", "llm.retry", "usage", "compaction.completed",
  "subrun.started", "subrun.completed", "turn.completed", "run.paused", "run.resumed",
  ...TERMINAL, "stream.gap",
];
const RECONNECT_MS = 2000;

const main = document.getElementById("main");
const notice = document.getElementById("notice");
let me = null;          // GET /v1/whoami of the signed-in principal
let leaveView = null;   // closes the current view's streams
let runStates = null;   // the live `run.state` stream

// ---- HTTP -----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function key() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function url(path, params = {}) {
  const target = new URL(API_ROOT + path, location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(name, value);
  }
  return target;
}

async function api(path, { method = "GET", body, params, token = key() } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url(path, params), {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = response.status === 204 ? "" : await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text.slice(0, 200) };
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && token === key() && me) signOut("Your key was refused; sign in again.");
    throw error;
  }
  return data;
}

// EventSource cannot send headers: SSE endpoints take the key as `?access_token=`.
function streamUrl(path, params = {}) {
  const token = key();
  return url(path, token ? { ...params, access_token: token } : params);
}

// ---- DOM helpers ----------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

function say(message) {
  notice.textContent = message;
}

function when(ts) {
  if (!ts) return "";
  const date = new Date(ts);
  return Number.isNaN(date.getTime()) ? ts : date.toLocaleString();
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function statusBadge(status) {
  return h("span", { class: `status status-${status}`, text: status });
}

function runLink(id) {
  return h("a", { href: `#/runs/${encodeURIComponent(id)}`, class: "id", text: id });
}

function sessionLink(id) {
  return h("a", { href: `#/sessions/${encodeURIComponent(id)}`, class: "id", text: id });
}

function errorBox(error) {
  const code = error.problem?.code ? ` (${error.problem.code})` : "";
  return h("p", { class: "error", role: "alert", text: `${error.message}${code}` });
}

function view(title, ...content) {
  const heading = h("h1", { tabindex: "-1", text: title });
  main.replaceChildren(heading, ...content);
  document.title = `${title} · loomd console`;
  return heading;
}

function definitions(pairs) {
  return h("dl", { class: "facts" }, pairs.flatMap(([term, value]) => [
    h("dt", { text: term }), h("dd", {}, value ?? "—"),
  ]));
}

// ---- Signing in -----------------------------------------------------------

async function start() {
  document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
  document.getElementById("skip").addEventListener("click", (event) => {
    event.preventDefault();
    (main.querySelector("h1") || main).focus();
  });
  window.addEventListener("hashchange", route);
  const stored = key();
  try {
    // Without a stored key, open mode (loopback, no admin token) answers without one.
    await signIn(stored, { quiet: true });
  } catch {
    if (stored) sessionStorage.removeItem(KEY_STORAGE);
    showSignIn(stored ? "Your stored key was refused; sign in again." : "");
  }
}

async function signIn(token, { quiet = false } = {}) {
  const who = await api("v1/whoami", { token });
  if (token) sessionStorage.setItem(KEY_STORAGE, token);
  me = who;
  document.getElementById("who-text").textContent =
    `${who.subject} (${who.role}${who.open_mode && !token ? ", open mode" : ""})`;
  document.getElementById("who").hidden = false;
  document.getElementById("nav").hidden = false;
  followRunStates();
  route();
  if (!quiet) say(`Signed in as ${who.subject}.`);
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  me = null;
  runStates?.close();
  runStates = null;
  leaveView?.();
  leaveView = null;
  document.getElementById("who").hidden = true;
  document.getElementById("nav").hidden = true;
  showSignIn(message);
}

function showSignIn(message) {
  const input = h("input", {
    id: "key", name: "key", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "key-help",
  });
  const problem = h("div", { "aria-live": "assertive" });
  const form = h("form", { class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    try {
      await signIn(input.value.trim());
    } catch (error) {
      problem.replaceChildren(errorBox(error));
      input.focus();
    }
  } },
  h("label", { for: "key", text: "API key" }), input,
  h("p", { id: "key-help", class: "help", text:
    "An admin token or an lmd_… key. It is kept in this tab's session storage only." }),
  h("button", { type: "submit", text: "Sign in" }), problem);
  view("Sign in", message ? h("p", { role: "alert", text: message }) : null, form);
  input.focus();
}

// ---- Routing --------------------------------------------------------------

const ROUTES = [
  [/^\/runs\/([^/]+)$/, (id) => showRun(decodeURIComponent(id))],
  [/^\/runs$/, () => showRuns()],
  [/^\/new$/, (_, params) => showNewRun(params)],
  [/^\/agents$/, () => showAgents()],
  [/^\/sessions\/([^/]+)$/, (id) => showSession(decodeURIComponent(id))],
  [/^\/sessions$/, () => showSessions()],
];

function route() {
  if (!me) return;
  const hash = location.hash.startsWith("#/") ? location.hash.slice(1) : "/runs";
  const [path, query = ""] = hash.split("?");
  const params = new URLSearchParams(query);
  leaveView?.();
  leaveView = null;
  say("");
  const section = path.split("/")[1];
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  for (const [pattern, show] of ROUTES) {
    const match = pattern.exec(path);
    if (match) {
      show(match[1], params);
      return;
    }
  }
  view("Not found", h("p", {}, "No such page. ", h("a", { href: "#/runs", text: "See the runs." })));
}

function focusHeading() {
  main.querySelector("h1")?.focus({ preventScroll: false });
}

// ---- Runs, live -----------------------------------------------------------

const runRows = new Map(); // run id → the row of the runs table, while it is shown

function followRunStates() {
  runStates?.close();
  const source = new EventSource(streamUrl("v1/runs/stream"));
  runStates = source;
  source.addEventListener("run.state", (event) => onRunState(JSON.parse(event.data)));
  source.addEventListener("open", () => setLive("live"));
  source.addEventListener("error", () => {
    setLive("reconnecting");
    if (source.readyState === EventSource.CLOSED && runStates === source) {
      setTimeout(() => { if (runStates === source && me) followRunStates(); }, RECONNECT_MS);
    }
  });
}

function setLive(state) {
  const indicator = document.getElementById("runs-live");
  if (indicator) indicator.textContent = state === "live" ? "Live" : "Reconnecting…";
}

function runRow(run) {
  const status = h("td", { "data-field": "status" }, statusBadge(run.status));
  const row = h("tr", { "data-run-id": run.id },
    h("th", { scope: "row" }, runLink(run.id)),
    h("td", { text: run.agent }),
    status,
    h("td", {}, sessionLink(run.session_id)),
    h("td", { text: when(run.created_at) }));
  return row;
}

function onRunState(state) {
  const table = document.getElementById("runs-body");
  if (!table) return;
  const row = runRows.get(state.run_id);
  if (row) {
    row.querySelector('[data-field="status"]').replaceChildren(statusBadge(state.status));
    return;
  }
  const fresh = runRow({ id: state.run_id, agent: state.agent, status: state.status,
    session_id: state.session_id, created_at: state.ts });
  runRows.set(state.run_id, fresh);
  table.prepend(fresh);
  document.getElementById("runs-empty")?.remove();
}

// Shows a list a page at a time: the first page now, the next one on each click of `more`.
// `more` is disabled while a page loads, so a double click does not show a page twice.
async function paged(more, fetchPage, show, showError) {
  let cursor = null;
  const load = async () => {
    more.disabled = true;
    try {
      const page = await fetchPage(cursor);
      show(page.items);
      cursor = page.next_cursor;
      more.hidden = !cursor;
    } catch (error) {
      showError(error);
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener("click", load);
  await load();
}

async function showRuns() {
  runRows.clear();
  const body = h("tbody", { id: "runs-body" });
  const more = h("button", { type: "button", hidden: true, text: "Load more" });
  const live = h("span", { id: "runs-live", class: "live", "aria-live": "polite",
    text: runStates?.readyState === EventSource.OPEN ? "Live" : "Connecting…" });
  view("Runs", h("p", { class: "toolbar" }, live, h("a", { href: "#/new", class: "button",
    text: "Start a run" })),
  h("table", {}, h("caption", { class: "visually-hidden", text: "Runs, newest first" }),
    h("thead", {}, h("tr", {}, ["Run", "Agent", "Status", "Session", "Created"].map(
      (title) => h("th", { scope: "col", text: title })))), body), more);
  focusHeading();
  await paged(more, (cursor) => api("v1/runs", { params: { limit: 50, cursor } }), (runs) => {
    for (const run of runs) {
      if (runRows.has(run.id)) continue;
      const row = runRow(run);
      runRows.set(run.id, row);
      body.append(row);
    }
    if (!runRows.size) body.append(h("tr", { id: "runs-empty" }, h("td", { colspan: 5,
      text: "No runs yet." })));
  }, (error) => main.append(errorBox(error)));
}

// ---- One run, followed with resume ----------------------------------------

class RunFollower {
  // Follows GET /v1/runs/{id}/events. The browser resends Last-Event-ID when it reconnects;
  // when it gives up (readyState CLOSED), a new EventSource resumes with `?after=`. Events
  // are deduplicated by seq either way.
  constructor(runId, onEvent, onConnection) {
    this.runId = runId;
    this.onEvent = onEvent;
    this.onConnection = onConnection;
    this.seen = new Set();
    this.lastSeq = 0;
    this.ended = false;
    this.source = null;
    this.timer = null;
    this.queue = Promise.resolve();
    this.connect();
  }

  connect() {
    const params = this.lastSeq ? { after: this.lastSeq } : {};
    const source = new EventSource(
      streamUrl(`v1/runs/${encodeURIComponent(this.runId)}/events`, params));
    this.source = source;
    const handle = (event) => this.receive(event);
    for (const type of EVENT_TYPES) source.addEventListener(type, handle);
    source.addEventListener("open", () => this.onConnection("live"));
    source.addEventListener("error", () => {
      if (this.ended || this.source !== source) return;
      this.onConnection("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        this.timer = setTimeout(() => { if (!this.ended) this.connect(); }, RECONNECT_MS);
      }
    });
  }

  receive(message) {
    const event = JSON.parse(message.data);
    this.queue = this.queue.then(() => this.take(event)).catch(() => {});
  }

  async take(event) {
    if (this.ended || this.seen.has(event.seq)) return;
    if (event.seq > this.lastSeq + 1) await this.backfill(event.seq);
    this.deliver(event);
  }

  // Events of a type this page has no listener for never reach it over SSE; a jump in seq
  // fetches them as JSON, so the event log misses none.
  async backfill(before) {
    const page = await api(`v1/runs/${encodeURIComponent(this.runId)}/events`,
      { params: { after: this.lastSeq, limit: Math.min(200, before - this.lastSeq - 1) } });
    for (const event of page.items) {
      if (event.seq < before && !this.seen.has(event.seq)) this.deliver(event);
    }
  }

  deliver(event) {
    this.seen.add(event.seq);
    this.lastSeq = Math.max(this.lastSeq, event.seq);
    this.onEvent(event);
    if (TERMINAL.has(event.type)) {
      this.close();
      this.onConnection("ended");
    }
  }

  close() {
    this.ended = true;
    clearTimeout(this.timer);
    this.source?.close();
  }
}

function summary(event) {
  const data = event.data || {};
  switch (event.type) {
    case "message.delta":
    case "reasoning.delta": return JSON.stringify(data.text);
    case "tool.started": return `${data.name} ${JSON.stringify(data.arguments)}`;
    case "tool.completed": return `${data.name} → ${JSON.stringify(data.output)}${data.is_error ? " (error)" : ""}`;
    case "tool.denied": return `${data.name} denied by ${data.by}: ${data.reason ?? ""}`;
    case "run.requires_action": return data.required_action?.type;
    case "approval.decided": return `${data.name} ${data.approve ? "approved" : "denied"} by ${data.decided_by}${data.reason ? `: ${data.reason}` : ""}`;
    case "usage": return `${data.total_tokens} tokens`;
    case "run.failed": return `${data.error?.code}: ${data.error?.detail}`;
    case "run.cancelled":
    case "run.interrupted": return data.reason;
    case "run.completed": return data.stop_reason;
    case "subrun.started":
    case "subrun.completed": return `${data.agent} ${data.run_id}${data.status ? ` ${data.status}` : ""}`;
    case "turn.started":
    case "turn.completed": return `turn ${data.turn}`;
    case "llm.retry": return `attempt ${data.attempt}/${data.max_attempts}: ${data.error}`;
    default: return "";
  }
}

function statusAfter(type, current) {
  return {
    "run.started": "running", "run.resumed": "running", "run.requires_action": "requires_action",
    "run.paused": "paused", "run.completed": "completed", "run.failed": "failed",
    "run.cancelled": "cancelled", "run.interrupted": "interrupted",
  }[type] ?? current;
}

class Transcript {
  // Renders a run's events as turns: streamed text, tool calls and results, subruns, usage.
  constructor(element) {
    this.element = element;
    this.turns = new Map();
    this.tools = new Map();
    this.subruns = new Map();
    this.current = null;
  }

  turn(number) {
    if (!this.turns.has(number)) {
      const text = h("div", { class: "assistant", "data-role": "assistant-text" });
      const reasoning = h("div", { class: "reasoning", hidden: true });
      const steps = h("div", { class: "steps" });
      const usage = h("p", { class: "usage" });
      const section = h("section", { class: "turn", "data-turn": number },
        h("h3", { text: number === 0 ? "Resumed tool calls" : `Turn ${number}` }),
        reasoning, text, steps, usage);
      this.element.append(section);
      this.turns.set(number, { section, text, reasoning, steps, usage });
    }
    this.current = this.turns.get(number);
    return this.current;
  }

  apply(event) {
    const data = event.data || {};
    const turn = data.turn !== undefined ? this.turn(data.turn) : this.current;
    switch (event.type) {
      case "message.delta":
        turn.text.append(data.text);
        break;
      case "reasoning.delta":
        turn.reasoning.hidden = false;
        turn.reasoning.append(data.text);
        break;
      case "llm.retry":  // the failed attempt's deltas are void
        if (turn) {
          turn.text.replaceChildren();
          turn.reasoning.replaceChildren();
          turn.steps.append(h("p", { class: "note", text: `Retrying: ${summary(event)}` }));
        }
        break;
      case "message.completed":
        if (typeof data.message?.content === "string") turn.text.textContent = data.message.content;
        break;
      case "tool.started": {
        const result = h("div", { class: "result", text: "running…" });
        const card = h("div", { class: "tool", "data-tool-call-id": data.tool_call_id },
          h("p", {}, h("strong", { text: data.name }), " ", h("code", { text: data.tool_call_id })),
          h("pre", { class: "arguments", text: json(data.arguments) }), result);
        this.tools.set(data.tool_call_id, result);
        turn.steps.append(card);
        break;
      }
      case "tool.completed": {
        const result = this.tools.get(data.tool_call_id);
        if (!result) break;
        result.classList.toggle("is-error", Boolean(data.is_error));
        result.replaceChildren(h("pre", { text: String(data.output) }),
          h("span", { class: "meta", text: `${data.is_error ? "error · " : ""}${data.duration_ms} ms` }));
        break;
      }
      case "tool.denied":
        (turn?.steps ?? this.element).append(h("div", { class: "tool is-error" },
          h("p", {}, h("strong", { text: data.name }), ` denied by ${data.by}`),
          data.reason ? h("p", { text: data.reason }) : null));
        break;
      case "approval.decided":
        (turn?.steps ?? this.element).append(h("p", { class: "note", text: summary(event) }));
        break;
      case "subrun.started": {
        const state = h("span", { class: "meta", text: "running" });
        this.subruns.set(data.run_id, state);
        (turn?.steps ?? this.element).append(h("p", { class: "subrun" },
          "Subrun of ", h("strong", { text: data.agent }), ": ", runLink(data.run_id), " ", state));
        break;
      }
      case "subrun.completed":
        this.subruns.get(data.run_id)?.replaceChildren(statusBadge(data.status));
        break;
      case "usage":
        if (turn) turn.usage.textContent = `Tokens: ${data.prompt_tokens} prompt, ${data.completion_tokens} completion, ${data.total_tokens} total`;
        break;
      case "run.input":
        this.element.append(h("div", { class: "input" }, h("strong", { text: "Input: " }),
          (data.messages || []).map((m) => typeof m.content === "string" ? m.content : json(m.content)).join("\n")));
        break;
      case "stream.gap":
        this.element.append(h("p", { class: "note", text: `Events ${data.missing_after + 1}–${data.resumes_at - 1} are past retention.` }));
        break;
      default:
        break;
    }
  }
}

function actionForm(run, action, onAnswered) {
  const approving = action.type === "approve_tool_calls";
  const problem = h("div", { "aria-live": "assertive" });
  const fields = action.tool_calls.map((call, index) => {
    const prefix = `action-${index}`;
    const legend = h("legend", {}, h("strong", { text: call.name }), " ", h("code", { text: call.id }));
    const args = h("pre", { class: "arguments", text: json(call.arguments) });
    if (approving) {
      return h("fieldset", { "data-tool-call-id": call.id }, legend, args,
        h("div", { class: "choices" },
          h("label", {}, h("input", { type: "radio", name: `${prefix}-decision`, value: "approve",
            checked: true }), " Approve"),
          h("label", {}, h("input", { type: "radio", name: `${prefix}-decision`, value: "deny" }),
            " Deny")),
        h("label", { for: `${prefix}-reason`, text: "Reason (optional)" }),
        h("input", { id: `${prefix}-reason`, name: `${prefix}-reason`, type: "text" }));
    }
    return h("fieldset", { "data-tool-call-id": call.id }, legend, args,
      h("label", { for: `${prefix}-output`, text: "Output" }),
      h("textarea", { id: `${prefix}-output`, name: `${prefix}-output`, rows: 3, required: true }),
      h("label", {}, h("input", { type: "checkbox", name: `${prefix}-error` }), " Report as an error"));
  });
  const submit = h("button", { type: "submit", text: approving ? "Send decisions" : "Send outputs" });
  const form = h("form", { class: "action", onsubmit: async (event) => {
    event.preventDefault();
    const values = new FormData(form);
    const answers = action.tool_calls.map((call, index) => {
      const prefix = `action-${index}`;
      if (approving) {
        const reason = values.get(`${prefix}-reason`);
        return { tool_call_id: call.id, approve: values.get(`${prefix}-decision`) === "approve",
          ...(reason ? { reason } : {}) };
      }
      return { tool_call_id: call.id, output: values.get(`${prefix}-output`),
        is_error: values.get(`${prefix}-error`) === "on" };
    });
    submit.disabled = true;
    problem.replaceChildren();
    try {
      const path = `v1/runs/${encodeURIComponent(run.id)}/${approving ? "approvals" : "tool-outputs"}`;
      await api(path, { method: "POST",
        body: approving ? { decisions: answers } : { outputs: answers } });
      onAnswered();
    } catch (error) {
      submit.disabled = false;
      problem.replaceChildren(errorBox(error));
    }
  } },
  h("h2", { id: "action-title", text: approving ? "Approve tool calls" : "Answer client tools" }),
  h("p", { class: "help", text: `Answer before ${when(action.expires_at)}.` }),
  ...fields, submit, problem);
  form.setAttribute("aria-labelledby", "action-title");
  return form;
}

async function showRun(runId) {
  let run;
  try {
    run = await api(`v1/runs/${encodeURIComponent(runId)}`);
  } catch (error) {
    view(`Run ${runId}`, errorBox(error));
    focusHeading();
    return;
  }
  const status = h("span", { "data-field": "run-status" }, statusBadge(run.status));
  const totals = h("span", { "data-field": "usage" });
  const showTotals = (usage) => {
    totals.textContent = `${usage.total_tokens} tokens (${usage.prompt_tokens} prompt, ${usage.completion_tokens} completion)`;
  };
  showTotals(run.usage);
  const cancel = h("button", { type: "button", class: "danger", text: "Cancel run",
    disabled: FINISHED.has(run.status) });
  const cancelProblem = h("div", { "aria-live": "assertive" });
  const connection = h("p", { class: "live", "data-field": "connection", "aria-live": "polite",
    text: "Connecting…" });
  const action = h("div", { id: "required-action" });
  const outcome = h("div", { class: "outcome", "data-field": "outcome", "aria-live": "polite" });
  const transcriptElement = h("div", { class: "transcript", id: "transcript" });
  const eventList = h("ol", { class: "events", id: "event-list" });
  view(`Run ${run.id}`,
    definitions([
      ["Agent", `${run.agent} (version ${run.agent_version})`],
      ["Status", status],
      ["Session", sessionLink(run.session_id)],
      ["Parent run", run.parent_run_id ? runLink(run.parent_run_id) : null],
      ["Usage", totals],
      ["Created", when(run.created_at)],
    ]),
    h("p", { class: "toolbar" }, cancel, connection), cancelProblem, action, outcome,
    h("section", { "aria-labelledby": "transcript-title" },
      h("h2", { id: "transcript-title", text: "Transcript" }), transcriptElement),
    h("details", { class: "event-log" }, h("summary", {}, "Events (",
      h("span", { id: "event-count", text: "0" }), ")"), eventList));
  focusHeading();

  let current = run.status;
  let actionSeq = null;
  const transcript = new Transcript(transcriptElement);
  const clearAction = () => { action.replaceChildren(); actionSeq = null; };
  const usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    cancelProblem.replaceChildren();
    try {
      const answer = await api(`v1/runs/${encodeURIComponent(run.id)}/cancel`,
        { method: "POST", body: {} });
      say(answer.cancelled ? `Cancelling ${run.id}.` : `${run.id} had already ended.`);
    } catch (error) {
      cancel.disabled = false;
      cancelProblem.replaceChildren(errorBox(error));
    }
  });

  const onEvent = (event) => {
    const item = h("li", { "data-seq": event.seq, "data-type": event.type },
      h("span", { class: "seq", text: `#${event.seq}` }), " ", h("code", { text: event.type }),
      " ", h("span", { text: summary(event) }));
    const later = [...eventList.children].find((li) => Number(li.dataset.seq) > event.seq);
    eventList.insertBefore(item, later ?? null);
    document.getElementById("event-count").textContent = String(eventList.children.length);
    transcript.apply(event);

    const next = statusAfter(event.type, current);
    if (next !== current) {
      current = next;
      status.replaceChildren(statusBadge(current));
      cancel.disabled = FINISHED.has(current);
    }
    const data = event.data || {};
    if (event.type === "usage") {
      for (const name of Object.keys(usage)) usage[name] += data[name] ?? 0;
      showTotals(usage);
    } else if (event.type === "run.requires_action") {
      actionSeq = event.seq;
      action.replaceChildren(actionForm(run, data.required_action, () => {
        if (actionSeq === event.seq) {
          action.replaceChildren(h("p", { class: "note", text: "Answer sent." }));
        }
      }));
      say("The run waits for an answer.");
    } else if (event.type === "run.resumed" || TERMINAL.has(event.type)) {
      clearAction();
    }
    if (event.type === "run.completed") {
      if (data.usage) showTotals(data.usage);
      outcome.replaceChildren(h("h2", { text: "Output" }),
        h("p", { class: "output", text: data.output ?? "(no output)" }),
        h("p", { class: "meta", text: `stop reason: ${data.stop_reason}, ${data.turns} turns` }));
    } else if (event.type === "run.failed") {
      outcome.replaceChildren(h("p", { class: "error", text: `Failed: ${summary(event)}` }));
    } else if (event.type === "run.cancelled" || event.type === "run.interrupted") {
      outcome.replaceChildren(h("p", { class: "note",
        text: `${event.type === "run.cancelled" ? "Cancelled" : "Interrupted"}: ${data.reason ?? ""}` }));
    }
  };
  const onConnection = (state) => {
    connection.dataset.state = state;
    connection.textContent = { live: "Following live", reconnecting: "Reconnecting…",
      ended: "Run ended" }[state];
  };
  const follower = new RunFollower(run.id, onEvent, onConnection);
  leaveView = () => follower.close();
}

// ---- Starting a run -------------------------------------------------------

async function showNewRun(params) {
  const select = h("select", { id: "agent", name: "agent", required: true });
  const input = h("textarea", { id: "input", name: "input", rows: 5, required: true });
  const problem = h("div", { "aria-live": "assertive" });
  // Disabled until the agents have loaded: a click on an empty, required select is dropped silently.
  const submit = h("button", { type: "submit", text: "Start run", disabled: true });
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    problem.replaceChildren();
    try {
      const run = await api("v1/runs", { method: "POST",
        body: { agent: select.value, input: input.value } });
      location.hash = `#/runs/${encodeURIComponent(run.id)}`;
    } catch (error) {
      submit.disabled = false;
      problem.replaceChildren(errorBox(error));
    }
  } },
  h("label", { for: "agent", text: "Agent" }), select,
  h("label", { for: "input", text: "Input" }), input, submit, problem);
  view("Start a run", form);
  focusHeading();
  try {
    const agents = await allAgents();
    const mine = agents.filter((agent) => agent.owner === me.subject);
    for (const agent of mine) {
      select.append(h("option", { value: agent.name, selected: agent.name === params.get("agent"),
        text: `${agent.name} — ${agent.model}` }));
    }
    if (mine.length) submit.disabled = false;
    else {
      form.prepend(h("p", { role: "alert", text:
        "You have no agents yet: create one with POST /v1/agents (see the API docs at /docs)." }));
    }
  } catch (error) {
    form.prepend(errorBox(error));
  }
}

async function allAgents() {
  const agents = [];
  let cursor = null;
  do {
    const page = await api("v1/agents", { params: { limit: 200, cursor } });
    agents.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && agents.length < 1000);
  return agents;
}

// ---- Agents ---------------------------------------------------------------

async function showAgents() {
  const list = h("div", { class: "cards" });
  view("Agents", list);
  focusHeading();
  try {
    const agents = await allAgents();
    if (!agents.length) list.append(h("p", { text: "No agents yet." }));
    for (const agent of agents) {
      const tools = agent.tools.map((tool) => tool.name ?? tool.server_url ?? tool.type).join(", ");
      list.append(h("article", { class: "card", "data-agent": agent.name },
        h("h2", { text: agent.name }),
        agent.description ? h("p", { text: agent.description }) : null,
        definitions([
          ["Model", agent.model], ["Tools", tools || "none"], ["Owner", agent.owner],
          ["Version", String(agent.version)], ["Updated", when(agent.updated_at)],
        ]),
        agent.owner === me.subject ? h("a", { class: "button",
          href: `#/new?agent=${encodeURIComponent(agent.name)}`,
          "aria-label": `Start a run of ${agent.name}`, text: "Start a run" }) : null,
        h("a", { href: `#/sessions?agent=${encodeURIComponent(agent.name)}`,
          "aria-label": `Sessions of ${agent.name}`, text: "Sessions" }),
        h("details", {}, h("summary", { text: "Configuration" }),
          h("pre", { text: json(agent) }))));
    }
  } catch (error) {
    list.append(errorBox(error));
  }
}

// ---- Sessions -------------------------------------------------------------

async function showSessions() {
  const body = h("tbody");
  const more = h("button", { type: "button", hidden: true, text: "Load more" });
  view("Sessions",
    h("table", {}, h("caption", { class: "visually-hidden", text: "Sessions, newest first" }),
      h("thead", {}, h("tr", {}, ["Session", "Title", "Agent", "Status", "Messages", "Updated"]
        .map((title) => h("th", { scope: "col", text: title })))), body), more);
  focusHeading();
  const agent = new URLSearchParams(location.hash.split("?")[1] ?? "").get("agent");
  await paged(more, (cursor) => api("v1/sessions", { params: { limit: 50, cursor, agent } }),
    (sessions) => {
      for (const session of sessions) {
        body.append(h("tr", {},
          h("th", { scope: "row" }, sessionLink(session.id)),
          h("td", { text: session.title ?? "" }), h("td", { text: session.agent }),
          h("td", {}, statusBadge(session.status)), h("td", { text: String(session.message_count) }),
          h("td", { text: when(session.updated_at) })));
      }
      if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 6, text: "No sessions yet." })));
    }, (error) => main.append(errorBox(error)));
}

function messageItem(message) {
  const content = typeof message.content === "string" ? message.content : json(message.content);
  return h("li", { class: `message role-${message.role}`, "data-seq": message.seq },
    h("p", { class: "meta" }, h("strong", { text: message.role }),
      message.name ? ` ${message.name}` : "", message.tool_call_id ? ` · ${message.tool_call_id}` : "",
      ` · #${message.seq}`, message.state === "compacted" ? " · compacted" : ""),
    content ? h("pre", { class: "content", text: content }) : null,
    (message.tool_calls || []).map((call) => h("pre", { class: "arguments",
      text: `${call.function.name}(${call.function.arguments}) · ${call.id}` })));
}

async function showSession(sessionId) {
  let session;
  try {
    session = await api(`v1/sessions/${encodeURIComponent(sessionId)}`);
  } catch (error) {
    view(`Session ${sessionId}`, errorBox(error));
    focusHeading();
    return;
  }
  const runs = h("ul", { class: "links" });
  const messages = h("ol", { class: "messages" });
  const more = h("button", { type: "button", hidden: true, text: "Load more messages" });
  const input = h("textarea", { id: "session-input", name: "input", rows: 3, required: true });
  const problem = h("div", { "aria-live": "assertive" });
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    try {
      const run = await api(`v1/sessions/${encodeURIComponent(session.id)}/runs`,
        { method: "POST", body: { input: input.value } });
      location.hash = `#/runs/${encodeURIComponent(run.id)}`;
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  } },
  h("label", { for: "session-input", text: "Continue the conversation" }), input,
  h("button", { type: "submit", text: "Start run" }), problem);
  view(session.title ? `Session: ${session.title}` : `Session ${session.id}`,
    definitions([
      ["Id", session.id], ["Agent", session.agent], ["Owner", session.owner],
      ["Status", statusBadge(session.status)],
      ["Active run", session.active_run_id ? runLink(session.active_run_id) : null],
      ["Parent session", session.parent_session_id ? sessionLink(session.parent_session_id) : null],
      ["Usage", `${session.usage.total_tokens} tokens`],
    ]),
    h("section", { "aria-labelledby": "runs-title" }, h("h2", { id: "runs-title", text: "Runs" }), runs),
    h("section", { "aria-labelledby": "messages-title" },
      h("h2", { id: "messages-title", text: `Messages (${session.message_count})` }), messages, more),
    session.agent && session.owner === me.subject ? form : null);
  focusHeading();
  try {
    const page = await api(`v1/sessions/${encodeURIComponent(session.id)}/runs`, { params: { limit: 50 } });
    for (const run of page.items) {
      runs.append(h("li", {}, runLink(run.id), " ", statusBadge(run.status), ` ${when(run.created_at)}`));
    }
    if (!page.items.length) runs.append(h("li", { text: "No runs yet." }));
  } catch (error) {
    runs.append(h("li", {}, errorBox(error)));
  }
  await paged(more, (cursor) => api(`v1/sessions/${encodeURIComponent(session.id)}/messages`,
    { params: { limit: 200, cursor } }), (items) => messages.append(...items.map(messageItem)),
  (error) => messages.append(h("li", {}, errorBox(error))));
}

start();
