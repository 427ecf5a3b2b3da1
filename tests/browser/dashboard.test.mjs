// The dashboard in Debian's headless Chromium, driven by playwright-core, against a real
// `weir run`: the page loads and connects, a view's chart appears and grows as windows
// close, its table shows the view's columns, and after the server is stopped and started
// again the page reconnects by itself and goes on from the seq it had.
//
// Needs: the weir binary (WEIR_BIN, default $CARGO_TARGET_DIR/debug/weir), /usr/bin/chromium
// (CHROMIUM to override). Screenshots go to WEIR_ARTIFACTS_DIR (default
// $CARGO_TARGET_DIR/browser-artifacts).

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ARTIFACTS, launch, openDashboard, startWeir, stopWeir, until, waitHealthy } from "./lib.mjs";

const SQL = `
CREATE SOURCE dl (event_id VARCHAR, ts TIMESTAMP, region VARCHAR, status VARCHAR, speed_mbps DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '200' MILLISECOND)
  WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '400', seed = '3');
CREATE MATERIALIZED VIEW health AS
  SELECT window_start, window_end, region, count(*) AS downloads,
         count(*) FILTER (WHERE status = 'failed') AS failures, avg(speed_mbps) AS avg_speed,
         named_struct('region', region, 'statuses', array_agg(DISTINCT status)) AS detail
  FROM TUMBLE(dl, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end, region;
`;

const lastSeq = (page) => page.$eval('[data-view="health"]', (e) => Number(e.dataset.lastSeq));
const points = (page) => page.$eval('[data-view="health"] .chart', (e) => Number(e.dataset.points));

test("the dashboard shows live charts and resumes after a server restart", { timeout: 180000 }, async () => {
  const launched = await launch(SQL);
  const { dir, port, browser } = launched;
  let { weir } = launched;
  try {
    const { page, errors } = await openDashboard(browser, port, weir);
    await page.waitForSelector('#conn[data-state="connected"]', { timeout: 30000 });
    // Running alone: the cluster section found no cluster and stays hidden.
    await page.waitForSelector('#cluster[data-state="alone"][hidden]', { state: "attached", timeout: 30000 });

    // The view's card with its SQL, a chart that grows as windows close, a table.
    const card = await page.waitForSelector('[data-view="health"]', { timeout: 30000 });
    const sql = await card.$eval("pre.sql", (e) => e.textContent);
    assert.match(sql, /CREATE MATERIALIZED VIEW health AS/);
    await page.waitForSelector('[data-view="health"] .chart canvas', { timeout: 30000 });
    // The time axis spans the windows shown, a window either side at most (one window
    // alone used to be drawn on an axis of years).
    const axis = await page.evaluate(() => {
      const card = window.weir.views.get("health");
      const xs = card.plot.data[0];
      return { min: card.plot.scales.x.min, max: card.plot.scales.x.max, first: xs[0], last: xs[xs.length - 1] };
    });
    assert.ok(axis.max - axis.min <= axis.last - axis.first + 2 * 1 + 0.001,
      `x axis ${JSON.stringify(axis)} spans more than the windows (1 s) shown`);
    await page.waitForFunction(() => Number(document.querySelector('[data-view="health"] .chart').dataset.points) >= 2, null, { timeout: 30000 });
    const before = await points(page);
    await page.waitForFunction((n) => Number(document.querySelector('[data-view="health"] .chart').dataset.points) > n, before, { timeout: 30000 });
    const headers = await page.$$eval('[data-view="health"] .rows th', (ths) => ths.map((t) => t.textContent));
    assert.deepEqual(headers, ["seq", "window_start", "window_end", "region", "downloads", "failures", "avg_speed", "detail"]);
    const cells = await page.$$eval('[data-view="health"] .rows tbody tr:first-child td', (tds) => tds.map((t) => t.textContent));
    assert.match(cells[1], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, `window_start cell: ${cells[1]}`);
    // A nested column shows as its JSON: the struct's region is the row's region.
    const detail = JSON.parse(cells[7]);
    assert.equal(detail.region, cells[3], `detail cell: ${cells[7]}`);
    assert.ok(Array.isArray(detail.statuses) && detail.statuses.length > 0, `detail cell: ${cells[7]}`);
    // The health panel shows the source's rate.
    await page.waitForSelector('#health-table tr[data-object="dl"]', { timeout: 30000 });
    // The events/s tile is the sources' rows_per_sec summed (REST reads it a moment apart,
    // so within a quarter; the source runs at 400 rows/s).
    await until("the events/s tile to match the sources' rate", async () => {
      const tile = await page.$eval("#tile-events-per-sec", (e) => Number(e.dataset.value));
      const { sources } = await (await fetch(`http://127.0.0.1:${port}/api/v1/sources`)).json();
      const rest = sources.reduce((a, o) => a + o.figures.rows_per_sec, 0);
      return rest > 100 && Math.abs(tile - rest) <= 0.25 * rest;
    }, 30000);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });

    // The seqs the page has match the server's, with no gap: REST agrees on the newest row.
    const seqBefore = await lastSeq(page);
    assert.ok(seqBefore > 0);

    // Restart: the page says it lost the server, then reconnects and goes on.
    await stopWeir(weir);
    await page.waitForSelector('#conn[data-state="reconnecting"]', { timeout: 30000 });
    weir = startWeir(dir, port);
    await waitHealthy(port, weir);
    await page.waitForSelector('#conn[data-state="connected"]', { timeout: 30000 });
    await page.waitForFunction((n) => Number(document.querySelector('[data-view="health"]').dataset.lastSeq) > n + 5, seqBefore, { timeout: 45000 });
    const seqAfter = await lastSeq(page);
    // The server numbered on from where it stopped: the page's rows have no duplicate seqs,
    // and every seq from the first the page saw through the newest arrived exactly once
    // (across the restart and the reconnect: no gap, no repeat).
    const seqs = await page.evaluate(() => window.weir.views.get("health").rows.map((r) => r.seq));
    assert.equal(new Set(seqs).size, seqs.length, "no row twice");
    const got = await page.evaluate(() => {
      const v = window.weir.views.get("health");
      return { first: v.firstSeq, last: v.lastSeq, received: v.received, gaps: v.gaps };
    });
    assert.equal(got.gaps, 0, `no seq skipped: ${JSON.stringify(got)}`);
    assert.equal(got.received, got.last - got.first + 1, `every seq once: ${JSON.stringify(got)}`);
    assert.ok(seqAfter > seqBefore);
    const rest = await (await fetch(`http://127.0.0.1:${port}/api/v1/views/health/rows?limit=1`)).json();
    assert.ok(rest.first_seq > seqBefore, `numbering continued after the restart: ${rest.first_seq} > ${seqBefore}`);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-after-restart.png"), fullPage: true });
    assert.deepEqual(errors, [], "no script errors on the page");
    console.log(`screenshots: ${join(ARTIFACTS, "dashboard.png")}, ${join(ARTIFACTS, "dashboard-after-restart.png")}`);
  } finally {
    await browser.close();
    await stopWeir(weir);
  }
});

// An updating view (an aggregate without a window): HAVING removes a region's row once it
// has 25 downloads, so rows change and disappear as the bounded input streams in.
const UPDATING_SQL = `
CREATE SOURCE dl (event_id VARCHAR, ts TIMESTAMP, region VARCHAR, WATERMARK FOR ts AS ts)
  WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '10', rows = '200',
        seed = '5', start = '2024-01-01T00:00:00Z');
CREATE MATERIALIZED VIEW quiet AS
  SELECT region, count(*) AS n FROM dl GROUP BY region HAVING count(*) < 25;
`;

test("an updating view's table changes in place and loses removed rows", { timeout: 120000 }, async () => {
  const { port, weir, browser } = await launch(UPDATING_SQL);
  const api = async (path) => (await fetch(`http://127.0.0.1:${port}${path}`)).json();
  try {
    const { page, errors } = await openDashboard(browser, port, weir);
    await page.waitForSelector('[data-view="quiet"][data-updating="true"]', { timeout: 30000 });
    // Every table the card shows, as [region, n, element] rows in the order shown (each
    // row element numbered the first time it is seen), and the regions whose row was
    // highlighted as changed.
    await page.evaluate(() => {
      window.tables = [];
      window.flashed = new Set();
      const ids = new WeakMap();
      let next = 0;
      const box = document.querySelector('[data-view="quiet"] .rows');
      const record = () => window.tables.push([...box.querySelectorAll("tbody tr")].map((tr) => {
        if (!ids.has(tr)) ids.set(tr, ++next);
        if (tr.classList.contains("changed")) window.flashed.add(tr.children[1].textContent);
        return [tr.children[1].textContent, tr.children[2].textContent, ids.get(tr)];
      }));
      record();
      new MutationObserver(record).observe(box, { childList: true, subtree: true, characterData: true,
        attributes: true, attributeFilter: ["class"] });
    });

    // Read to the end: the source has ended and the page has the view's newest seq.
    await until("the source to finish", async () => (await api("/api/v1/sources/dl")).status === "finished", 60000);
    const view = await api("/api/v1/views/quiet");
    assert.equal(view.updating, true);
    assert.deepEqual(view.key, ["region"]);
    await page.waitForFunction((n) => Number(document.querySelector('[data-view="quiet"]').dataset.lastSeq) === n,
      view.last_seq, { timeout: 30000 });
    // The render of the last message ran before a frame callback asked for now.
    await page.evaluate(() => new Promise(requestAnimationFrame));
    const recorded = await page.evaluate(() => window.tables);
    const flashed = await page.evaluate(() => [...window.flashed]);
    const tables = recorded.map((t) => t.map(([r, n]) => [r, n]));

    // Each table holds one row per region, ordered by region: changes replace rows, they
    // are not appended as a log.
    for (const t of tables) {
      const regions = t.map(([r]) => r);
      assert.deepEqual(regions, [...new Set(regions)].sort(), `one row per region, by region: ${JSON.stringify(t)}`);
    }
    // Some region's count changed in place, and some region's row was removed.
    const counts = new Map();
    for (const t of tables) for (const [r, n] of t) counts.set(r, (counts.get(r) || new Set()).add(n));
    assert.ok([...counts.values()].some((ns) => ns.size > 1), `a count changed: ${JSON.stringify(tables)}`);
    const removed = [...counts.keys()].filter((r) => {
      const shown = tables.map((t) => t.some(([x]) => x === r));
      return shown.indexOf(true) < shown.lastIndexOf(false);
    });
    assert.ok(removed.length > 0, `a row was removed: ${JSON.stringify(tables)}`);
    // In place: a row's element stays while its count changes (it is not rebuilt), and a
    // changed row is highlighted.
    const counted = new Map();  // element -> counts it showed
    for (const t of recorded) for (const [, n, id] of t) counted.set(id, (counted.get(id) || new Set()).add(n));
    assert.ok([...counted.values()].some((ns) => ns.size > 1), `a row element showed two counts: ${JSON.stringify(recorded)}`);
    const changedRegions = [...counts.entries()].filter(([, ns]) => ns.size > 1).map(([r]) => r);
    assert.ok(flashed.length > 0 && flashed.every((r) => counts.has(r)), `changed rows highlighted: ${flashed}`);
    assert.ok(changedRegions.some((r) => flashed.includes(r)), `a region whose count changed flashed: ${flashed} of ${changedRegions}`);
    // The last table is the view's current rows.
    const current = await api("/api/v1/views/quiet/rows?limit=100");
    assert.equal(current.reset, true);
    const want = current.rows.map((r) => [r.region, String(r.n)]).sort((a, b) => a[0] < b[0] ? -1 : 1);
    const last = await page.$$eval('[data-view="quiet"] tbody tr', (trs) => trs.map((tr) => [tr.children[1].textContent, tr.children[2].textContent]));
    assert.deepEqual(last, want);
    assert.ok(removed.every((r) => !want.some(([x]) => x === r)), "removed rows stay removed");
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-updating.png"), fullPage: true });
    assert.deepEqual(errors, [], "no script errors on the page");
    console.log(`screenshot: ${join(ARTIFACTS, "dashboard-updating.png")}; removed: ${removed.join(", ")}; current: ${JSON.stringify(want)}`);
  } finally {
    await browser.close();
    await stopWeir(weir);
  }
});

// The headline tiles against the status figures over REST, once every source has ended:
// a file source with malformed lines (skipped, counted as bad rows) and a bounded
// generator, an updating view and a windowed view.
test("the headline tiles show the sources' and views' totals and the error rate", { timeout: 120000 }, async () => {
  const input = join(mkdtempSync(join(tmpdir(), "weir-tiles-")), "ev.jsonl");
  const lines = [];
  for (let i = 0; i < 60; i++) {
    lines.push(JSON.stringify({ ts: `2024-01-01T00:00:${String(i).padStart(2, "0")}Z`, region: ["a", "b", "c"][i % 3], speed: i }));
    if (i % 12 === 5) lines.push("{not json");
  }
  writeFileSync(input, lines.join("\n") + "\n");
  const { port, weir, browser } = await launch(`
CREATE SOURCE ev (ts TIMESTAMP NOT NULL, region TEXT, speed DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'file', path = '${input}', format = 'json', 'bad.records' = 'skip');
CREATE SOURCE dl (event_id VARCHAR, ts TIMESTAMP, region VARCHAR, WATERMARK FOR ts AS ts)
  WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '100', rows = '300',
        seed = '9', start = '2024-01-01T00:00:00Z');
CREATE MATERIALIZED VIEW speed_by_region AS SELECT region, count(*) AS n, sum(speed) AS s FROM ev GROUP BY region;
CREATE MATERIALIZED VIEW per_second AS
  SELECT window_start, window_end, count(*) AS n FROM TUMBLE(dl, ts, INTERVAL '1' SECOND) GROUP BY window_start, window_end;
`);
  const api = async (path) => (await fetch(`http://127.0.0.1:${port}${path}`)).json();
  try {
    const { page, errors } = await openDashboard(browser, port, weir);
    await until("both sources to finish", async () =>
      (await api("/api/v1/sources")).sources.every((s) => s.status === "finished"), 60000);
    const tiles = () => page.evaluate(() => Object.fromEntries([...document.querySelectorAll("#tiles .tile")]
      .map((t) => [t.id.replace("tile-", ""), { ...t.dataset, text: t.querySelector(".value").textContent }])));
    // The figures over REST once nothing moves: the tiles show the same (the status stream
    // pushes them every second).
    let want;
    await until("the tiles to show the REST figures", async () => {
      const [{ sources }, { views }] = await Promise.all([api("/api/v1/sources"), api("/api/v1/views")]);
      const sum = (list, f) => list.reduce((a, o) => a + o.figures[f], 0);
      const accepted = sum(sources, "rows_in");
      const bad = sum(sources, "bad_rows");
      want = { "events-per-sec": sum(sources, "rows_per_sec"), "events-accepted": accepted,
        "rows-emitted": sum(views, "rows_out"), "error-rate": bad / (accepted + bad), bad, total: accepted + bad };
      const t = await tiles();
      return ["events-per-sec", "events-accepted", "rows-emitted", "error-rate"].every((k) => t[k].value !== "" && Number(t[k].value) === want[k]) &&
        Number(t["error-rate"].bad) === bad && Number(t["error-rate"].total) === accepted + bad;
    }, 30000);
    const t = await tiles();
    // And the figures are what the inputs hold: 60 good lines and 5 malformed ones, 300
    // generated rows.
    assert.equal(want["events-accepted"], 360);
    assert.equal(want.bad, 5);
    assert.equal(Number(t["error-rate"].value), 5 / 365);
    assert.equal(t["error-rate"].text, `${(5 / 365 * 100).toFixed(2)} %`);
    assert.equal(t["events-accepted"].text, (360).toLocaleString());
    assert.ok(want["rows-emitted"] > 0, `rows emitted: ${want["rows-emitted"]}`);
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-tiles.png"), fullPage: true });
    assert.deepEqual(errors, [], "no script errors on the page");
    console.log(`screenshot: ${join(ARTIFACTS, "dashboard-tiles.png")}; tiles: ${JSON.stringify(t)}`);
  } finally {
    await browser.close();
    await stopWeir(weir);
  }
});

// The stock page over a filtered subscription: bounded ticks (3000 at 200/s, about 15 s),
// per-second OHLC windows with early results every 200 ms, as the demo's symbol_stats.
const STOCKS_SQL = `
CREATE SOURCE ticks (symbol VARCHAR NOT NULL, price DOUBLE, volume BIGINT, ts TIMESTAMP NOT NULL,
  WATERMARK FOR ts AS ts - INTERVAL '200' MILLISECOND)
  WITH (connector = 'generator', kind = 'ticks', 'rows.per.second' = '200', rows = '3000', seed = '11');
CREATE MATERIALIZED VIEW symbol_stats AS
  SELECT window_start, window_end, symbol,
         first_value(price ORDER BY ts) AS open, max(price) AS high, min(price) AS low,
         last_value(price ORDER BY ts) AS close, sum(volume) AS volume, count(*) AS trades
  FROM TUMBLE(ticks, ts, INTERVAL '1' SECOND)
  GROUP BY window_start, window_end, symbol
  EMIT EVERY INTERVAL '200' MILLISECOND;
`;

// What a card should show for `symbol`, from the view's rows over REST: the newest row of
// each window (key), the latest window's close and its change against the window before.
function expectedQuote(rows, seqs, symbol) {
  const byWindow = new Map();
  rows.forEach((r, i) => { if (r.symbol === symbol) byWindow.set(r.window_start, { seq: seqs[i], row: r }); });
  const list = [...byWindow.values()].sort((a, b) => Date.parse(a.row.window_start) - Date.parse(b.row.window_start));
  const latest = list[list.length - 1];
  const prev = list.length > 1 ? list[list.length - 2].row.close : latest.row.open;
  return { seq: latest.seq, price: latest.row.close, change: latest.row.close - prev };
}

test("the stock page follows a chosen set of symbols over a filtered subscription", { timeout: 180000 }, async () => {
  const { port, weir, browser } = await launch(STOCKS_SQL);
  const api = async (path) => (await fetch(`http://127.0.0.1:${port}${path}`)).json();
  try {
    await waitHealthy(port, weir);
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    // Every filtered subscription the page opens on the view (the pipeline page's card of
    // the view holds an unfiltered one), with the messages it sends and gets.
    const sockets = [];
    page.on("websocket", (ws) => {
      if (!ws.url().includes("/api/v1/views/symbol_stats/subscribe?") || !ws.url().includes("key.symbol=")) return;
      const s = { url: new URL(ws.url()), sent: [], got: [] };
      sockets.push(s);
      ws.on("framesent", (f) => s.sent.push(JSON.parse(f.payload)));
      ws.on("framereceived", (f) => s.got.push(JSON.parse(f.payload)));
    });
    await page.goto(`http://127.0.0.1:${port}/#/stocks?symbols=AAPL,MSFT`);
    const section = '#stocks[data-view="symbol_stats"]';
    const cards = () => page.$$eval("#stock-cards .stock", (cs) => cs.map((c) => ({ ...c.dataset, classes: c.className })));
    const settled = (set) => page.waitForSelector(`${section}[data-followed="${set}"][data-pending="0"]`, { timeout: 30000 });

    // The set from the address: a filtered subscription of AAPL and MSFT, a card for each
    // with a price, and only their rows arrive.
    await settled("AAPL,MSFT");
    await page.waitForFunction(() => [...document.querySelectorAll("#stock-cards .stock")].filter((c) => c.dataset.price).length === 2, null, { timeout: 30000 });
    assert.deepEqual((await cards()).map((c) => c.symbol), ["AAPL", "MSFT"]);
    assert.deepEqual(sockets[0].url.searchParams.getAll("key.symbol"), ["AAPL", "MSFT"], String(sockets[0].url));
    for (const c of await cards()) {
      assert.ok(Number.isFinite(Number(c.price)), `price of ${c.symbol}: ${c.price}`);
      assert.match(c.classes, new RegExp(`\\b${c.direction}\\b`));
      assert.equal(c.direction, Number(c.change) > 0 ? "up" : Number(c.change) < 0 ? "down" : "flat");
    }
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-stocks.png"), fullPage: true });

    // Change the set with the picker (unfollow MSFT, follow NVDA and TSLA): subscribe
    // messages on the same socket, each answered by a snapshot of the new set.
    await page.waitForSelector('#symbol-list input[data-symbol="NVDA"]', { timeout: 30000 });
    await page.click('#symbol-list input[data-symbol="MSFT"]');
    await page.click('#symbol-list input[data-symbol="NVDA"]');
    await page.click('#symbol-list input[data-symbol="TSLA"]');
    await settled("AAPL,NVDA,TSLA");
    assert.equal(sockets.length, 1, "the set changed without reconnecting");
    const asked = sockets[0].sent.filter((m) => m.type === "subscribe").map((m) => m.keys.symbol);
    assert.deepEqual(asked, [["AAPL"], ["AAPL", "NVDA"], ["AAPL", "NVDA", "TSLA"]]);
    assert.equal(new URL(page.url()).hash, "#/stocks?symbols=AAPL,NVDA,TSLA");

    // A refused subscribe message (no such column): the page says so and keeps its set.
    await page.evaluate(() => {
      const s = window.weir.stocks;
      s.socket.ws.send(JSON.stringify({ type: "subscribe", keys: { no_such_column: ["x"] } }));
      s.pending.push(s.followed);
    });
    await page.waitForFunction(() => document.getElementById("stocks-error").textContent.includes("refused"), null, { timeout: 30000 });
    await settled("AAPL,NVDA,TSLA");
    assert.ok(sockets[0].got.some((m) => m.type === "rejected" && m.message), "a rejected message");

    // A dropped socket: the page reconnects with the same filter and resumes after the
    // last seq it has (no snapshot; only rows after it).
    const since = await page.evaluate(() => { const s = window.weir.stocks; s.socket.ws.close(); return s.lastSeq; });
    await until("the stock page to reconnect", async () => sockets.length === 2, 30000);
    await page.waitForSelector('#stocks[data-state="connected"]', { timeout: 30000 });
    assert.equal(sockets[1].url.searchParams.get("since_seq"), String(since));
    assert.deepEqual(sockets[1].url.searchParams.getAll("key.symbol"), ["AAPL", "NVDA", "TSLA"]);

    // The source ends and the windows close: each card shows exactly what the view's
    // rows over REST give for its symbol, and the page got rows of no other symbol.
    await until("the ticks to end", async () => (await api("/api/v1/sources/ticks")).status === "finished", 60000);
    let seen = -1;
    await until("the view to close its windows and stop emitting", async () => {
      const v = await api("/api/v1/views/symbol_stats");
      const done = v.figures.open_windows === 0 && v.last_seq === seen;
      seen = v.last_seq;
      return done;
    }, 30000);
    const rest = await api("/api/v1/views/symbol_stats/rows?limit=10000");
    const seqs = rest.rows.map((_, i) => rest.first_seq + i);
    assert.equal(rest.last_seq, seqs[seqs.length - 1], "every row retained");
    for (const sym of ["AAPL", "NVDA", "TSLA"]) {
      const want = expectedQuote(rest.rows, seqs, sym);
      await page.waitForSelector(`#stock-cards .stock[data-symbol="${sym}"][data-seq="${want.seq}"]`, { timeout: 30000 });
      const card = (await cards()).find((c) => c.symbol === sym);
      assert.equal(Number(card.price), want.price, `${sym} price`);
      assert.equal(Number(card.change), want.change, `${sym} change`);
      assert.equal(card.direction, want.change > 0 ? "up" : want.change < 0 ? "down" : "flat", `${sym} colour`);
    }
    assert.deepEqual((await cards()).map((c) => c.symbol), ["AAPL", "NVDA", "TSLA"]);
    // Only the followed symbols arrived: AAPL and MSFT until the snapshots of the new
    // sets, then those sets' (and after the reconnect, the last set's).
    const got = sockets.flatMap((s) => s.got).filter((m) => m.rows);
    const rowSymbols = got.flatMap((m) => m.rows.map((r) => r.symbol));
    assert.ok(rowSymbols.length > 0);
    assert.ok(rowSymbols.every((s) => ["AAPL", "MSFT", "NVDA", "TSLA"].includes(s)), `symbols: ${[...new Set(rowSymbols)]}`);
    const lastSnapshot = got.map((m) => m.type).lastIndexOf("snapshot");
    const after = got.slice(lastSnapshot).flatMap((m) => m.rows.map((r) => r.symbol));
    assert.ok(after.every((s) => ["AAPL", "NVDA", "TSLA"].includes(s)), `after the last set: ${[...new Set(after)]}`);
    for (const m of got) assert.equal(m.seqs.length, m.rows.length, "each row with its seq");
    assert.ok(sockets[1].got.every((m) => m.type === "rows" && m.seqs.every((q) => q > since)),
      `resumed after seq ${since}: ${JSON.stringify(sockets[1].got.map((m) => [m.type, m.seqs[0]]))}`);
    assert.equal(await page.$eval("#stocks", (e) => e.dataset.foreign), "0");
    await page.screenshot({ path: join(ARTIFACTS, "dashboard-stocks-changed.png"), fullPage: true });

    // The pipeline page's card of the same view (EMIT EVERY): one row per window and
    // symbol in its table, and one chart point per window.
    await page.goto(`http://127.0.0.1:${port}/#/`);
    await page.waitForSelector('[data-view="symbol_stats"] .chart canvas', { timeout: 30000 });
    const windows = new Set(rest.rows.map((r) => r.window_start)).size;
    await page.waitForFunction((n) => Number(document.querySelector('[data-view="symbol_stats"] .chart').dataset.points) === n, windows, { timeout: 30000 });
    const table = await page.$$eval('[data-view="symbol_stats"] .rows tbody tr', (trs) => trs.map((tr) => [tr.children[1].textContent, tr.children[3].textContent]));
    assert.equal(new Set(table.map((r) => r.join())).size, table.length, "one row per window and symbol");
    assert.deepEqual(errors, [], "no script errors on the page");
    console.log(`screenshots: ${join(ARTIFACTS, "dashboard-stocks.png")}, ${join(ARTIFACTS, "dashboard-stocks-changed.png")}; ${windows} windows`);
  } finally {
    await browser.close();
    await stopWeir(weir);
  }
});
