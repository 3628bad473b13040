// The careflow view: workflows, a workflow's graph with per-node counts for a run, circuit
// breakers, recent failures with reasons, and the trace of one execution. Plain DOM, no build.
// Data comes from ../api/... (the same app, behind Airflow's session cookie). Ids only: the API
// never returns patient names, numbers or message bodies, and the page never asks for them.
"use strict";

const API = new URL("../api/", document.baseURI);
const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
const STEP_STATES = ["done", "waiting", "pending", "skipped", "failed"];
const MESSAGE_STATES = ["sent", "pending", "claimed", "unknown", "skipped", "expired", "failed"];

function el(tag, attrs, ...children) {
  const svg = ["svg", "g", "rect", "text", "path", "tspan", "title"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pill(status) {
  const cls = "s-" + String(status || "").replace(/[^a-z_]+/gi, "-");
  return el("span", { class: "pill " + cls }, status || "–");
}

function when(iso) {
  if (!iso) return "–";
  return iso.replace("T", " ").replace(/(\.\d+)?(\+00:00|Z)$/, " UTC");
}

function link(hash, text, attrs) {
  return el("a", { href: hash, ...(attrs || {}) }, text);
}

function enc(value) {
  return encodeURIComponent(value);
}

// Where the API answers with less than was asked (the workflows list without careflow's database,
// say), a header says why; shown above the page until the next one.
const LIMITED = {
  "X-Careflow-Database-Problem": "Only the snapshots on disk are listed: ",
  "X-Careflow-Snapshots-Problem": "No published snapshot could be read: ",
};
let notices = [];

async function api(path) {
  const response = await fetch(new URL(path, API), { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401 || response.status === 403) {
    throw new Error("Not signed in to Airflow (HTTP " + response.status + "): sign in, then reload this page.");
  }
  if (response.status === 404) return null;
  if (!response.ok) {
    // careflow's answers say what failed in `detail` (never a URL or a driver's message).
    const detail = await response.json().then((body) => body && body.detail, () => null);
    throw new Error((typeof detail === "string" ? detail : "the careflow API failed") + " (HTTP " + response.status + " from " + path + ")");
  }
  for (const [header, lead] of Object.entries(LIMITED)) {
    const said = response.headers.get(header);
    if (said) notices.push(lead + said);
  }
  return response.json();
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted" }, empty || "Nothing here.");
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows),
  );
}

function setCrumbs(...parts) {
  const shown = parts.filter((p) => p !== null && p !== undefined);
  crumbs.replaceChildren(...shown.flatMap((p, i) => (i ? [" / ", p] : [p])));
}

function render(...sections) {
  const shown = notices.map((notice) => el("p", { class: "error notice" }, notice));
  view.replaceChildren(...shown, ...sections);
}

// ------------------------------------------------------------------ home

async function showHome() {
  setCrumbs(link("#/", "overview"));
  const [workflows, breakers, failures] = await Promise.all([
    api("workflows"),
    api("breakers"),
    api("failures?limit=25"),
  ]);
  render(workflowsSection(workflows || []), breakersSection(breakers || []), failuresSection(failures, "Recent failures"));
}

function workflowsSection(workflows) {
  const rows = workflows.map((w) =>
    el(
      "tr",
      { "data-workflow": w.workflow_id },
      el("td", {}, w.snapshot === "broken" || !w.version ? el("code", {}, w.workflow_id) : link("#/workflow/" + enc(w.workflow_id), w.workflow_id, { class: "mono" })),
      el("td", {}, w.name || ""),
      el("td", { class: "num" }, w.version ?? "–"),
      el("td", {}, pill(w.status)),
      el("td", {}, w.validation || "–"),
      el("td", {}, pill(w.snapshot)),
      el("td", { class: "error" }, w.problem || ""),
    ),
  );
  return el(
    "section",
    { id: "workflows" },
    el("h2", {}, "Workflows"),
    table(["id", "name", "version", "status", "validation", "snapshot", "problem"], rows, "No workflow is published."),
  );
}

function breakersSection(breakers) {
  const rows = breakers.map((b) =>
    el(
      "tr",
      { "data-breaker": b.name },
      el("td", {}, el("code", {}, b.name)),
      el("td", {}, pill(b.state)),
      el("td", { class: "num" }, (100 * (b.failure_rate || 0)).toFixed(1) + " %"),
      el("td", { class: "num" }, b.calls),
      el("td", { class: "num" }, b.opens),
      el("td", {}, b.next_probe_at ? when(new Date(b.next_probe_at * 1000).toISOString()) : "–"),
      el("td", {}, b.backend),
    ),
  );
  return el(
    "section",
    { id: "breakers" },
    el("h2", {}, "Circuit breakers"),
    table(["name", "state", "failure rate", "calls", "opens", "next probe", "backend"], rows, "No breaker has seen a call yet."),
  );
}

function failuresSection(failures, title) {
  failures = failures || { reasons: [], steps: [], messages: [] };
  const reasons = failures.reasons.map((r) =>
    el(
      "tr",
      {},
      el("td", {}, r.kind),
      el("td", {}, link("#/workflow/" + enc(r.workflow_id) + "/node/" + enc(r.node_id), r.workflow_id + " / " + r.node_id)),
      el("td", {}, pill(r.status)),
      el("td", {}, el("code", {}, r.reason || "–")),
      el("td", { class: "num" }, r.count),
    ),
  );
  const recent = [
    ...failures.steps.map((s) => ({ ...s, kind: "step" })),
    ...failures.messages.map((m) => ({ ...m, kind: "message" })),
  ]
    .sort((a, b) => String(b.at).localeCompare(String(a.at)))
    .slice(0, 40)
    .map((f) =>
      el(
        "tr",
        {},
        el("td", {}, when(f.at)),
        el("td", {}, f.kind),
        el("td", {}, f.workflow_id + " / " + f.node_id),
        el("td", {}, pill(f.status)),
        el("td", {}, el("code", {}, f.reason || "–")),
        el("td", {}, link("#/execution/" + enc(f.execution_id), f.execution_id, { class: "mono" })),
        el("td", {}, link("#/patient/" + enc(f.patient_id), f.patient_id, { class: "mono" })),
      ),
    );
  return el(
    "section",
    { id: "failures" },
    el("h2", {}, title),
    el("h3", {}, "By reason"),
    table(["kind", "workflow / node", "status", "reason", "count"], reasons, "No failure, skip or expiry recorded."),
    el("h3", {}, "Latest"),
    table(["when", "kind", "workflow / node", "status", "reason", "execution", "patient"], recent, "Nothing recent."),
  );
}

// ------------------------------------------------------------------ one workflow

async function showWorkflow(workflowId, nodeId, runId) {
  const base = "#/workflow/" + enc(workflowId);
  setCrumbs(link("#/", "overview"), link(base, workflowId), nodeId ? link(base + "/node/" + enc(nodeId), nodeId) : null);
  const [graph, runs] = await Promise.all([api("workflows/" + enc(workflowId) + "/graph"), api("workflows/" + enc(workflowId) + "/runs")]);
  if (!graph) {
    render(el("section", {}, el("p", { class: "error" }, "Workflow " + workflowId + " has no loadable published snapshot.")));
    return;
  }
  const runQuery = runId ? "?run_id=" + enc(runId) : "";
  const nodeQuery = nodeId ? "&node_id=" + enc(nodeId) : "";
  // The hints read every run's figures, which takes longer than the rest: the page does not wait.
  const metrics = api("metrics?workflow=" + enc(workflowId));
  metrics.catch(() => {}); // said in its section, once the page is there; not where the page fails first
  const [counts, failures, nodeSteps] = await Promise.all([
    api("workflows/" + enc(workflowId) + "/counts" + runQuery),
    api("failures?workflow_id=" + enc(workflowId) + nodeQuery + (runId ? "&run_id=" + enc(runId) : "") + "&limit=50"),
    nodeId ? api("workflows/" + enc(workflowId) + "/nodes/" + enc(nodeId) + "/steps" + runQuery) : Promise.resolve(null),
  ]);

  const picker = el("select", { id: "run", "aria-label": "run" }, el("option", { value: "" }, "all runs"));
  for (const run of runs || []) {
    picker.append(el("option", { value: run.run_id, selected: run.run_id === runId }, run.run_id + " (" + run.steps + " steps)"));
  }
  picker.addEventListener("change", () => {
    const target = base + (nodeId ? "/node/" + enc(nodeId) : "");
    location.hash = target + (picker.value ? "?run=" + enc(picker.value) : "");
  });

  const head = el(
    "section",
    { id: "workflow", "data-workflow": graph.workflow_id },
    el("h2", {}, graph.name + " ", el("span", { class: "muted mono" }, graph.workflow_id + " · v" + graph.version + " · " + graph.dag_id)),
    el("div", { class: "row" }, el("label", { for: "run" }, "Counts of "), picker, runId ? null : el("span", { class: "muted" }, "every run so far")),
    graphSvg(graph, counts, nodeId, runId),
  );
  const sections = [head, hintsSection(base, metrics)];
  if (nodeId) sections.push(nodeSection(graph, nodeId, nodeSteps || [], counts));
  sections.push(failuresSection(failures, nodeId ? "Failures at " + nodeId : "Failures in this workflow"));
  render(...sections);
}

// What the workflow's figures over every run suggest changing (`careflow metrics`' hints), filled in
// when the report arrives (data-state: loading, then ready or error).
function hintsSection(base, metrics) {
  const body = el("p", { class: "muted" }, "Reading every run's figures…");
  const section = el("section", { id: "hints", "data-state": "loading" }, el("h2", {}, "Hints"), body);
  metrics.then(
    (report) => {
      const item = report && report.workflows && report.workflows[0];
      const rows = ((item && item.hints) || []).map((h) =>
        el(
          "li",
          { "data-code": h.code, "data-node": h.node_id || "" },
          el("code", {}, h.code),
          " ",
          h.node_id ? link(base + "/node/" + enc(h.node_id), h.node_id, { class: "mono" }) : "the workflow",
          ": " + h.text,
        ),
      );
      body.replaceWith(rows.length ? el("ul", {}, rows) : el("p", { class: "muted" }, "Nothing in this workflow's figures suggests a change."));
      section.dataset.state = "ready";
    },
    (error) => {
      body.replaceWith(el("p", { class: "error" }, error.message));
      section.dataset.state = "error";
    },
  );
  return section;
}

const BOX_W = 196;
const BOX_H = 96;
const COL_W = 250;
const ROW_H = 124;

function countsLine(counts, states) {
  return states.filter((s) => counts && counts[s]).map((s) => s + " " + counts[s]).join(" · ");
}

function graphSvg(graph, counts, selected, runId) {
  const cols = Math.max(...graph.nodes.map((n) => n.column)) + 1;
  const rows = Math.max(...graph.nodes.map((n) => n.row)) + 1;
  const width = cols * COL_W + 20;
  const height = rows * ROW_H + 20;
  const pos = {};
  for (const n of graph.nodes) pos[n.id] = { x: 10 + n.column * COL_W, y: 10 + n.row * ROW_H };
  const svg = el("svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "workflow graph" });
  for (const e of graph.edges) {
    const a = pos[e.source];
    const b = pos[e.target];
    const x1 = a.x + BOX_W;
    const y1 = a.y + BOX_H / 2;
    const x2 = b.x;
    const y2 = b.y + BOX_H / 2;
    const mid = (x1 + x2) / 2;
    svg.append(el("path", { class: "edge", d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 4},${y2}` }));
    svg.append(el("path", { class: "edge", d: `M${x2 - 9},${y2 - 4} L${x2 - 2},${y2} L${x2 - 9},${y2 + 4}` }));
    if (e.handle) svg.append(el("text", { class: "handle", x: mid - 10, y: (y1 + y2) / 2 - 5 }, e.handle));
  }
  for (const n of graph.nodes) {
    const p = pos[n.id];
    const stepCounts = (counts && counts.steps[n.id]) || {};
    const messageCounts = (counts && counts.messages[n.id]) || {};
    const href = "#/workflow/" + enc(graph.workflow_id) + "/node/" + enc(n.id) + (runId ? "?run=" + enc(runId) : "");
    const g = el("g", {
      class: "node" + (n.id === selected ? " selected" : ""),
      "data-node": n.id,
      transform: `translate(${p.x},${p.y})`,
      tabindex: 0,
      onclick: () => (location.hash = href),
    });
    g.append(el("title", {}, n.describe));
    g.append(el("rect", { width: BOX_W, height: BOX_H, rx: 6 }));
    g.append(el("text", { class: "title", x: 10, y: 20 }, n.label.length > 24 ? n.label.slice(0, 23) + "…" : n.label));
    g.append(el("text", { class: "sub", x: 10, y: 37 }, n.id + " · " + n.type));
    const steps = el("text", { class: "counts", x: 10, y: 58, "data-counts": "steps" });
    for (const [i, s] of STEP_STATES.filter((s) => stepCounts[s]).entries()) {
      steps.append(el("tspan", { "data-status": s, dx: i ? 6 : 0 }, s + " " + stepCounts[s]));
    }
    if (!steps.childNodes.length) steps.append(el("tspan", { class: "sub" }, "no step"));
    g.append(steps);
    if (n.type === "action") {
      const sent = el("text", { class: "counts", x: 10, y: 78, "data-counts": "messages" });
      for (const [i, s] of MESSAGE_STATES.filter((s) => messageCounts[s]).entries()) {
        sent.append(el("tspan", { "data-status": s, dx: i ? 6 : 0 }, (s === "sent" ? "✉ " : "") + s + " " + messageCounts[s]));
      }
      if (!sent.childNodes.length) sent.append(el("tspan", { class: "sub" }, "no message"));
      g.append(sent);
    }
    svg.append(g);
  }
  return svg;
}

function nodeSection(graph, nodeId, steps, counts) {
  const node = graph.nodes.find((n) => n.id === nodeId);
  if (!node) return el("section", {}, el("p", { class: "error" }, "Node " + nodeId + " is not in version " + graph.version + " of this workflow."));
  const rows = steps.map((s) =>
    el(
      "tr",
      {},
      el("td", {}, link("#/execution/" + enc(s.execution_id), s.execution_id, { class: "mono" })),
      el("td", {}, link("#/patient/" + enc(s.patient_id), s.patient_id, { class: "mono" })),
      el("td", {}, pill(s.status)),
      el("td", {}, s.branch || ""),
      el("td", {}, el("code", {}, s.reason || "")),
      el("td", {}, when(s.arrived_at)),
      el("td", {}, when(s.due_at)),
      el("td", {}, when(s.finished_at)),
      el("td", { class: "mono" }, s.run_id || ""),
    ),
  );
  const stepCounts = countsLine(counts && counts.steps[nodeId], STEP_STATES);
  const messageCounts = countsLine(counts && counts.messages[nodeId], MESSAGE_STATES);
  return el(
    "section",
    { id: "node", "data-node": nodeId },
    el("h2", {}, node.label + " ", el("span", { class: "muted mono" }, nodeId + " · " + node.type)),
    el("p", {}, node.describe),
    el("p", {}, "Steps: " + (stepCounts || "none"), node.type === "action" ? " — messages: " + (messageCounts || "none") : ""),
    table(["execution", "patient", "status", "branch", "reason", "arrived", "due", "finished", "run"], rows, "No execution has reached this node."),
  );
}

// ------------------------------------------------------------------ one execution, one patient

async function showExecution(executionId) {
  setCrumbs(link("#/", "overview"), "execution " + executionId);
  const trace = await api("executions/" + enc(executionId));
  if (!trace) {
    render(el("section", {}, el("p", { class: "error" }, "No execution with id " + executionId + ".")));
    return;
  }
  const x = trace.execution;
  const base = "#/workflow/" + enc(x.workflow_id);
  const summary = el(
    "section",
    { id: "execution", "data-execution": x.execution_id },
    el("h2", {}, "Execution ", el("code", {}, x.execution_id)),
    table(
      ["workflow", "version", "patient", "appointment", "trigger event", "status", "exit reason", "enrolled", "finished"],
      [
        el(
          "tr",
          {},
          el("td", {}, link(base, x.workflow_id)),
          el("td", { class: "num" }, x.version),
          el("td", {}, link("#/patient/" + enc(x.patient_id), x.patient_id, { class: "mono" })),
          el("td", { class: "mono" }, x.appointment_id),
          el("td", { class: "mono" }, x.trigger_event_id),
          el("td", {}, pill(x.status)),
          el("td", {}, el("code", {}, x.exit_reason || "")),
          el("td", {}, when(x.enrolled_at)),
          el("td", {}, when(x.finished_at)),
        ),
      ],
    ),
  );
  const why = el(
    "section",
    { id: "why" },
    el("h2", {}, "Messages: sent, or why not"),
    table(
      ["action", "verdict", "why"],
      trace.actions.map((a) =>
        el(
          "tr",
          { "data-action": a.node_id },
          el("td", {}, link(base + "/node/" + enc(a.node_id), a.label + " (" + a.node_id + ")")),
          el("td", {}, pill(a.verdict)),
          el("td", {}, a.why),
        ),
      ),
      "The workflow's graph is not loadable, so the verdicts cannot be worked out.",
    ),
  );
  const steps = el(
    "section",
    { id: "steps" },
    el("h2", {}, "Path through the graph"),
    table(
      ["node", "status", "branch", "reason", "arrived", "due", "finished", "attempts", "version", "run"],
      trace.steps.map((s) =>
        el(
          "tr",
          { "data-step": s.node_id },
          el("td", {}, link(base + "/node/" + enc(s.node_id), s.label + " (" + s.node_id + ")")),
          el("td", {}, pill(s.status)),
          el("td", {}, s.branch || ""),
          el("td", {}, el("code", {}, s.reason || "")),
          el("td", {}, when(s.arrived_at)),
          el("td", {}, when(s.due_at)),
          el("td", {}, when(s.finished_at)),
          el("td", { class: "num" }, s.attempts),
          el("td", { class: "num" }, s.version ?? ""),
          el("td", { class: "mono" }, s.run_id || ""),
        ),
      ),
      "No step recorded.",
    ),
  );
  const messages = el(
    "section",
    { id: "messages" },
    el("h2", {}, "Ledger"),
    table(
      ["node", "channel", "purpose", "status", "outcome", "reason", "attempts", "due", "sent"],
      trace.messages.map((m) =>
        el(
          "tr",
          {},
          el("td", {}, m.node_id),
          el("td", {}, m.channel),
          el("td", {}, m.purpose),
          el("td", {}, pill(m.status)),
          el("td", {}, m.outcome || ""),
          el("td", {}, el("code", {}, m.reason || "")),
          el("td", { class: "num" }, m.attempts),
          el("td", {}, when(m.due_at)),
          el("td", {}, when(m.sent_at)),
        ),
      ),
      "No message in the ledger for this execution.",
    ),
  );
  render(summary, why, steps, messages);
}

async function showPatient(patientId) {
  setCrumbs(link("#/", "overview"), "patient " + patientId);
  const executions = (await api("patients/" + enc(patientId) + "/executions")) || [];
  render(patientSection(patientId, executions));
}

function patientSection(patientId, executions) {
  return el(
    "section",
    { id: "patient", "data-patient": patientId },
    el("h2", {}, "Executions of patient ", el("code", {}, patientId)),
    table(
      ["execution", "workflow", "version", "status", "exit reason", "enrolled", "finished"],
      executions.map((x) =>
        el(
          "tr",
          {},
          el("td", {}, link("#/execution/" + enc(x.execution_id), x.execution_id, { class: "mono" })),
          el("td", {}, link("#/workflow/" + enc(x.workflow_id), x.workflow_id)),
          el("td", { class: "num" }, x.version),
          el("td", {}, pill(x.status)),
          el("td", {}, el("code", {}, x.exit_reason || "")),
          el("td", {}, when(x.enrolled_at)),
          el("td", {}, when(x.finished_at)),
        ),
      ),
      "No execution for this patient id.",
    ),
  );
}

// ------------------------------------------------------------------ routing

document.getElementById("lookup").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = document.getElementById("lookup-id").value.trim();
  if (!id) return;
  // An execution id first; otherwise the id is taken as a patient id.
  const found = await api("executions/" + enc(id)).catch(() => null);
  location.hash = (found ? "#/execution/" : "#/patient/") + enc(id);
});

async function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  document.body.dataset.state = "loading";
  notices = [];
  try {
    if (parts[0] === "workflow" && parts[1]) await showWorkflow(parts[1], parts[2] === "node" ? parts[3] : null, params.get("run"));
    else if (parts[0] === "execution" && parts[1]) await showExecution(parts[1]);
    else if (parts[0] === "patient" && parts[1]) await showPatient(parts[1]);
    else await showHome();
  } catch (error) {
    render(el("section", {}, el("p", { class: "error", id: "error" }, error.message)));
  }
  document.body.dataset.state = "ready";
}

window.addEventListener("hashchange", route);
route();
