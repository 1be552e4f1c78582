// The dashboard's runs view: the latest workflow runs, the chosen run's DAG drawn as SVG with
// each step's state as its colour (as the Argo and Temporal UIs do), and its workflow's
// statistics over the last day. Loaded by index.html after its own script, whose signed
// `api()` call, `el()` helper and key (`hmacKey`) it uses; it only reads.
"use strict";

const RUNS_SHOWN = 12;
const STEP_W = 150, STEP_H = 46, GAP_X = 60, GAP_Y = 18, PAD = 12;
// Fill colours by step state; the legend and the test read the same values.
const STEP_FILL = {
  waiting: "#2c2c3a", running: "#4f8cef", succeeded: "#3ecf8e",
  failed: "#ef4f5f", skipped: "#5b6178", cancelled: "#b8742a",
};
const SVG_NS = "http://www.w3.org/2000/svg";
let chosenRun = null;

const svgEl = (tag, attrs = {}, ...kids) => {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...kids);
  return e;
};

// Columns by the longest chain of needs before a step; the finally step comes last.
function layout(run) {
  const needs = run.needs || {};
  const depth = {};
  const depthOf = (name, seen = new Set()) => {
    if (depth[name] !== undefined) return depth[name];
    if (seen.has(name)) return 0;
    seen.add(name);
    const d = Math.max(-1, ...(needs[name] || []).map((n) => depthOf(n, seen))) + 1;
    return (depth[name] = d);
  };
  const names = run.steps.map((s) => s.name).filter((n) => n !== run.finally);
  for (const n of names) depthOf(n);
  if (run.finally) depth[run.finally] = Math.max(-1, ...names.map((n) => depth[n])) + 1;
  const rows = {}, at = {};
  for (const s of run.steps) {
    const col = depth[s.name] ?? 0;
    const row = (rows[col] = (rows[col] ?? -1) + 1);
    at[s.name] = { x: PAD + col * (STEP_W + GAP_X), y: PAD + row * (STEP_H + GAP_Y) };
  }
  const cols = Math.max(0, ...Object.values(depth)) + 1;
  const height = Math.max(1, ...Object.values(rows).map((r) => r + 1));
  return { at, width: PAD * 2 + cols * STEP_W + (cols - 1) * GAP_X, height: PAD * 2 + height * STEP_H + (height - 1) * GAP_Y };
}

function drawDag(run) {
  const { at, width, height } = layout(run);
  const svg = svgEl("svg", { id: "dag", width, height, viewBox: `0 0 ${width} ${height}` });
  const edge = (from, to, dashed) => {
    const a = at[from], b = at[to];
    if (!a || !b) return;
    const x1 = a.x + STEP_W, y1 = a.y + STEP_H / 2, x2 = b.x, y2 = b.y + STEP_H / 2, mid = (x1 + x2) / 2;
    svg.append(svgEl("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, fill: "none",
      stroke: "#5b6384", "stroke-width": 1.5, "stroke-dasharray": dashed ? "4 3" : "none" }));
  };
  for (const [step, needs] of Object.entries(run.needs || {})) for (const n of needs) edge(n, step, false);
  if (run.finally) {
    const leaves = run.steps.map((s) => s.name).filter((n) => n !== run.finally
      && !Object.values(run.needs || {}).some((ns) => ns.includes(n)));
    for (const n of leaves) edge(n, run.finally, true);
  }
  for (const s of run.steps) {
    const { x, y } = at[s.name];
    const elements = s.elements || [];
    const done = elements.filter((e) => e.output !== undefined).length;
    const detail = s.items ? `${s.state} · ${done}/${elements.length}` : s.state;
    const tries = elements.reduce((n, e) => n + (e.attempts || []).length, 0);
    const title = svgEl("title", {});
    title.textContent = `${s.name}: ${s.state}${s.error ? ` (${s.error.code}: ${s.error.message})` : ""}, ${tries} attempt(s)`;
    svg.append(svgEl("g", { class: "step", "data-step": s.name, "data-state": s.state }, title,
      svgEl("rect", { x, y, width: STEP_W, height: STEP_H, rx: 7, fill: STEP_FILL[s.state] || "#2c2c3a",
        stroke: s.name === run.finally ? "#e7eaf3" : "none", "stroke-dasharray": "3 3" }),
      svgText(x + 10, y + 19, s.name, 13, "#0f1320", 600),
      svgText(x + 10, y + 36, detail, 11, "#0f1320", 400)));
  }
  return svg;
}

function svgText(x, y, text, size, fill, weight) {
  const t = svgEl("text", { x, y, "font-size": size, fill, "font-weight": weight, "font-family": "system-ui, sans-serif" });
  t.textContent = text.length > 20 ? text.slice(0, 19) + "…" : text;
  return t;
}

function statsLine(stats) {
  const s = stats.stats || {};
  const by = Object.entries(s.by_status || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "no runs";
  const rate = s.success_rate == null ? "-" : `${(s.success_rate * 100).toFixed(0)} %`;
  const d = s.duration_ms;
  const took = d ? `p50 ${(d.p50_ms / 1000).toFixed(2)} s, p95 ${(d.p95_ms / 1000).toFixed(2)} s, max ${(d.max_ms / 1000).toFixed(2)} s` : "-";
  return el("p", { className: "stats" }, `${stats.workflow}, last 24 h: ${s.runs || 0} runs (${by}); success ${rate}; durations ${took}`);
}

async function refreshRuns() {
  if (!hmacKey) return;
  const box = document.getElementById("runs");
  const list = await api(`/v1/runs?limit=${RUNS_SHOWN}`);
  const table = el("table", { id: "run-list" }, el("tr", {}, ...["run", "workflow", "state", "steps"].map((h) => el("th", {}, h))));
  for (const r of list.runs) {
    const done = r.steps.filter((s) => !["waiting", "running"].includes(s.state)).length;
    const row = el("tr", { className: "job" + (chosenRun === r.id ? " sel" : "") }, el("td", {}, r.id), el("td", {}, `${r.workflow} v${r.version}`),
      el("td", {}, el("span", { className: `state ${r.state}` }, r.state)), el("td", {}, `${done}/${r.steps.length}`));
    row.onclick = () => { chosenRun = r.id; refreshRuns().catch(showError); };
    table.append(row);
  }
  if (chosenRun === null && list.runs.length) chosenRun = list.runs[0].id;
  const kids = [el("h2", {}, "Runs"), list.runs.length ? table : el("p", { className: "empty" }, "No workflow runs yet.")];
  if (chosenRun !== null) {
    const run = await api(`/v1/runs/${chosenRun}`);
    const stats = await api(`/v1/workflows/${encodeURIComponent(run.workflow)}/stats?window=24h`);
    const legend = el("p", { className: "legend" }, ...Object.entries(STEP_FILL).map(([k, v]) =>
      el("span", { style: `border-left:12px solid ${v};padding-left:5px;margin-right:12px` }, k)));
    kids.push(el("h3", { id: "run-title" }, `run ${run.id}: ${run.workflow} v${run.version}, ${run.state}${run.error ? ` (${run.error.code})` : ""}`),
      el("div", { style: "overflow-x:auto" }, drawDag(run)), legend, statsLine(stats));
  }
  box.replaceChildren(...kids);
}

setInterval(() => refreshRuns().catch(showError), 2000);
setTimeout(() => refreshRuns().catch(showError), 300);
