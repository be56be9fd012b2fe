// vlgate status page: polls /status every 2 s and redraws. No framework, no build step.
// Text from the gateway (reasons, log lines) only ever goes into textContent, never into HTML.
"use strict";

const POLL_MS = 2000;
const KEY = "vlgate.apiKey";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const GOOD = new Set(["ready"]);
const BUSY = new Set(["starting", "loading", "restarting", "draining", "suspect"]);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}
const fmtNum = (v, d = 1) => (v === null || v === undefined ? "–" : Number(v).toLocaleString(undefined, {maximumFractionDigits: d}));
const fmtPct = (v) => (v === null || v === undefined ? "–" : `${Math.round(v * 100)}%`);
const fmtGiB = (b) => `${(b / 2 ** 30).toFixed(1)} GiB`;
const stateClass = (s) => (GOOD.has(s) ? "ok" : BUSY.has(s) ? "warn" : "bad");

// ---- charts: a tiny SVG line chart; y from 0 to the max seen (each series its own max when `own`)
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function chart(svg, xs, series, own = false) {
  const w = svg.clientWidth || 300, h = svg.clientHeight || 90, pad = 3, top = 16;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const maxOf = (data) => Math.max(1e-9, ...data.filter((v) => v !== null));
  const shared = maxOf(series.flatMap((s) => s.data));
  const x = (i) => pad + (i * (w - 2 * pad)) / Math.max(1, xs.length - 1);
  svg.appendChild(svgEl("line", {x1: 0, x2: w, y1: top, y2: top, class: "grid"}));
  const legend = svgEl("text", {x: 4, y: 11, class: "label"});
  series.forEach((s, k) => {
    const max = own ? maxOf(s.data) : shared;
    const y = (v) => h - pad - (v / max) * (h - top - pad);
    let d = "";
    let pen = false;
    s.data.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    svg.appendChild(svgEl("path", {d: d || "M0,0", class: `line s${k}`}));
    const lastIndex = s.data.map((v) => v !== null).lastIndexOf(true);
    if (lastIndex >= 0) svg.appendChild(svgEl("circle", {cx: x(lastIndex), cy: y(s.data[lastIndex]), r: 2, class: `dot s${k}`}));
    const last = lastIndex >= 0 ? fmtNum(s.data[lastIndex]) : "–";
    legend.appendChild(svgEl("tspan", {class: `s${k}`}, `${k ? "  " : ""}${s.name} ${last}`));
  });
  svg.appendChild(legend);
  if (!own && w > 200) {
    const anyData = series.some((s) => s.data.some((v) => v !== null));
    svg.appendChild(svgEl("text", {x: w - 4, y: 11, "text-anchor": "end", class: "label dim"},
      anyData ? `max ${fmtNum(shared)}` : "no traffic"));
  }
}

function drawCharts(prefix, root, series) {
  const find = (name) => root.querySelector(`[data-chart="${prefix}${name}"]`) || $(`${prefix}${name}`);
  chart(find("lat"), series.t, [{name: "p50", data: series.p50}, {name: "p99", data: series.p99}]);
  chart(find("ttft"), series.t, [{name: "p50", data: series.ttft_p50}, {name: "p99", data: series.ttft_p99}]);
  chart(find("rate"), series.t, [{name: "req/s", data: series.rps}, {name: "tok/s", data: series.tps}], true);
}

// ---- the gateway's tiles
function tile(label, value, cls) {
  const t = el("div", `tile ${cls || ""}`);
  t.appendChild(el("div", "value", value));
  t.appendChild(el("div", "label", label));
  return t;
}

function drawGateway(s) {
  const g = s.gateway;
  const tiles = [
    tile("in flight", g.in_flight),
    tile("queued", `${g.queued} / ${g.queue_size}`, g.queued ? "warn" : ""),
    tile("requests/s", fmtNum(g.rps, 2)),
    tile("tokens/s", fmtNum(g.tps)),
    tile("requests", fmtNum(g.requests, 0)),
    tile("429 queue full", g.status_429, g.status_429 ? "warn" : ""),
    tile("503 unavailable", g.status_503, g.status_503 ? "bad" : ""),
    tile("retries", g.retries, g.retries ? "warn" : ""),
    tile("event-loop lag", `${fmtNum(g.loop_lag_ms, 0)} ms`, g.loop_lag_ms > 100 ? "bad" : g.loop_lag_ms > 50 ? "warn" : ""),
    tile("image cache hits", fmtPct(g.image_cache.hit_rate)),
    tile("affinity hits", fmtPct(g.affinity.hit_rate)),
  ];
  $("gateway").replaceChildren(...tiles);
  drawCharts("g-", document, s.series);
}

// ---- one card per backend
function row(dl, name, value, cls) {
  dl.appendChild(el("dt", null, name));
  dl.appendChild(el("dd", cls || null, value));
}

function slotBar(busy, total) {
  const bar = el("div", "slots");
  for (let i = 0; i < total; i++) bar.appendChild(el("span", i < busy ? "slot busy" : "slot"));
  return bar;
}

function backendCard(b, now) {
  const card = el("article", `card ${stateClass(b.state)}`);
  card.dataset.backend = b.name;
  const head = el("div", "cardhead");
  head.appendChild(el("h3", null, b.name));
  const state = el("span", `pill ${stateClass(b.state)}`, b.state);
  state.dataset.state = b.state;
  head.appendChild(state);
  head.appendChild(el("span", "dim", `for ${fmtDuration(b.since_s)}`));
  card.appendChild(head);
  // a user key's view has no url, gpu, reasons or errors (admin keys see the fleet)
  const where = [b.url, b.gpu !== null && b.gpu !== undefined ? `GPU ${b.gpu}` : null].filter(Boolean).join(" · ");
  if (where) card.appendChild(el("div", "url dim", where));
  if (b.reason) card.appendChild(el("pre", `reason ${stateClass(b.state)}`, b.reason));

  const dl = el("dl");
  const busy = b.slots_busy ?? b.in_flight;
  const slots = el("dd");
  slots.appendChild(slotBar(busy, b.slots));
  slots.appendChild(el("span", null, ` ${busy} / ${b.slots}`));
  dl.appendChild(el("dt", null, "slots busy"));
  dl.appendChild(slots);
  row(dl, "in flight · queued", `${b.in_flight} · ${b.deferred ?? 0}`);
  row(dl, "served", fmtNum(b.served, 0));
  row(dl, "req/s · tok/s", `${fmtNum(b.rps, 2)} · ${fmtNum(b.tps)}`);
  row(dl, "restarts", b.restarts, b.restarts ? "warn" : null);
  if (b.structure_tokens) {
    row(dl, "structure tokens", b.structure_tokens.ok === false ? `stripped: ${b.structure_tokens.reason}`
      : b.structure_tokens.ok ? "kept" : "unknown", b.structure_tokens.ok === false ? "bad" : null);
  } else if (b.structure_tokens === null) {
    row(dl, "structure tokens", "not checked yet", "dim");
  }
  if (b.gpu_stats) {
    const g = b.gpu_stats;
    row(dl, "GPU memory", `${fmtGiB(g.memory_used)} / ${fmtGiB(g.memory_total)}`);
    row(dl, "GPU utilisation", `${g.utilization}%`);
  }
  if (b.last_error === undefined) {
    // user view: no error text (it quotes backend addresses)
  } else if (b.last_error) {
    const ago = b.last_error_at ? `${fmtDuration(now - b.last_error_at)} ago: ` : "";
    row(dl, "last error", ago + b.last_error, "bad clamp");
    dl.lastChild.title = b.last_error;
  } else {
    row(dl, "last error", "none", "dim");
  }
  card.appendChild(dl);

  const charts = el("div", "minicharts");
  for (const [name, caption] of [["lat", "latency ms"], ["ttft", "TTFT ms"], ["rate", "req/s · tok/s"]]) {
    const fig = el("figure");
    fig.appendChild(el("figcaption", null, caption));
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "chart small");
    svg.dataset.chart = `b-${name}`;
    fig.appendChild(svg);
    charts.appendChild(fig);
  }
  card.appendChild(charts);
  return card;
}

function drawBackends(s) {
  const cards = s.backends.map((b) => backendCard(b, s.time));
  $("backends").replaceChildren(...cards);
  s.backends.forEach((b, i) => drawCharts("b-", cards[i], b.series));
  const ready = s.backends.filter((b) => b.state === "ready").length;
  $("bcount").textContent = `${ready} of ${s.backends.length} ready`;
}

function drawKeys(s) {
  const rows = s.keys.map((k) => {
    const tr = el("tr");
    const total = Object.values(k.requests).reduce((a, b) => a + b, 0);
    const by = Object.entries(k.requests).sort().map(([st, n]) => `${st}: ${n}`).join("  ");
    for (const v of [k.name, fmtNum(total, 0), by, fmtNum(k.prompt_tokens, 0), fmtNum(k.completion_tokens, 0),
      fmtNum(k.images, 0)]) tr.appendChild(el("td", null, v));
    return tr;
  });
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", "dim", "no requests yet");
    td.colSpan = 6;
    tr.appendChild(td);
    rows.push(tr);
  }
  $("keys").tBodies[0].replaceChildren(...rows);
}

function draw(s) {
  $("model").textContent = s.model;
  $("version").textContent = `v${s.version}`;
  $("uptime").textContent = fmtDuration(s.uptime_s);
  $("updated").textContent = `updated ${new Date(s.time * 1000).toLocaleTimeString()}`;
  const overall = $("overall");
  overall.textContent = s.draining ? "draining" : s.status === "ready" ? "ready" : `unavailable: ${s.reason}`;
  overall.className = `pill ${s.status === "ready" && !s.draining ? "ok" : "bad"}`;
  drawGateway(s);
  drawBackends(s);
  drawKeys(s);
  $("keyshead").textContent = s.role === "user" ? `Usage of your key (${s.key})` : "Usage per API key";
  $("main").hidden = false;
  $("meta").hidden = false;
}

// ---- polling and the API key
function banner(text) {
  $("banner").textContent = text || "";
  $("banner").hidden = !text;
  document.body.classList.toggle("stale", Boolean(text));
}

async function poll() {
  const key = sessionStorage.getItem(KEY);
  const headers = key ? {Authorization: `Bearer ${key}`} : {};
  try {
    const r = await fetch("/status", {headers, cache: "no-store"});
    if (r.status === 401) {
      if (key) { sessionStorage.removeItem(KEY); $("keyerror").textContent = "that key was not accepted"; }
      $("keyform").hidden = false;
      $("main").hidden = true;
      $("meta").hidden = true;
      banner("");
      $("overall").textContent = "API key needed";
      $("overall").className = "pill warn";
      return;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const s = await r.json();
    $("keyform").hidden = true;
    $("forget").hidden = !key;
    banner("");
    draw(s);
  } catch (err) {
    banner(`The gateway is not answering (${err.message}); showing the last data received.`);
  } finally {
    clearTimeout(poll.timer);
    poll.timer = setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    $("keyerror").textContent = "";
    poll();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); poll(); });
  poll();
});
