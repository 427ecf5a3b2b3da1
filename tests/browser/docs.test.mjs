// The API docs page (/docs) in Debian's headless Chromium against a real `weir run` with a
// read token: without a token the page loads and says it needs one; with ?token= Swagger
// UI shows one operation per route of the OpenAPI document, and "Try it out" on
// GET /api/v1/views (which needs the token) answers 200 with the view. The page asks
// nothing of any other host, and has no script error.

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { ARTIFACTS, launch, stopWeir, waitHealthy } from "./lib.mjs";

const SQL = `
CREATE SOURCE dl (event_id VARCHAR, ts TIMESTAMP, region VARCHAR, status VARCHAR, speed_mbps DOUBLE,
  WATERMARK FOR ts AS ts - INTERVAL '200' MILLISECOND)
  WITH (connector = 'generator', kind = 'downloads', 'rows.per.second' = '10', seed = '3');
CREATE MATERIALIZED VIEW raw AS SELECT event_id, region FROM dl;
`;
const TOKEN = "docs-read-token";

// A new page that records script errors and every request to another host.
async function openPage(browser, port) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("request", (r) => {
    if (!r.url().startsWith(`http://127.0.0.1:${port}/`)) errors.push(`request to ${r.url()}`);
  });
  return { page, errors };
}

test("the API docs page shows every route and tries one", { timeout: 120000 }, async () => {
  const { port, weir, browser } = await launch(SQL, { env: { WEIR__SERVER__READ_TOKENS: TOKEN } });
  try {
    await waitHealthy(port, weir);
    const doc = await (await fetch(`http://127.0.0.1:${port}/api/v1/openapi.json`, {
      headers: { Authorization: `Bearer ${TOKEN}` },
    })).json();
    const operations = Object.values(doc.paths).flatMap((item) => Object.keys(item));

    // No token: the page and Swagger UI load, the document is refused, the page says so.
    const bare = await openPage(browser, port);
    await bare.page.goto(`http://127.0.0.1:${port}/docs`);
    await bare.page.waitForSelector("#token-note:not([hidden])", { timeout: 30000 });
    assert.deepEqual(bare.errors, []);

    // With the token: one operation block per route and method.
    const { page, errors } = await openPage(browser, port);
    await page.goto(`http://127.0.0.1:${port}/docs?token=${TOKEN}`);
    await page.waitForSelector(".opblock", { timeout: 30000 });
    const shown = await page.$$eval(".opblock", (blocks) => blocks.length);
    assert.equal(shown, operations.length, `${shown} operations shown, the document has ${operations.length}`);
    assert.equal(await page.isHidden("#token-note"), true);

    // "Try it out" on GET /api/v1/views, with the token the page sends.
    const views = page.locator(".opblock-get", { has: page.locator('[data-path="/api/v1/views"]') });
    await views.locator(".opblock-summary").first().click();
    await views.locator(".try-out__btn").click();
    await views.locator(".execute").click();
    const answer = views.locator(".live-responses-table tr.response");
    await answer.waitFor({ timeout: 30000 });
    assert.equal((await answer.locator(".response-col_status").textContent()).trim(), "200");
    assert.match(await answer.locator(".response-col_description").textContent(), /"name": "raw"/);
    await page.screenshot({ path: join(ARTIFACTS, "docs.png"), fullPage: false });
    console.log(`screenshot: ${join(ARTIFACTS, "docs.png")}`);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await stopWeir(weir);
  }
});
