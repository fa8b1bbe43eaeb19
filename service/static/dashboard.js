// The operator dashboard: polls /dashboard/api/overview, draws Chart.js charts, runs the user
// lens and rollbacks. No build step, no dependency but the vendored Chart.js.
"use strict";

const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh_ms")) || 3000;
const INGEST_POINTS = 60; // samples kept for the ingest chart
const charts = {};
const ingest = { last: null, labels: [], accepted: [], read: [] };

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
const text = (tag, value, cls) => {
  const node = document.createElement(tag);
  node.textContent = value;
  if (cls) node.className = cls;
  return node;
};
const row = (cells) => {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? wrap(cell) : text("td", cell));
  return tr;
};
const wrap = (node) => { const td = document.createElement("td"); td.appendChild(node); return td; };

function lineChart(id, datasets, yTitle) {
  return new Chart($(id), {
    type: "line",
    data: { labels: [], datasets: datasets.map((label) => ({ label, data: [], tension: 0.2 })) },
    options: {
      animation: false, maintainAspectRatio: false,
      scales: { y: { beginAtZero: true, title: { display: true, text: yTitle } } },
    },
  });
}

function setup() {
  charts.quality = lineChart("quality-chart", ["Recall@K", "NDCG@K"], "prequential");
  charts.quality.options.scales.x = { title: { display: true, text: "block" } };
  charts.online = new Chart($("online-chart"), {
    type: "bar",
    data: { labels: [], datasets: [{ label: "hit rate", data: [] }, { label: "CTR@k", data: [] }] },
    options: { animation: false, maintainAspectRatio: false, scales: { y: { beginAtZero: true } } },
  });
  charts.ingest = lineChart("ingest-chart", ["accepted here", "read from the log"], "events/s");
  $("api-key").value = sessionStorage.getItem("ccd-api-key") || "";
  $("api-key").addEventListener("change", () => sessionStorage.setItem("ccd-api-key", $("api-key").value));
  $("lens-form").addEventListener("submit", (event) => { event.preventDefault(); lookUp($("lens-user").value); });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

async function refresh() {
  try {
    const response = await fetch("/dashboard/api/overview");
    const data = await response.json();
    showHeader(data);
    showQuality(data);
    showOnline(data.online);
    showOps(data.ops);
    showVersions(data);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    $("updated").textContent = "refresh failed: " + error;
  }
}

function showHeader(data) {
  const served = data.served || {};
  $("served-version").textContent = data.served_version ?? "none";
  $("current-version").textContent = data.current_version ?? "–";
  $("served-learner").textContent = served.learner ?? "–";
  $("arms-fact").hidden = data.arms.length === 0;
  $("arms").textContent = data.arms.map((a) => `${a.arm} (${a.weight}) v${a.served_version ?? "–"}`).join(" · ");
  $("served-size").textContent = served.n_users ? `${served.n_users} × ${served.n_items}` : "–";
  const stale = data.ops.model_staleness_s;
  $("newest-event").textContent = stale === null ? "–" : `${when(served.newest_event_at)} (${stale.toFixed(0)} s ago)`;
}

function showQuality(data) {
  const k = data.eval_k;
  const points = data.history.filter((v) => v.prequential && v.prequential[`recall@${k}`] !== undefined);
  const chart = charts.quality;
  chart.data.labels = points.map((v) => `${v.block_index} (v${v.version})`);
  chart.data.datasets[0].label = `Recall@${k}`;
  chart.data.datasets[1].label = `NDCG@${k}`;
  chart.data.datasets[0].data = points.map((v) => v.prequential[`recall@${k}`]);
  chart.data.datasets[1].data = points.map((v) => v.prequential[`ndcg@${k}`]);
  chart.update();
}

function showOnline(online) {
  $("online-window").textContent = `(last ${online.window_s} s; a hit = an event within ${online.attribution_window_s} s)`;
  const chart = charts.online;
  chart.data.labels = online.versions.map((v) => `v${v.version} ${v.arm}`);
  chart.data.datasets[0].data = online.versions.map((v) => v.hit_rate);
  chart.data.datasets[1].data = online.versions.map((v) => v.ctr);
  chart.update();
  const body = $("online-table").tBodies[0];
  body.replaceChildren(...online.versions.map((v) => row([
    `v${v.version}`, v.arm, v.impressions, v.hit_impressions,
    `${fmt(v.hit_rate, 3)} (${fmt(v.hit_rate_ci95[0], 3)}–${fmt(v.hit_rate_ci95[1], 3)})`, fmt(v.ctr, 4),
  ])));
}

function showOps(ops) {
  if (ingest.last) {
    const seconds = ops.now - ingest.last.now;
    if (seconds > 0) {
      ingest.labels.push(new Date(ops.now * 1000).toLocaleTimeString());
      ingest.accepted.push((ops.events_accepted - ingest.last.events_accepted) / seconds);
      ingest.read.push((ops.events_read - ingest.last.events_read) / seconds);
      for (const list of [ingest.labels, ingest.accepted, ingest.read]) {
        while (list.length > INGEST_POINTS) list.shift();
      }
    }
  }
  ingest.last = ops;
  const chart = charts.ingest;
  chart.data.labels = ingest.labels;
  chart.data.datasets[0].data = ingest.accepted;
  chart.data.datasets[1].data = ingest.read;
  chart.update();
  $("latency-table").tBodies[0].replaceChildren(...ops.latency.map((r) => row([
    `${r.method} ${r.route}`, r.count, fmt(r.p50_ms, 2), fmt(r.p90_ms, 2), fmt(r.p99_ms, 2),
  ])));
}

function showVersions(data) {
  const k = data.eval_k;
  const body = $("versions-table").tBodies[0];
  const rows = [...data.kept].reverse().map((v) => {
    const button = text("button", v.version === data.served_version ? "served" : "roll back", "rollback");
    button.disabled = v.version === data.served_version;
    button.addEventListener("click", () => rollback(v.version));
    const tr = row([
      `v${v.version}`, v.block_index ?? "–", v.learner ?? "–", when(v.trained_at), v.events ?? "–",
      fmt(v.prequential[`recall@${k}`]), fmt(v.prequential[`ndcg@${k}`]), button,
    ]);
    tr.dataset.version = v.version;
    if (v.version === data.served_version) tr.className = "served";
    return tr;
  });
  body.replaceChildren(...rows);
}

async function rollback(version) {
  const key = $("api-key").value;
  sessionStorage.setItem("ccd-api-key", key);
  $("rollback-status").textContent = `rolling back to v${version}…`;
  const response = await fetch("/admin/rollback", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-API-Key": key },
    body: JSON.stringify({ version }),
  });
  const body = await response.json();
  $("rollback-status").textContent = response.ok
    ? `served v${body.version} (was v${body.previous})`
    : `rollback refused (${response.status}): ${body.detail}`;
  refresh();
}

async function lookUp(user) {
  $("lens-status").textContent = "…";
  const response = await fetch(`/dashboard/api/users/${encodeURIComponent(user)}?k=10`);
  const data = await response.json();
  if (!response.ok) {
    $("lens-status").textContent = `${response.status}: ${JSON.stringify(data.detail)}`;
    return;
  }
  $("lens-status").textContent = `model v${data.model_version}`;
  $("lens-strategy").textContent = `(${data.strategy})`;
  $("lens-recs").replaceChildren(...data.recommendations.map((r) => {
    const li = text("li", `${r.item_id}  ${fmt(r.score, 3)}`);
    li.dataset.item = r.item_id;
    return li;
  }));
  $("lens-seen-count").textContent = `(${data.seen_count})`;
  $("lens-seen").replaceChildren(...data.seen.map((item) => text("li", item)));
  $("lens-impressions").replaceChildren(...data.impressions.map((i) => {
    const li = text("li", `${when(i.at)} v${i.version} ${i.arm}: `);
    for (const item of i.items) li.appendChild(text("span", item + " ", i.hits.includes(item) ? "hit" : ""));
    return li;
  }));
}

document.addEventListener("DOMContentLoaded", setup);
