// /metrics: Prometheus text that parses, counters that move with traffic, and client disconnects
// that stop generation and bring the KV bytes gauge back to idle.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import request from "supertest";
import type { Engine } from "../server/engine/types.ts";
import { serveTestModel, WsClient, metricValue, parsePrometheus, parseSse, scrape, waitFor, type RunningApp, type Sample } from "./helpers/server-fixture.ts";

let engine: Engine;
let running: RunningApp;
serveTestModel(9, {}, (s) => ({ engine, running } = s));

const delta = (before: Sample[], after: Sample[], name: string, labels: Record<string, string> = {}) =>
  metricValue(after, name, labels) - metricValue(before, name, labels);

/** Start a streaming completion with fetch; resolves after the first chunk arrived. */
async function startStream(body: object) {
  const ac = new AbortController();
  const res = await fetch(`${running.url}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: ac.signal,
  });
  const reader = res.body!.getReader();
  const first = await reader.read();
  return { ac, reader, first: new TextDecoder().decode(first.value) };
}

describe("/metrics", () => {
  test("parses as Prometheus text with default process metrics and every colm metric", async () => {
    const res = await request(running.colm.app).get("/metrics");
    assert.equal(res.status, 200);
    assert.match(res.headers["content-type"], /^text\/plain; version=0\.0\.4/);
    const samples = parsePrometheus(res.text);
    const names = new Set(samples.map((s) => s.name));
    for (const n of ["process_cpu_user_seconds_total", "process_resident_memory_bytes", "nodejs_heap_size_used_bytes"]) assert.ok(names.has(n), n);
    for (const type of [
      "colm_http_requests_total counter",
      "colm_time_to_first_token_seconds histogram",
      "colm_time_per_output_token_seconds histogram",
      "colm_e2e_request_latency_seconds histogram",
      "colm_prompt_tokens_total counter",
      "colm_generation_tokens_total counter",
      "colm_generations_total counter",
      "colm_requests_running gauge",
      "colm_requests_waiting gauge",
      "colm_kv_cache_bytes_in_use gauge",
      "colm_kv_cache_bytes_capacity gauge",
      "colm_chain_switches_total counter",
      "colm_latency_budget_misses_total counter",
      "colm_prefill_tokens_per_second histogram",
      "colm_ws_connections gauge",
      "colm_model_info gauge",
    ]) {
      assert.ok(res.text.includes(`# TYPE ${type}\n`), type);
    }
    assert.equal(metricValue(samples, "colm_kv_cache_bytes_in_use"), 0);
    assert.equal(metricValue(samples, "colm_kv_cache_bytes_capacity"), 8 * engine.info.maxPosition * engine.info.kvBytesPerToken);
    assert.equal(metricValue(samples, "colm_model_info", { model: "tiny", device: "cpu", n_chains: "4", precision: "f32" }), 1);
  });

  test("counters and histograms move as requests are served, labelled by chain count", async () => {
    const before = await scrape(running.url);
    const ok = await request(running.colm.app).post("/v1/completions").send({ model: "tiny:c2", prompt: "count me", max_tokens: 5 });
    assert.equal(ok.status, 200);
    const chat = await request(running.colm.app)
      .post("/v1/chat/completions")
      .send({ model: "tiny", chains: 3, messages: [{ role: "user", content: "x" }], max_tokens: 3, stream: true });
    assert.equal(chat.status, 200);
    assert.equal((await request(running.colm.app).post("/v1/completions").send({ model: "tiny", prompt: 5 })).status, 400);
    assert.equal((await request(running.colm.app).get("/nowhere")).status, 404);
    const after = await scrape(running.url);
    assert.equal(delta(before, after, "colm_http_requests_total", { route: "/v1/completions", method: "POST", status: "200" }), 1);
    assert.equal(delta(before, after, "colm_http_requests_total", { route: "/v1/chat/completions", method: "POST", status: "200" }), 1);
    assert.equal(delta(before, after, "colm_http_requests_total", { route: "/v1/completions", status: "400" }), 1);
    assert.equal(delta(before, after, "colm_http_requests_total", { route: "unmatched", status: "404" }), 1);
    assert.equal(delta(before, after, "colm_prompt_tokens_total", { chains: "2" }), 8);
    assert.equal(delta(before, after, "colm_generation_tokens_total", { chains: "2" }), 5);
    const chatTokens = delta(before, after, "colm_generation_tokens_total", { chains: "3" });
    assert.ok(chatTokens >= 1 && chatTokens <= 3);
    for (const chains of ["2", "3"]) {
      assert.equal(delta(before, after, "colm_time_to_first_token_seconds_count", { chains }), 1, `ttft ${chains}`);
      assert.equal(delta(before, after, "colm_e2e_request_latency_seconds_count", { chains }), 1, `e2e ${chains}`);
      assert.ok(delta(before, after, "colm_e2e_request_latency_seconds_sum", { chains }) > 0);
    }
    assert.equal(delta(before, after, "colm_time_per_output_token_seconds_count", { chains: "2" }), 1);
    assert.equal(delta(before, after, "colm_generations_total", { finish_reason: "length" }) + delta(before, after, "colm_generations_total", { finish_reason: "stop" }), 2);
    assert.equal(delta(before, after, "colm_prefill_tokens_per_second_count"), 2);
    // the /metrics scrape itself is counted
    assert.ok(metricValue(after, "colm_http_requests_total", { route: "/metrics" }) >= 1);
  });

  test("chain switches and latency-budget misses are counted", async () => {
    const before = await scrape(running.url);
    const client = await WsClient.open(running.wsUrl);
    client.send({ type: "generate", id: "s", model: "tiny", prompt: "switch", max_tokens: 200 });
    await client.waitFor((m) => m.type === "token" && m.index >= 1);
    client.send({ type: "switch", id: "s", chains: 2 });
    const sw = await client.waitFor((m) => m.type === "switched");
    await client.waitFor((m) => m.type === "done");
    await client.close();
    const miss = await request(running.colm.app)
      .post("/v1/completions")
      .send({ model: "tiny", prompt: "hurry", max_tokens: 4, latency_budget: { ttft_ms: 0.0001, total_ms: 0.0001, tpot_ms: 60_000 } });
    assert.equal(miss.status, 200);
    const after = await scrape(running.url);
    if (sw.at_index !== null) assert.equal(delta(before, after, "colm_chain_switches_total", { from: "4", to: "2" }), 1);
    assert.equal(delta(before, after, "colm_latency_budget_misses_total", { budget: "ttft" }), 1);
    assert.equal(delta(before, after, "colm_latency_budget_misses_total", { budget: "total" }), 1);
    assert.equal(delta(before, after, "colm_latency_budget_misses_total", { budget: "tpot" }), 0);
  });

  test("running gauge shows a live generation; client disconnect mid-stream stops it and KV returns to idle", async () => {
    const idle = metricValue(await scrape(running.url), "colm_kv_cache_bytes_in_use");
    assert.equal(idle, 0);
    const before = await scrape(running.url);
    const s = await startStream({ model: "tiny", prompt: "disconnect", max_tokens: 240, stream: true });
    assert.ok(parseSse(s.first).length >= 1);
    const during = await scrape(running.url);
    // the stream may still be running or just ended; if running, KV is held
    if (metricValue(during, "colm_requests_running") === 1) assert.ok(metricValue(during, "colm_kv_cache_bytes_in_use") > 0);
    s.ac.abort();
    await waitFor(async () => {
      const m = await scrape(running.url);
      return metricValue(m, "colm_kv_cache_bytes_in_use") === idle && metricValue(m, "colm_requests_running") === 0;
    }, 5000, "KV bytes back to idle");
    const after = await scrape(running.url);
    assert.equal(delta(before, after, "colm_generations_total", { finish_reason: "cancelled" }), 1);
    const generated = delta(before, after, "colm_generation_tokens_total");
    assert.ok(generated < 240, `generation stopped early (${generated} tokens)`);
    assert.equal(engine.kvBytesInUse(), 0);
    // nothing keeps generating afterwards
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(delta(after, await scrape(running.url), "colm_generation_tokens_total"), 0);
  });

  test("client disconnect during a non-streaming request cancels it too", async () => {
    const before = await scrape(running.url);
    const ac = new AbortController();
    const p = fetch(`${running.url}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: "tiny", prompt: "going away", max_tokens: 240 }),
      signal: ac.signal,
    }).catch((e: Error) => e);
    await waitFor(() => running.colm.admission.running === 1, 5000, "the request to start");
    ac.abort();
    assert.ok((await p) instanceof Error);
    await waitFor(() => running.colm.admission.running === 0 && engine.kvBytesInUse() === 0, 5000, "cancelled");
    const after = await scrape(running.url);
    const finished = delta(before, after, "colm_generations_total", { finish_reason: "cancelled" }) + delta(before, after, "colm_generations_total", { finish_reason: "length" });
    assert.equal(finished, 1);
  });
});
