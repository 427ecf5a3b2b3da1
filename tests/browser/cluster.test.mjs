// The dashboard's cluster section in headless Chromium, against a real `weir run` that is a
// cluster member (docs/cluster.md) on the real Kafka broker: the section appears, and shows
// for each of the cluster's consumer groups the members and partitions that
// GET /api/v1/cluster gives, and this member's own figures. A process running alone keeps
// the section hidden (dashboard.test.mjs checks that).
//
// Needs what dashboard.test.mjs needs, and a broker: WEIR_KAFKA_BOOTSTRAP (scripts/test.sh
// starts one with scripts/kafka.sh). Without it the test is skipped, except under CI=true,
// where it fails.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ARTIFACTS, launch, openDashboard, stopWeir } from "./lib.mjs";

const BOOTSTRAP = process.env.WEIR_KAFKA_BOOTSTRAP;
const KAFKA_SH = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "scripts", "kafka.sh");
const PARTITIONS = 4;

if (!BOOTSTRAP && process.env.CI === "true") {
  throw new Error("WEIR_KAFKA_BOOTSTRAP is not set: CI runs the cluster page test against a real broker");
}

test("a cluster member's dashboard shows the cluster", { timeout: 180000, skip: !BOOTSTRAP && "no broker (WEIR_KAFKA_BOOTSTRAP unset)" }, async () => {
  const topic = `weir-dash-cluster-${process.pid}-${Date.now()}`;
  execFileSync("bash", [KAFKA_SH, "topics", "--bootstrap-server", BOOTSTRAP, "--create", "--topic", topic,
    "--partitions", String(PARTITIONS), "--replication-factor", "1"], { stdio: "inherit" });
  const sql = `
CREATE SOURCE dl (ts TIMESTAMP NOT NULL, region VARCHAR, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
  WITH (connector = 'kafka', topic = '${topic}', format = 'json');
CREATE MATERIALIZED VIEW per_region AS
  SELECT window_start, window_end, region, count(*) AS n
  FROM TUMBLE(dl, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, region;
CREATE SINK out FROM per_region WITH (connector = 'blackhole');
`;
  const launched = await launch(sql, (dir) => {
    const config = join(dir, "weir.toml");
    writeFileSync(config, `[kafka]\nbootstrap_servers = "${BOOTSTRAP}"\n[kafka.embedded]\nenabled = false\n` +
      `[engine]\nkey_partitions = ${PARTITIONS}\n` +
      `[cluster]\ngroup = "${topic}"\nmember = "dash-a"\nsession_timeout = "6s"\nstate_dir = "${join(dir, "state")}"\n`);
    return { args: ["--config", config] };
  });
  const { port, weir, browser } = launched;
  try {
    const { page, errors } = await openDashboard(browser, port, weir);
    await page.waitForSelector("#cluster[data-state=\"member\"]:not([hidden])", { timeout: 30000 });
    // The member owns every partition of both groups once their joins are done.
    const all = Array.from({ length: PARTITIONS }, (_, i) => i).join(", ");
    const owned = (group) => page.$eval(`#cluster-table tr[data-group="${group}"][data-member="dash-a"] td.partitions`,
      (td) => td.textContent).catch(() => null);
    const stage1 = `weir.${topic}.dl.stage1`;
    const stage2 = `weir.${topic}.per_region.stage2`;
    const start = Date.now();
    while ((await owned(stage1)) !== all || (await owned(stage2)) !== all) {
      if (Date.now() - start > 60000) {
        throw new Error(`the cluster section does not show dash-a owning ${all} in both groups:\n` +
          await page.$eval("#cluster", (e) => e.innerText) + `\n${weir.log}`);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
    // What the page shows is what the API says.
    const api = await (await fetch(`http://127.0.0.1:${port}/api/v1/cluster`)).json();
    const shown = await page.$$eval("#cluster-table tbody tr", (trs) => trs.map((tr) => [tr.dataset.group, tr.dataset.member,
      tr.querySelector("td.partitions").textContent]));
    const said = [...api.groups.stage1, ...api.groups.stage2].flatMap((g) => g.members.map((m) => [g.group, m.member, m.partitions.join(", ")]));
    assert.deepEqual(shown, said);
    assert.deepEqual(said.map((r) => r[0]), [stage1, stage2]);
    assert.equal(api.member.id, "dash-a");
    assert.deepEqual(api.member.views.per_region.key_partitions, [0, 1, 2, 3]);
    const figures = await page.$eval('#cluster-member [data-member-view="per_region"]', (e) => e.textContent);
    assert.match(figures, /^per_region: 0 records in · 0 rows out · \d+ rebalances · 0 fenced · /);
    assert.match(await page.$eval("#cluster-name", (e) => e.textContent), /this member: dash-a/);
    await page.screenshot({ path: join(ARTIFACTS, "cluster.png"), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await stopWeir(weir);
  }
});
