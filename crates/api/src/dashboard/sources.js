// The dashboard's sources panel: every source of the catalogue with its records in,
// rejected and dead-lettered records, its throughput and its Kafka lag, and a small chart
// of throughput and lag over the last hour (the node's samples, one every 10 s). Loaded by
// index.html after its own script and runs.js, whose signed `api()` call, `el()` and
// `svgEl()` helpers and key (`hmacKey`) it uses; it only reads.
"use strict";

const CHART_W = 240, CHART_H = 44;
// Line colours; the test reads the same values.
const LINE = { throughput: "#4f8cef", lag: "#f5a524" };

// Records per second between consecutive samples (a node restart resets its counters: a
// fall counts as nothing).
function rates(samples) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = Math.max(1, b.at_ms - a.at_ms) / 1000;
    out.push({ at_ms: b.at_ms, rate: Math.max(0, b.records_in - a.records_in) / dt, lag: b.lag });
  }
  return out;
}

function line(points, key, colour, from, to) {
  const max = Math.max(1e-9, ...points.map((p) => p[key]));
  const x = (t) => ((t - from) / Math.max(1, to - from)) * (CHART_W - 2) + 1;
  const y = (v) => CHART_H - 2 - (v / max) * (CHART_H - 4);
  const d = points.map((p) => `${x(p.at_ms).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
  return svgEl("polyline", { class: key, points: d, fill: "none", stroke: colour, "stroke-width": 2 });
}

function chart(name, samples) {
  const points = rates(samples);
  const svg = svgEl("svg", { class: "source-chart", "data-chart": name, width: CHART_W, height: CHART_H, viewBox: `0 0 ${CHART_W} ${CHART_H}` },
    svgEl("rect", { x: 0, y: 0, width: CHART_W, height: CHART_H, rx: 5, fill: "#0b0e18" }));
  if (points.length < 1) return el("span", { className: "empty" }, "collecting…");
  const to = points[points.length - 1].at_ms, from = Math.min(points[0].at_ms, to - 3600 * 1000);
  svg.append(line(points, "rate", LINE.throughput, from, to), line(points, "lag", LINE.lag, from, to));
  return svg;
}

function kind(spec) {
  if (spec.kafka) return `kafka ${spec.kafka.topic}`;
  if (spec.bucket) return `bucket ${spec.bucket.prefix}`;
  return "ingest";
}

async function refreshSources() {
  if (!hmacKey) return;
  const box = document.getElementById("sources");
  const list = await api("/v1/sources?samples=true");
  const table = el("table", { id: "source-list" },
    el("tr", {}, ...["source", "owner", "reads", "in", "rejected", "dead-lettered", "rec/s", "lag", "last hour"].map((h) => el("th", {}, h))));
  for (const s of list.sources) {
    const c = s.counts, seen = s.seen, samples = s.samples || [];
    const r = rates(samples);
    const now = r.length ? r[r.length - 1].rate : 0;
    const lag = Object.values(seen.lag || {}).reduce((a, b) => a + b, 0);
    const row = el("tr", {}, el("td", {}, s.spec.name), el("td", {}, s.spec.owner || ""), el("td", {}, kind(s.spec)),
      el("td", { className: "in" }, String(seen.records_in)), el("td", { className: "rejected" }, String(c.rejected + c.failed_invalid_input)),
      el("td", { className: "dead" }, `${c.dead_lettered}${c.dead_letter_pending ? ` (+${c.dead_letter_pending})` : ""}`),
      el("td", {}, now.toFixed(1)), el("td", {}, String(lag)), el("td", {}, chart(s.spec.name, samples)));
    row.dataset.source = s.spec.name;
    table.append(row);
  }
  const legend = el("p", { className: "legend" }, ...Object.entries(LINE).map(([k, v]) =>
    el("span", { style: `border-left:12px solid ${v};padding-left:5px;margin-right:12px` }, k)));
  box.replaceChildren(el("h2", {}, "Sources"),
    list.sources.length ? table : el("p", { className: "empty" }, "No sources registered."), legend);
}

setInterval(() => refreshSources().catch(showError), 5000);
setTimeout(() => refreshSources().catch(showError), 300);
