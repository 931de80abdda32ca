// /metrics under Prometheus' own linter (`promtool check metrics`, Debian's `prometheus` package;
// skipped with a message where promtool is not installed), and the three gauges the Gateway API
// Inference Extension's endpoint picker reads: queued requests, running requests, KV-cache
// utilisation as a 0..1 ratio.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { kvUsageRatio } from "../server/api/metrics.ts";
import { metricValue, parsePrometheus, scrape, serveTestModel, waitFor, type RunningApp, type Sample } from "./helpers/server-fixture.ts";

let running: RunningApp;
serveTestModel(21, {}, (s) => ({ running } = s));

const promtool = spawnSync("promtool", ["--version"], { encoding: "utf8" });
const promtoolMissing = promtool.error ? "promtool is not installed (apt-get install prometheus; .ci/run installs it)" : false;

/** Serve a few requests of every kind so that the labelled series (histograms by chain count) exist. */
async function exercise(url: string): Promise<void> {
  const post = (path: string, body: object) =>
    fetch(`${url}${path}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }).then((r) => r.text());
  await post("/v1/completions", { model: "tiny:c2", prompt: "lint me", max_tokens: 4 });
  await post("/v1/completions", { model: "tiny", prompt: "budget", max_tokens: 4, latency_budget: { ttft_ms: 0.001 } });
  await post("/v1/chat/completions", { model: "tiny", chains: 3, messages: [{ role: "user", content: "x" }], max_tokens: 3, stream: true });
  await post("/v1/completions", { model: "tiny", prompt: 5 }); // a 400
}

function typeOf(text: string, name: string): string | undefined {
  return new RegExp(`^# TYPE ${name} (\\w+)$`, "m").exec(text)?.[1];
}

describe("/metrics for Prometheus and the inference gateway", () => {
  test("promtool check metrics finds nothing to complain about in a real scrape", { skip: promtoolMissing }, async () => {
    await exercise(running.url);
    const text = await (await fetch(`${running.url}/metrics`)).text();
    assert.match(text, /colm_time_to_first_token_seconds_bucket\{/);
    const lint = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
    assert.equal(lint.status, 0, `promtool check metrics:\n${lint.stdout}${lint.stderr}`);
    assert.equal((lint.stdout + lint.stderr).trim(), "");
  });

  test("the endpoint picker's three gauges: queued, running, KV usage ratio in [0, 1]", async () => {
    const text = await (await fetch(`${running.url}/metrics`)).text();
    for (const name of ["colm_requests_waiting", "colm_requests_running", "colm_kv_cache_usage_ratio"]) assert.equal(typeOf(text, name), "gauge", name);
    assert.match(text, /^# HELP colm_kv_cache_usage_ratio Fraction \(0\.\.1\)/m);
    // The gauges misnamed by prom-client's defaults are gone, their by-type twins stay.
    assert.equal(typeOf(text, "nodejs_active_handles_total"), undefined);
    assert.equal(typeOf(text, "nodejs_active_handles"), "gauge");
    assert.equal(metricValue(parsePrometheus(text), "colm_kv_cache_usage_ratio"), 0);
  });

  test("the KV usage ratio rises while generations hold cache and returns to 0 after", async () => {
    const streams = Array.from({ length: 4 }, (_, i) =>
      fetch(`${running.url}/v1/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: "tiny", prompt: `hold the cache ${i}`, max_tokens: 64, stream: true }),
      }).then((r) => r.text()),
    );
    let settled = false;
    const all = Promise.all(streams).finally(() => (settled = true));
    const seen: Sample[][] = [];
    while (!settled) seen.push(await scrape(running.url));
    await all;
    const ratios = seen.map((m) => metricValue(m, "colm_kv_cache_usage_ratio"));
    assert.ok(ratios.every((r) => r >= 0 && r <= 1), `ratios out of [0, 1]: ${ratios}`);
    assert.ok(ratios.some((r) => r > 0), `no scrape saw KV in use (${seen.length} scrapes)`);
    const capacity = metricValue(seen[0], "colm_kv_cache_bytes_capacity");
    assert.ok(capacity > 0);
    await waitFor(async () => metricValue(await scrape(running.url), "colm_kv_cache_usage_ratio") === 0, 5000, "KV usage back to 0");
  });

  test("kvUsageRatio: in use over capacity, clamped, 0 without capacity", () => {
    assert.equal(kvUsageRatio(25, 100), 0.25);
    assert.equal(kvUsageRatio(0, 100), 0);
    assert.equal(kvUsageRatio(150, 100), 1);
    assert.equal(kvUsageRatio(10, 0), 0);
    assert.equal(kvUsageRatio(10, Infinity), 0);
  });
});
