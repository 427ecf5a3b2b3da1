// What the browser tests share: starting and stopping `weir run`, headless Chromium, and
// waiting on conditions.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir, homedir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const target = process.env.CARGO_TARGET_DIR || join(homedir(), ".cache", "weir-target");
export const WEIR = process.env.WEIR_BIN || join(target, "debug", "weir");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const ARTIFACTS = process.env.WEIR_ARTIFACTS_DIR || join(target, "browser-artifacts");

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

// `extra`: more `weir run` arguments (before the queries) and environment.
export function startWeir(dir, port, extra = {}) {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith("WEIR__")) delete env[k];
  Object.assign(env, extra.env || {});
  const child = spawn(WEIR, ["run", ...(extra.args || []), "--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, "data"),
    "--progress-interval", "0s", join(dir, "queries")], { env, stdio: ["ignore", "pipe", "pipe"] });
  child.log = "";
  child.stdout.on("data", (d) => { child.log += d; });
  child.stderr.on("data", (d) => { child.log += d; });
  return child;
}

export async function waitHealthy(port, child, ms = 60000) {
  const start = Date.now();
  while (Date.now() - start < ms) {
    if (child.exitCode !== null) throw new Error(`weir exited (${child.exitCode}):\n${child.log}`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.ok) return;
    } catch (_) { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`weir did not answer /health within ${ms} ms:\n${child.log}`);
}

// Resolves once `cond` (async) holds, asking every 200 ms; fails after `ms`.
export async function until(what, cond, ms) {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > ms) throw new Error(`no ${what} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export function stopWeir(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill("SIGTERM");
  });
}

// A `weir run` of `sql` (its one SQL file) on a free port, and headless Chromium.
export async function launch(sql, extra = {}) {
  assert.ok(existsSync(WEIR), `no weir binary at ${WEIR} (build it, or set WEIR_BIN)`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), "weir-browser-"));
  mkdirSync(join(dir, "queries"));
  writeFileSync(join(dir, "queries", "pipeline.sql"), sql);
  const port = await freePort();
  const weir = startWeir(dir, port, typeof extra === "function" ? extra(dir) : extra);
  try {
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    return { dir, port, weir, browser };
  } catch (e) {
    await stopWeir(weir);
    throw e;
  }
}

// The dashboard in a new page once the server answers, with the script errors it has.
export async function openDashboard(browser, port, weir) {
  await waitHealthy(port, weir);
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`http://127.0.0.1:${port}/`);
  return { page, errors };
}

