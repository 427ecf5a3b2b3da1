// Weir's dashboard: headline tiles, the views with their SQL and status, live charts and
// tables of their rows, and pipeline health; and a stock page (#/stocks) of price cards
// over a filtered subscription. Figures arrive over /api/v1/status/subscribe, rows over one
// WebSocket per view (/api/v1/views/{name}/subscribe); both reconnect by themselves, and
// a view's socket resumes with ?since_seq=<the last seq it has>, so no row is lost or
// shown twice across a reconnect or a server restart. An updating view's card holds its
// current rows by key and applies each change (insert or delete) in place.
"use strict";

const MAX_ROWS = 2000;      // rows kept per view in the page
const TABLE_ROWS = 20;      // rows shown in a view's table
const CURRENT_ROWS = 100;   // rows shown of an updating view's current rows
const MAX_SERIES = 12;      // lines per chart
const NUMERIC = /^(tinyint|smallint|int|bigint|float|double|decimal)/;
const PALETTE = ["#2b6cb0", "#c05621", "#2f855a", "#9b2c2c", "#6b46c1", "#b7791f",
                 "#2c7a7b", "#d53f8c", "#4a5568", "#3182ce", "#dd6b20", "#38a169"];

// ---- token -------------------------------------------------------------------------
const params = new URLSearchParams(location.search);
if (params.get("token")) localStorage.setItem("weir.token", params.get("token"));
const token = () => localStorage.getItem("weir.token") || "";

function askToken() {
  document.getElementById("token-dialog").hidden = false;
  document.getElementById("token-button").hidden = false;
}
document.getElementById("token-button").onclick = askToken;
document.getElementById("token-form").onsubmit = (e) => {
  e.preventDefault();
  localStorage.setItem("weir.token", document.getElementById("token-input").value.trim());
  document.getElementById("token-dialog").hidden = true;
  status.reconnectNow();
  for (const v of views.values()) v.reconnectNow();
  if (stocks.socket) stocks.socket.reconnectNow();
};

function wsUrl(path, query) {
  const q = new URLSearchParams(query || {});
  if (token()) q.set("token", token());
  const s = q.toString();
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path + (s ? "?" + s : "");
}

// ---- helpers -----------------------------------------------------------------------
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const fmtNum = (n) => n == null ? "–" : Number(n).toLocaleString(undefined, { maximumFractionDigits: 2 });
function fmtDelay(ms) {
  if (ms == null) return "–";
  if (Math.abs(ms) < 1000) return ms + " ms";
  if (Math.abs(ms) < 120000) return (ms / 1000).toFixed(1) + " s";
  return (ms / 60000).toFixed(1) + " min";
}
// Nested values (structs, lists, maps) as the JSON the API sent.
const fmtCell = (v) => v == null ? "∅" : typeof v === "number" ? fmtNum(v)
  : typeof v === "object" ? JSON.stringify(v) : String(v);
// Orders key values: nulls first, numbers by value, the rest by their text.
function cmpValue(a, b) {
  if (a == null || b == null) return (a == null ? 0 : 1) - (b == null ? 0 : 1);
  if (typeof a === "number" && typeof b === "number") return a - b;
  const t = (v) => typeof v === "object" ? JSON.stringify(v) : String(v);
  return t(a) < t(b) ? -1 : t(a) > t(b) ? 1 : 0;
}

// A socket that reconnects with backoff (0.5 s doubling to 5 s) and reports its state.
class Reconnecting {
  constructor(url, onMessage, onState) {
    this.url = url; this.onMessage = onMessage; this.onState = onState;
    this.delay = 500; this.closed = false; this.timer = null; this.open();
  }
  open() {
    if (this.closed) return;
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => { this.delay = 500; this.onState("connected"); };
    ws.onmessage = (m) => { try { this.onMessage(JSON.parse(m.data)); } catch (e) { console.error(e); } };
    ws.onclose = (ev) => {
      if (this.ws !== ws || this.closed) return;
      if (ev.code === 1006 && !this.everOpened) this.authCheck();
      const wait = this.delay;
      this.delay = Math.min(this.delay * 2, 5000);
      this.onState("reconnecting", wait);
      this.timer = setTimeout(() => this.open(), wait);
    };
    ws.addEventListener("open", () => { this.everOpened = true; });
  }
  async authCheck() {
    try {
      const r = await fetch("/api/v1/views", { headers: token() ? { Authorization: "Bearer " + token() } : {} });
      if (r.status === 401 || r.status === 403) askToken();
    } catch (_) { /* the server is down; reconnecting says so */ }
  }
  reconnectNow() { clearTimeout(this.timer); if (this.ws) this.ws.onclose = null; try { this.ws.close(); } catch (_) {} this.delay = 500; this.open(); }
  close() { this.closed = true; clearTimeout(this.timer); if (this.ws) this.ws.close(); }
}

// ---- connection state --------------------------------------------------------------
const conn = document.getElementById("conn");
function setConn(state, wait) {
  conn.dataset.state = state;
  conn.textContent = state === "reconnecting" ? `reconnecting in ${(wait / 1000).toFixed(1)} s` : state;
}

// ---- views -------------------------------------------------------------------------
const views = new Map();
const viewsBox = document.getElementById("views");

class ViewCard {
  constructor(info) {
    this.name = info.name;
    this.rows = [];          // {seq, row}
    this.lastSeq = 0;
    // Every seq from the first one seen through lastSeq must arrive exactly once (across
    // reconnects): `received` counts them and `gaps` counts any the server skipped.
    this.firstSeq = 0;
    this.received = 0;
    this.gaps = 0;
    this.schema = info.schema;
    // Views with EMIT EVERY send a window's row again as it fills up (is_final false, then
    // true): a newer row replaces the one with the same key.
    this.key = info.key || [];
    this.upserts = this.key.length > 0 && this.schema.some((c) => c.name === "is_final");
    // An updating view (an aggregate without a window): its current rows by key, each
    // {seq, row}; its messages carry each row's op and seq.
    this.updating = info.updating === true;
    this.current = new Map();
    this.card = el("article", { class: "card", "data-view": info.name, "data-last-seq": "0",
      "data-updating": String(this.updating) });
    this.statusEl = el("span", { class: "status" }, info.status);
    this.metaEl = el("span", { class: "meta" });
    this.errEl = el("div", { class: "sub-error" });
    this.chartEl = el("div", { class: "chart", "data-points": "0" });
    this.tableEl = el("div", { class: "rows" });
    const head = el("header", {}, el("h3", {}, info.name), this.statusEl, this.metaEl);
    const sql = el("details", {}, el("summary", {}, "SQL"), el("pre", { class: "sql" }, info.sql));
    this.card.append(head, sql, this.errEl, this.chartEl, this.tableEl);
    viewsBox.append(this.card);
    this.setupChart();
    this.update(info);
    this.socket = new Reconnecting(
      () => wsUrl(`/api/v1/views/${encodeURIComponent(this.name)}/subscribe`,
                  this.lastSeq > 0 ? { since_seq: this.lastSeq } : {}),
      (m) => this.onMessage(m),
      () => {});
  }

  update(info) {
    this.statusEl.textContent = info.status;
    this.statusEl.className = "status " + info.status;
    const f = info.figures;
    this.metaEl.textContent = (this.updating ? `updating · ${fmtNum(this.current.size)} rows · ` : "") +
      `${fmtNum(f.rows_per_sec)} rows/s in · ${fmtNum(f.rows_out)} rows out · ` +
      `watermark ${f.watermark ? f.watermark.replace("T", " ").replace("Z", "") : "–"}` +
      (f.late_rows ? ` · ${fmtNum(f.late_rows)} late` : "");
  }

  onMessage(m) {
    if (this.updating && (m.type === "snapshot" || m.type === "rows")) {
      this.applyChanges(m);
      this.errEl.textContent = "";
      this.card.dataset.lastSeq = String(this.lastSeq);
      this.scheduleRender();
      return;
    }
    if (m.type === "snapshot") {
      this.rows = [];
      const first = m.last_seq - m.rows.length + 1;
      m.rows.forEach((r, i) => this.rows.push({ seq: first + i, row: r }));
      this.lastSeq = m.last_seq;
      this.firstSeq = first;
      this.received = m.rows.length;
      this.errEl.textContent = "";
    } else if (m.type === "rows") {
      if (this.lastSeq > 0 && m.first_seq > this.lastSeq + 1) {
        this.gaps += m.first_seq - this.lastSeq - 1;
        console.warn(`view ${this.name}: seqs ${this.lastSeq + 1}..${m.first_seq - 1} never arrived`);
      }
      m.rows.forEach((r, i) => {
        const seq = m.first_seq + i;
        if (seq > this.lastSeq) {
          this.rows.push({ seq, row: r });
          this.received += 1;
        }
      });
      this.lastSeq = Math.max(this.lastSeq, m.last_seq);
      this.errEl.textContent = "";
    } else if (m.type === "error") {
      this.errEl.textContent = m.message;
      return;
    }
    if (this.upserts) this.collapse();
    if (this.rows.length > MAX_ROWS) this.rows.splice(0, this.rows.length - MAX_ROWS);
    this.card.dataset.lastSeq = String(this.lastSeq);
    this.scheduleRender();
  }

  // An updating view's message: a snapshot replaces the current rows; then each row not
  // seen yet (by seq) is applied by key: an insert puts it in place of the key's row, a
  // delete removes the key's row.
  applyChanges(m) {
    if (m.type === "snapshot") {
      this.current.clear();
      this.lastSeq = 0;
    }
    m.rows.forEach((row, i) => {
      const seq = m.seqs[i];
      if (seq <= this.lastSeq) return;
      const k = JSON.stringify(this.key.map((c) => row[c]));
      if (m.ops[i] === "delete") this.current.delete(k);
      else this.current.set(k, { k, seq, row });
    });
    this.lastSeq = Math.max(this.lastSeq, m.last_seq);
  }

  // An updating view's current rows, ordered by key.
  currentRows() {
    const rows = [...this.current.values()];
    rows.sort((a, b) => {
      for (const c of this.key) {
        const d = cmpValue(a.row[c], b.row[c]);
        if (d !== 0) return d;
      }
      return 0;
    });
    return rows;
  }

  // Keep only the newest row of each key, in the order of their newest versions.
  collapse() {
    const seen = new Set();
    const kept = [];
    for (let i = this.rows.length - 1; i >= 0; i--) {
      const k = JSON.stringify(this.key.map((c) => this.rows[i].row[c]));
      if (seen.has(k)) continue;
      seen.add(k);
      kept.push(this.rows[i]);
    }
    this.rows = kept.reverse();
  }

  scheduleRender() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }

  setupChart() {
    const cols = this.schema;
    this.hasTime = cols.some((c) => c.name === "window_start");
    this.numeric = cols.filter((c) => NUMERIC.test(c.type) && !c.name.startsWith("window_")).map((c) => c.name);
    this.keys = cols.filter((c) => c.type === "varchar").map((c) => c.name);
    this.measure = this.numeric[0];
    if (this.hasTime && this.numeric.length && this.keys.length && this.numeric.length > 1) {
      const sel = el("select", { "aria-label": "measure" });
      for (const n of this.numeric) sel.append(el("option", { value: n }, n));
      sel.onchange = () => {
        this.measure = sel.value;
        if (this.plot) { this.plot.destroy(); this.plot = null; }
        this.render();
      };
      this.chartEl.append(sel);
    }
  }

  // The chart's data: x = window starts (seconds), one series per numeric column, or per
  // group value of the first measure when the view groups by strings.
  chartData() {
    const xs = [...new Set(this.rows.map((r) => Date.parse(r.row.window_start) / 1000))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const series = new Map();
    const add = (label, x, v) => {
      if (!series.has(label)) {
        if (series.size >= MAX_SERIES) return;
        series.set(label, new Array(xs.length).fill(null));
      }
      series.get(label)[index.get(x)] = typeof v === "number" ? v : v == null ? null : Number(v);
    };
    for (const { row } of this.rows) {
      const x = Date.parse(row.window_start) / 1000;
      if (this.keys.length) {
        add(this.keys.map((k) => row[k]).join(" / "), x, row[this.measure]);
      } else {
        for (const n of this.numeric) add(n, x, row[n]);
      }
    }
    return { xs, series };
  }

  // A window's width in seconds (window_end - window_start of a row), or a minute.
  windowSecs() {
    const r = this.rows.length ? this.rows[this.rows.length - 1].row : null;
    const w = r && r.window_end ? (Date.parse(r.window_end) - Date.parse(r.window_start)) / 1000 : NaN;
    return w > 0 ? w : 60;
  }

  render() {
    if (this.hasTime && this.numeric.length && this.rows.length) {
      const { xs, series } = this.chartData();
      const labels = [...series.keys()];
      const data = [xs, ...labels.map((l) => series.get(l))];
      const same = this.plot && this.labels && labels.length === this.labels.length && labels.every((l, i) => l === this.labels[i]);
      if (same) {
        this.plot.setData(data);
      } else {
        if (this.plot) this.plot.destroy();
        this.labels = labels;
        const width = Math.max(300, this.card.clientWidth - 32);
        this.plot = new uPlot({
          width, height: 220,
          title: this.keys.length ? `${this.measure} by ${this.keys.join(", ")}` : undefined,
          scales: { x: { time: true } },
          series: [{}, ...labels.map((l, i) => ({ label: l, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true }))],
          axes: [{}, { size: 60 }],
        }, data, this.chartEl);
      }
      // uPlot draws a lone x (one window so far) on an axis of years: show a window's
      // width either side of it instead.
      if (xs.length && xs[0] === xs[xs.length - 1]) {
        const pad = this.windowSecs();
        this.plot.setScale("x", { min: xs[0] - pad, max: xs[0] + pad });
      }
      this.chartEl.dataset.points = String(xs.length);
    }
    this.renderTable();
  }

  // The latest rows, newest first (an updating view: its current rows, renderCurrent).
  renderTable() {
    if (this.updating) { this.renderCurrent(); return; }
    const cols = this.schema.map((c) => c.name);
    const shown = this.rows.slice(-TABLE_ROWS).reverse();
    const table = el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "seq"), ...cols.map((c) => el("th", {}, c)))),
      el("tbody", {}, ...shown.map(({ seq, row }) =>
        el("tr", row.is_final === false ? { class: "early" } : {},
          el("td", {}, String(seq)), ...cols.map((c) => el("td", {}, fmtCell(row[c])))))));
    this.tableEl.replaceChildren(shown.length ? table : el("p", { class: "empty" }, "No rows yet."));
    this.card.dataset.rows = String(this.rows.length);
  }

  // An updating view's current rows by key, as one table whose rows are kept by key and
  // updated in place: a changed row's cells are rewritten where it stands and flash, a
  // deleted row's element goes, a new key's row is inserted at its place in key order.
  renderCurrent() {
    const cols = this.schema.map((c) => c.name);
    if (!this.keyed) {
      const tbody = el("tbody");
      // The flash is a CSS animation on the cells; its class goes when it has run.
      tbody.addEventListener("animationend", (e) => e.target.closest("tr")?.classList.remove("changed"));
      this.keyed = {
        tbody, trs: new Map(), renders: 0,
        table: el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "seq"), ...cols.map((c) => el("th", {}, c)))), tbody),
        more: el("p", { class: "empty more" }), none: el("p", { class: "empty" }),
      };
    }
    const { tbody, trs, table, more, none } = this.keyed;
    const flash = this.keyed.renders > 0;
    const shown = this.currentRows().slice(0, CURRENT_ROWS);
    const keep = new Set(shown.map((r) => r.k));
    for (const [k, tr] of trs) if (!keep.has(k)) { tr.remove(); trs.delete(k); }
    let at = tbody.firstChild;
    for (const { k, seq, row } of shown) {
      let tr = trs.get(k);
      if (!tr) {
        tr = el("tr", { "data-key": k }, el("td"), ...cols.map(() => el("td")));
        trs.set(k, tr);
      }
      if (tr.dataset.seq !== String(seq)) {
        tr.dataset.seq = String(seq);
        tr.children[0].textContent = String(seq);
        cols.forEach((c, i) => { tr.children[i + 1].textContent = fmtCell(row[c]); });
        if (flash) {
          tr.classList.remove("changed");
          void tr.offsetWidth;  // restart the animation of a row that changes again
          tr.classList.add("changed");
        }
      }
      if (tr === at) at = at.nextSibling; else tbody.insertBefore(tr, at);
    }
    more.textContent = `The first ${shown.length} of ${fmtNum(this.current.size)} rows by key.`;
    none.textContent = this.lastSeq > 0 ? "No rows now." : "No rows yet.";
    const want = shown.length ? (this.current.size > shown.length ? [table, more] : [table]) : [none];
    const have = [...this.tableEl.children];
    if (want.length !== have.length || want.some((e, i) => e !== have[i])) this.tableEl.replaceChildren(...want);
    this.keyed.renders += 1;
    this.card.dataset.rows = String(this.current.size);
  }

  reconnectNow() { this.socket.reconnectNow(); }

  remove() {
    this.socket.close();
    if (this.plot) this.plot.destroy();
    this.card.remove();
  }
}

// ---- health ------------------------------------------------------------------------
function renderHealth(m) {
  const body = document.querySelector("#health-table tbody");
  const rows = [];
  const all = [...m.sources.map((o) => ["source", o]), ...m.views.map((o) => ["view", o]), ...m.sinks.map((o) => ["sink", o])];
  for (const [kind, o] of all) {
    const f = o.figures;
    rows.push(el("tr", { "data-object": o.name },
      el("td", {}, `${kind} ${o.name}`),
      el("td", {}, el("span", { class: "status " + o.status }, o.status)),
      el("td", {}, fmtNum(f.rows_per_sec)),
      el("td", {}, fmtNum(kind === "sink" ? f.rows_out : f.rows_in)),
      el("td", {}, f.lag == null ? "–" : fmtNum(f.lag)),
      el("td", {}, f.watermark ? f.watermark.slice(11, 23) : "–"),
      el("td", {}, fmtDelay(f.watermark_delay_ms)),
      el("td", {}, fmtNum(f.late_rows)),
      el("td", {}, fmtNum(f.bad_rows)),
      el("td", { class: "err" }, o.reason || f.last_error || "")));
  }
  body.replaceChildren(...rows);
  const sum = (list, f) => list.reduce((a, o) => a + (f(o.figures) || 0), 0);
  const eps = Math.round(sum(m.sources, (f) => f.rows_per_sec) * 10) / 10;
  const lag = sum(m.sources, (f) => f.lag);
  const late = sum(m.views, (f) => f.late_rows);
  const bad = sum(m.sources, (f) => f.bad_rows);
  document.getElementById("totals").textContent =
    `${fmtNum(eps)} events/s in · lag ${fmtNum(lag)} · ${fmtNum(late)} late rows · ${fmtNum(bad)} bad rows`;
  renderTiles(m, eps, bad);
  document.getElementById("clock").textContent = m.time.replace("T", " ").slice(0, 19) + " UTC";
}

// The headline tiles, from the same status message as the health table: events per
// second in (sources' rows_per_sec summed), events accepted (sources' rows_in), rows the
// views emitted (views' rows_out), and the error rate: the events the sources rejected
// (malformed records skipped or dead-lettered, bad_rows) over every event they read
// (accepted and rejected). Each tile's data-value is the exact figure shown.
function renderTiles(m, eps, bad) {
  const accepted = m.sources.reduce((a, s) => a + s.figures.rows_in, 0);
  const emitted = m.views.reduce((a, v) => a + v.figures.rows_out, 0);
  const total = accepted + bad;
  const rate = total > 0 ? bad / total : 0;
  const tile = (id, value, text) => {
    const t = document.getElementById(id);
    t.dataset.value = String(value);
    t.querySelector(".value").textContent = text;
    return t;
  };
  tile("tile-events-per-sec", eps, fmtNum(eps));
  tile("tile-events-accepted", accepted, fmtNum(accepted));
  tile("tile-rows-emitted", emitted, fmtNum(emitted));
  const err = tile("tile-error-rate", rate, total > 0 ? `${(rate * 100).toFixed(rate > 0 && rate < 0.001 ? 3 : 2)} %` : "–");
  err.dataset.bad = String(bad);
  err.dataset.total = String(total);
  err.classList.toggle("bad", rate > 0);
  err.querySelector(".note").textContent = `${fmtNum(bad)} rejected of ${fmtNum(total)} read`;
  document.getElementById("tiles").dataset.time = m.time;
}

function syncViews(list) {
  const names = new Set(list.map((v) => v.name));
  for (const [name, card] of views) {
    if (!names.has(name)) { card.remove(); views.delete(name); }
  }
  for (const info of list) {
    const existing = views.get(info.name);
    if (existing && (existing.schema.map((c) => c.name).join() !== info.schema.map((c) => c.name).join() ||
                     existing.updating !== (info.updating === true))) {
      existing.remove(); views.delete(info.name);  // dropped and created again
    }
    if (!views.has(info.name)) views.set(info.name, new ViewCard(info));
    else views.get(info.name).update(info);
  }
  viewsBox.querySelector(".empty")?.toggleAttribute("hidden", views.size > 0);
}

// ---- cluster -----------------------------------------------------------------------
// On a cluster member (docs/cluster.md), GET /api/v1/cluster describes every member of
// the cluster as Kafka's consumer groups see them, and this member's own figures; the
// section stays hidden on a process running alone (404).
const clusterBox = document.getElementById("cluster");
function renderCluster(c) {
  const rows = [];
  const groups = [...(c.groups.stage1 || []).map((g) => ["1: input", g.source, g]),
                  ...(c.groups.stage2 || []).map((g) => ["2: key partitions", g.view, g])];
  for (const [stage, of, g] of groups) {
    const members = g.members.length ? g.members : [{ member: "–", partitions: [] }];
    members.forEach((m, i) => rows.push(el("tr", { "data-group": g.group, "data-member": m.member },
      el("td", {}, i === 0 ? stage : ""),
      el("td", {}, i === 0 ? of : ""),
      el("td", {}, i === 0 ? g.state : ""),
      el("td", {}, i === 0 ? fmtNum(g.lag) : ""),
      el("td", {}, m.member),
      el("td", { class: "partitions" }, m.partitions.join(", ")))));
  }
  document.querySelector("#cluster-table tbody").replaceChildren(...rows);
  const me = c.member || { id: "", views: {} };
  document.getElementById("cluster-name").textContent = `this member: ${me.id}`;
  const figures = Object.entries(me.views).map(([v, f]) => el("div", { "data-member-view": v },
    `${v}: ${fmtNum(f.records_in)} records in · ${fmtNum(f.rows_out)} rows out · ` +
    `${fmtNum(f.rebalances)} rebalances · ${fmtNum(f.fenced)} fenced · ${fmtNum(f.snapshots)} snapshots` +
    (f.last_restore ? ` · last take-over: key partition ${f.last_restore.key_partition}, ` +
      `${fmtNum(f.last_restore.open_groups)} open groups in ${f.last_restore.ms} ms` : "")));
  document.getElementById("cluster-member").replaceChildren(...figures);
}
async function pollCluster() {
  let again = true;
  try {
    const r = await fetch("/api/v1/cluster", { headers: token() ? { Authorization: "Bearer " + token() } : {} });
    if (r.status === 404) {  // not a cluster member
      again = false;
      clusterBox.dataset.state = "alone";
    } else if (r.ok) {
      renderCluster(await r.json());
      clusterBox.dataset.state = "member";
      clusterBox.hidden = false;
      document.getElementById("cluster-error").textContent = "";
    } else document.getElementById("cluster-error").textContent = `GET /api/v1/cluster: ${r.status}`;
  } catch (e) {
    document.getElementById("cluster-error").textContent = `GET /api/v1/cluster: ${e}`;
  }
  if (again) setTimeout(pollCluster, 3000);
}
pollCluster();

// ---- stocks ------------------------------------------------------------------------
// The stock page (#/stocks): a price card per followed symbol from a view of stock ticks
// (the demo's symbol_stats, queries/03_stocks.sql; another with ?stocks.view=NAME), over
// a filtered subscription: /subscribe?key.symbol=A&key.symbol=B sends only those
// symbols' rows, and a {"type":"subscribe","keys":{"symbol":[...]}} message changes the
// set without reconnecting (the server answers with a snapshot of the new set's retained
// rows, or {"type":"rejected"} and keeps the old set).
const STOCK_VIEW = params.get("stocks.view") || "symbol_stats";
const STOCK_KEY = "symbol";
const PRICE_COLUMNS = ["close", "price", "last", "vwap"];
const STOCK_WINDOWS = 30;   // rows (windows) kept per symbol, for the sparkline
const DEFAULT_SYMBOLS = 4;  // followed at first: the first symbols in name order
const sameSet = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

class StockPage {
  constructor() {
    this.section = document.getElementById("stocks");
    this.cardsBox = document.getElementById("stock-cards");
    this.listEl = document.getElementById("symbol-list");
    this.statusEl = document.getElementById("stocks-status");
    this.errEl = document.getElementById("stocks-error");
    this.info = null;          // the view, from the status stream
    this.active = false;       // the page is shown
    this.socket = null;
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem("weir.stocks") || "null"); } catch (_) { /* none */ }
    this.followed = Array.isArray(saved) ? saved : null;  // sorted; null: not chosen yet
    this.confirmed = [];       // the set the server filters by, as far as it has answered
    this.pending = [];         // sets sent in subscribe messages and not answered yet
    this.awaitingSnapshot = false;  // the socket opened without since_seq
    this.urlSet = [];          // the set the socket was opened with
    this.stateSet = null;      // the set whose rows `bySymbol` holds
    this.bySymbol = new Map(); // symbol -> Map(row key -> {seq, row})
    this.lastSeq = 0;
    this.foreign = 0;          // rows of symbols outside the set the server was asked for
    this.known = [];           // the view's symbols, for the picker
    this.cards = new Map();    // symbol -> its card's elements
    this.listEl.onchange = () => this.setFollowed(
      [...this.listEl.querySelectorAll("input:checked")].map((i) => i.value));
    document.getElementById("symbol-add").onsubmit = (e) => {
      e.preventDefault();
      const input = document.getElementById("symbol-input");
      const sym = input.value.trim();
      if (sym) this.setFollowed([...(this.followed || []), sym]);
      input.value = "";
    };
  }

  // The view to follow: STOCK_VIEW, else the first with a symbol and a price column.
  sync(list) {
    const fits = (v) => v.schema.some((c) => c.name === STOCK_KEY) && v.schema.some((c) => PRICE_COLUMNS.includes(c.name));
    const info = list.find((v) => v.name === STOCK_VIEW && fits(v)) || list.find(fits) || null;
    const shape = (v) => v ? `${v.name}(${v.schema.map((c) => c.name).join()})` : "";
    const same = shape(info) === shape(this.info);
    if (!same) {
      this.close();
      this.bySymbol.clear(); this.lastSeq = 0; this.stateSet = null; this.known = [];
      this.info = info;
      this.priceCol = info ? PRICE_COLUMNS.find((c) => info.schema.some((s) => s.name === c)) : null;
      this.keyCols = info ? (info.key || []) : [];
      this.lastKnown = 0;
      document.getElementById("stocks-view").textContent = info ? `${info.name} · ${this.priceCol}` : "";
    }
    this.start();
    this.scheduleRender();
  }

  setActive(on, hash) {
    this.active = on;
    if (on && hash.has("symbols")) this.setFollowed(hash.get("symbols").split(",").filter((x) => x), false);
    if (on) this.start(); else this.close();
    this.scheduleRender();
  }

  // Connect when the page is shown, the view is there and a set is chosen; ask for the
  // view's symbols every 10 s meanwhile.
  start() {
    if (!this.active || !this.info) return;
    if (Date.now() - this.lastKnown > 10000) { this.lastKnown = Date.now(); this.loadKnown(); }
    if (!this.socket && this.followed && this.followed.length) {
      this.socket = new Reconnecting(() => this.url(), (m) => this.onMessage(m), (st, wait) => this.onState(st, wait));
    }
  }

  close() {
    if (this.socket) this.socket.close();
    this.socket = null;
    this.pending = [];
    this.section.dataset.state = "idle";
  }

  async loadKnown() {
    const view = this.info.name;
    try {
      const r = await fetch("/api/v1/query", {
        method: "POST",
        headers: Object.assign({ "Content-Type": "text/plain" }, token() ? { Authorization: "Bearer " + token() } : {}),
        body: `SELECT DISTINCT "${STOCK_KEY}" AS s FROM "${view.replaceAll('"', '""')}" ORDER BY s`,
      });
      if (!r.ok || !this.info || this.info.name !== view) return;
      this.known = (await r.json()).rows.map((x) => x.s).filter((x) => x != null).map(String);
      if (!this.followed && this.known.length) this.setFollowed(this.known.slice(0, DEFAULT_SYMBOLS));
      this.scheduleRender();
    } catch (_) { /* the server is down; the next try will tell */ }
  }

  // The socket's address: the followed set as key.symbol filters, resuming after the
  // newest seq when the rows held are of the same set (else the snapshot replaces them).
  url() {
    const q = new URLSearchParams();
    this.urlSet = [...this.followed];
    this.pending = [];
    const resume = this.lastSeq > 0 && this.stateSet !== null && sameSet(this.stateSet, this.urlSet);
    if (resume) q.set("since_seq", String(this.lastSeq));
    this.awaitingSnapshot = !resume;
    for (const s of this.urlSet) q.append(`key.${STOCK_KEY}`, s);
    return wsUrl(`/api/v1/views/${encodeURIComponent(this.info.name)}/subscribe`, q);
  }

  onState(state, wait) {
    this.section.dataset.state = state;
    if (state === "connected") this.confirmed = [...this.urlSet];
    this.statusNote = state === "reconnecting" ? `reconnecting in ${(wait / 1000).toFixed(1)} s` : "";
    this.scheduleRender();
  }

  // Follow `list`: tell the server over the open socket, or open one with it.
  setFollowed(list, updateHash = true) {
    const next = [...new Set(list.map((x) => String(x).trim()).filter((x) => x))].sort();
    if (this.followed && sameSet(next, this.followed)) return;
    this.followed = next;
    localStorage.setItem("weir.stocks", JSON.stringify(next));
    if (updateHash && this.active) history.replaceState(null, "", `#/stocks?symbols=${next.map(encodeURIComponent).join(",")}`);
    this.errEl.textContent = "";
    if (!next.length) {
      this.close();
      this.bySymbol.clear(); this.lastSeq = 0; this.stateSet = null; this.confirmed = [];
    } else if (!this.socket) {
      this.start();
    } else if (this.socket.ws && this.socket.ws.readyState === WebSocket.OPEN) {
      this.socket.ws.send(JSON.stringify({ type: "subscribe", keys: { [STOCK_KEY]: next } }));
      this.pending.push(next);
    } // else reconnecting: the next socket opens with the new set
    this.scheduleRender();
  }

  onMessage(m) {
    if (m.type === "snapshot") {
      // The answer to the socket's own filter, or to the oldest subscribe message.
      if (this.awaitingSnapshot) this.awaitingSnapshot = false;
      else if (this.pending.length) this.confirmed = this.pending.shift();
      this.bySymbol.clear();
      this.lastSeq = 0;
      this.stateSet = [...this.confirmed];
      this.apply(m, new Set(this.confirmed));
      this.errEl.textContent = "";
    } else if (m.type === "rows") {
      // Until the server has answered every subscribe message, rows of any set asked for
      // may come.
      this.apply(m, new Set([this.confirmed, ...this.pending].flat()));
    } else if (m.type === "rejected") {
      this.pending.shift();
      this.errEl.textContent = `The server refused the new set of symbols: ${m.message}`;
      this.followed = this.pending.length ? [...this.pending[this.pending.length - 1]] : [...this.confirmed];
      localStorage.setItem("weir.stocks", JSON.stringify(this.followed));
      if (this.active) history.replaceState(null, "", `#/stocks?symbols=${this.followed.map(encodeURIComponent).join(",")}`);
    } else if (m.type === "error") {
      this.errEl.textContent = m.message;
    }
    this.scheduleRender();
  }

  // Keep each row by its key (window bounds and symbol: an EMIT EVERY view's newer row of a
  // window replaces the earlier one), the newest STOCK_WINDOWS per symbol.
  apply(m, allowed) {
    m.rows.forEach((row, i) => {
      const seq = m.seqs ? m.seqs[i] : m.first_seq + i;
      if (seq <= this.lastSeq) return;
      const sym = String(row[STOCK_KEY]);
      if (!allowed.has(sym)) this.foreign += 1;
      if (!this.bySymbol.has(sym)) this.bySymbol.set(sym, new Map());
      const rows = this.bySymbol.get(sym);
      const k = this.keyCols.length ? JSON.stringify(this.keyCols.map((c) => row[c])) : String(seq);
      rows.delete(k);
      rows.set(k, { seq, row });
      if (rows.size > STOCK_WINDOWS) {
        const oldest = this.ordered(rows)[0];
        rows.delete(this.keyCols.length ? JSON.stringify(this.keyCols.map((c) => oldest.row[c])) : String(oldest.seq));
      }
    });
    const seqs = m.seqs || [];
    this.lastSeq = Math.max(this.lastSeq, m.last_seq ?? 0, seqs.length ? seqs[seqs.length - 1] : 0);
  }

  // A symbol's rows oldest first: by window_start when the view has it, then by seq.
  ordered(rows) {
    const t = (r) => r.row.window_start ? Date.parse(r.row.window_start) : 0;
    return [...rows.values()].sort((a, b) => (t(a) - t(b)) || (a.seq - b.seq));
  }

  // A symbol's figures: the latest price (the newest window's), and its change against the
  // window before (or, with one window so far, against that window's open).
  quote(sym) {
    const rows = this.bySymbol.get(sym);
    if (!rows || !rows.size) return null;
    const list = this.ordered(rows);
    const latest = list[list.length - 1];
    const prev = list.length > 1 ? list[list.length - 2] : null;
    const price = latest.row[this.priceCol];
    const base = prev ? prev.row[this.priceCol] : latest.row.open;
    const change = typeof price === "number" && typeof base === "number" ? price - base : null;
    return { latest, prev, price, base, change, series: list.map((r) => r.row[this.priceCol]) };
  }

  scheduleRender() {
    if (this.pendingRender) return;
    this.pendingRender = true;
    requestAnimationFrame(() => { this.pendingRender = false; this.render(); });
  }

  render() {
    const s = this.section;
    s.dataset.followed = this.confirmed.join(",");
    s.dataset.pending = String(this.pending.length);
    s.dataset.lastSeq = String(this.lastSeq);
    s.dataset.foreign = String(this.foreign);
    s.dataset.view = this.info ? this.info.name : "";
    this.renderPicker();
    const followed = this.followed || [];
    this.statusEl.textContent = !this.info ? "" :
      (followed.length ? `following ${followed.join(", ")}` : "following no symbol") +
      ` · last seq ${this.lastSeq}` + (this.statusNote ? ` · ${this.statusNote}` : "");
    if (!this.info) {
      this.cardsBox.replaceChildren(el("p", { class: "empty" },
        `No view of stock prices: the page follows ${STOCK_VIEW} (queries/03_stocks.sql), or a view with a ${STOCK_KEY} and a price column (${PRICE_COLUMNS.join(", ")}).`));
      this.cards.clear();
      return;
    }
    if (!followed.length) {
      this.cardsBox.replaceChildren(el("p", { class: "empty" }, this.known.length ? "Pick symbols to follow." : "Waiting for the view's first rows."));
      this.cards.clear();
      return;
    }
    for (const [sym, c] of this.cards) if (!followed.includes(sym)) { c.card.remove(); this.cards.delete(sym); }
    this.cardsBox.querySelector(":scope > .empty")?.remove();
    let at = this.cardsBox.firstChild;
    for (const sym of followed) {
      const c = this.cards.get(sym) || this.newCard(sym);
      this.fillCard(c, this.quote(sym));
      if (c.card === at) at = at.nextSibling; else this.cardsBox.insertBefore(c.card, at);
    }
  }

  renderPicker() {
    const followed = this.followed || [];
    const all = [...new Set([...this.known, ...followed])].sort();
    const have = [...this.listEl.querySelectorAll("input")].map((i) => i.value);
    if (!sameSet(all, have)) {
      this.listEl.replaceChildren(...all.map((sym) => el("label", { class: "pick" },
        el("input", { type: "checkbox", value: sym, "data-symbol": sym }), " ", sym)));
    }
    for (const i of this.listEl.querySelectorAll("input")) i.checked = followed.includes(i.value);
  }

  newCard(sym) {
    const c = {
      card: el("article", { class: "stock flat", "data-symbol": sym }),
      price: el("div", { class: "price" }, "–"),
      change: el("div", { class: "change" }, ""),
      spark: document.createElementNS("http://www.w3.org/2000/svg", "svg"),
      meta: el("div", { class: "stock-meta" }, "no rows yet"),
    };
    c.spark.setAttribute("class", "spark");
    c.spark.setAttribute("viewBox", "0 0 100 30");
    c.spark.setAttribute("preserveAspectRatio", "none");
    c.line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    c.spark.append(c.line);
    c.card.append(el("header", {}, el("h3", {}, sym)), c.price, c.change, c.spark, c.meta);
    this.cards.set(sym, c);
    return c;
  }

  fillCard(c, q) {
    const d = c.card.dataset;
    if (!q) {
      delete d.price; delete d.change; delete d.seq; delete d.shown;
      d.direction = "flat";
      c.card.className = "stock flat";
      c.price.textContent = "–"; c.change.textContent = ""; c.meta.textContent = "no rows yet";
      c.line.setAttribute("points", "");
      return;
    }
    // What the card shows depends on the newest row and the one before it.
    const shown = `${q.latest.seq}/${q.prev ? q.prev.seq : ""}`;
    if (d.shown === shown) return;
    d.shown = shown;
    const dir = q.change > 0 ? "up" : q.change < 0 ? "down" : "flat";
    // The card flashes (in its colour) when the price it shows moves.
    const moved = d.price === undefined || d.price === String(q.price) ? "" : dir === "down" ? "moved-down" : "moved-up";
    d.price = String(q.price);
    d.change = q.change == null ? "" : String(q.change);
    d.seq = String(q.latest.seq);
    d.direction = dir;
    d.windowStart = q.latest.row.window_start || "";
    c.card.className = `stock ${dir}`;
    if (moved) { void c.card.offsetWidth; c.card.classList.add(moved); }
    const digits = Math.abs(q.price) < 10 ? 4 : 2;
    c.price.textContent = typeof q.price === "number" ? q.price.toFixed(digits) : fmtCell(q.price);
    c.change.textContent = q.change == null ? "" :
      `${dir === "up" ? "▲" : dir === "down" ? "▼" : "■"} ${q.change >= 0 ? "+" : "−"}${Math.abs(q.change).toFixed(digits)}` +
      (q.base ? ` (${q.change >= 0 ? "+" : "−"}${Math.abs(q.change / q.base * 100).toFixed(2)} %)` : "");
    const r = q.latest.row;
    const when = r.window_start ? `${r.window_start.slice(11, 19)}–${(r.window_end || "").slice(11, 19)}` : "";
    c.meta.textContent = [when, r.is_final === false ? "open" : r.is_final === true ? "closed" : "",
      r.volume != null ? `vol ${fmtNum(r.volume)}` : "", r.trades != null ? `${fmtNum(r.trades)} trades` : "",
      `seq ${q.latest.seq}`].filter((x) => x).join(" · ");
    const ys = q.series.filter((y) => typeof y === "number");
    if (ys.length > 1) {
      const lo = Math.min(...ys), hi = Math.max(...ys), span = hi - lo || 1;
      c.line.setAttribute("points", ys.map((y, i) => `${(i / (ys.length - 1) * 100).toFixed(2)},${(28 - (y - lo) / span * 26).toFixed(2)}`).join(" "));
    } else c.line.setAttribute("points", "");
  }
}
const stocks = new StockPage();
document.getElementById("stock-cards").addEventListener("animationend", (e) => e.target.classList.remove("moved-up", "moved-down"));

// ---- pages -------------------------------------------------------------------------
// #/ (or no hash): the pipeline page; #/stocks[?symbols=A,B]: the stock page.
function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const onStocks = path === "/stocks";
  document.getElementById("pipeline-page").hidden = onStocks;
  document.getElementById("stocks-page").hidden = !onStocks;
  document.body.dataset.page = onStocks ? "stocks" : "pipeline";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.page === document.body.dataset.page);
  stocks.setActive(onStocks, new URLSearchParams(query || ""));
  // Charts drawn while their page was hidden had no width: draw them again.
  if (!onStocks) for (const v of views.values()) if (v.plot) { v.plot.destroy(); v.plot = null; v.scheduleRender(); }
}
window.addEventListener("hashchange", route);

const status = new Reconnecting(
  () => wsUrl("/api/v1/status/subscribe"),
  (m) => { if (m.type === "status") { renderHealth(m); syncViews(m.views); stocks.sync(m.views); } },
  (state, wait) => {
    setConn(state, wait);
    // After a server restart, resume every view at once rather than at its own backoff.
    if (state === "connected") {
      for (const v of views.values()) if (v.socket.ws?.readyState !== WebSocket.OPEN) v.reconnectNow();
      if (stocks.socket && stocks.socket.ws?.readyState !== WebSocket.OPEN) stocks.socket.reconnectNow();
    }
  });
route();
window.weir = { views, status, stocks };
