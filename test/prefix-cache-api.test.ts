// The prefix cache through the API: usage.prompt_tokens_details.cached_tokens on every response
// kind, cache_salt and cache, GET /v1/cache, the prefix-cache metrics, admission taking cached
// bytes back before a request would wait, and the router pricing only the uncached prompt.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import request from "supertest";
import { Admission } from "../server/policy/admission.ts";
import { CostModel } from "../server/policy/cost-model.ts";
import { route } from "../server/policy/latency-router.ts";
import type { Engine } from "../server/engine/types.ts";
import { createApp } from "../server/api/app.ts";
import { loadTestEngine, serveTestModel, writeTestCheckpoint, WsClient, metricValue, parseSse, scrape, type RunningApp } from "./helpers/server-fixture.ts";

let engine: Engine;
let running: RunningApp;
serveTestModel(17, {}, (s) => ({ engine, running } = s));

const SYSTEM = "You are a careful assistant. Answer in one short sentence, and never more than that. ";
const post = (path: string, body: object) => request(running.colm.app).post(path).send(body);
const complete = (body: object) => post("/v1/completions", { model: "tiny", max_tokens: 6, temperature: 0, logprobs: 1, ...body });

describe("prefix cache over the API", () => {
  test("a repeated prompt reports cached_tokens and gets the same completion and logprobs", async () => {
    const prompt = SYSTEM + "What is a cache?";
    const off = await complete({ prompt, cache: false });
    assert.equal(off.status, 200);
    assert.deepEqual(off.body.usage.prompt_tokens_details, { cached_tokens: 0 });
    const first = await complete({ prompt });
    const second = await complete({ prompt });
    assert.equal(first.body.usage.prompt_tokens_details.cached_tokens, 0, "cache: false stored nothing");
    const cached = second.body.usage.prompt_tokens_details.cached_tokens;
    assert.equal(cached, Math.floor((second.body.usage.prompt_tokens - 1) / 16) * 16, "whole 16-token blocks, never the last prompt token");
    assert.ok(cached > 0);
    for (const r of [first, second]) {
      assert.equal(r.body.choices[0].text, off.body.choices[0].text);
      r.body.choices[0].logprobs.token_logprobs.forEach((lp: number, i: number) => assert.ok(Math.abs(lp - off.body.choices[0].logprobs.token_logprobs[i]) < 1e-5));
    }
  });

  test("chat turn 2 hits turn 1's prefix; streamed usage carries cached_tokens; salts isolate", async () => {
    const messages = [{ role: "system", content: SYSTEM }, { role: "user", content: "Name a colour." }];
    const turn1 = await post("/v1/chat/completions", { model: "tiny", messages, max_tokens: 8, temperature: 0, cache_salt: "tenant-1" });
    assert.equal(turn1.status, 200);
    const turn2 = [...messages, turn1.body.choices[0].message, { role: "user", content: "Another one." }];
    const body = { model: "tiny", messages: turn2, max_tokens: 4, temperature: 0, stream: true, stream_options: { include_usage: true } };
    const other = parseSse((await post("/v1/chat/completions", { ...body, cache_salt: "tenant-2" })).text);
    const same = parseSse((await post("/v1/chat/completions", { ...body, cache_salt: "tenant-1" })).text);
    const usageOf = (events: unknown[]) => (events.find((e) => (e as { usage?: unknown }).usage) as { usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } } }).usage;
    assert.equal(usageOf(other).prompt_tokens_details.cached_tokens, 0, "another tenant's salt shares nothing");
    const turn1Blocks = Math.floor(turn1.body.usage.prompt_tokens / 16) * 16;
    assert.ok(usageOf(same).prompt_tokens_details.cached_tokens >= turn1Blocks, `turn 1's prompt is reused: ${JSON.stringify(usageOf(same))}`);
  });

  test("WebSocket done messages carry cached_tokens", async () => {
    const ws = await WsClient.open(running.wsUrl);
    try {
      const gen = { type: "generate", model: "tiny", prompt: "Over the socket: " + SYSTEM, max_tokens: 3, temperature: 0 };
      ws.send({ ...gen, id: 1 });
      const a = await ws.waitFor((m) => m.type === "done" && m.id === 1);
      ws.send({ ...gen, id: 2 });
      const b = await ws.waitFor((m) => m.type === "done" && m.id === 2);
      assert.equal(a.usage.prompt_tokens_details.cached_tokens, 0);
      assert.ok(b.usage.prompt_tokens_details.cached_tokens > 0);
    } finally {
      await ws.close();
    }
  });

  test("bad cache fields are 400s naming the field", async () => {
    for (const [body, param] of [[{ cache_salt: "" }, "cache_salt"], [{ cache_salt: 7 }, "cache_salt"], [{ cache: "no" }, "cache"]] as const) {
      const res = await complete({ prompt: "x", ...body });
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.equal(res.body.error.param, param);
    }
  });

  test("GET /v1/cache and the prefix-cache metrics follow the traffic", async () => {
    const before = await scrape(running.url);
    const prompt = SYSTEM + "Metrics, please.";
    await complete({ prompt });
    await complete({ prompt });
    const after = await scrape(running.url);
    const grew = (name: string) => metricValue(after, name) - metricValue(before, name);
    assert.ok(grew("colm_prefix_cache_query_tokens_total") > 0);
    assert.ok(grew("colm_prefix_cache_hit_tokens_total") >= 16);
    assert.ok(metricValue(after, "colm_prefix_cache_bytes") > 0);
    const v = (await request(running.colm.app).get("/v1/cache")).body;
    assert.equal(v.object, "prefix_cache");
    assert.equal(v.enabled, true);
    assert.equal(v.bytes, v.blocks * v.block_tokens * v.bytes_per_token);
    assert.equal(v.bytes_per_token, engine.info.kvBytesPerToken);
    assert.ok(v.hit_rate > 0 && v.hit_rate < 1);
    assert.equal(v.held_blocks, 0, "nothing running holds a block");
  });
});

describe("admission and routing with a prefix cache", () => {
  test("cached bytes count against the KV budget but are evicted before a request would wait", async () => {
    let held = 600;
    const cache = { get bytes() { return held; }, evict: (n: number) => { const freed = Math.min(n, held); held -= freed; return freed; } };
    const admission = new Admission({ maxRunning: 4, maxWaiting: 4, kvBudgetBytes: 1000, cache: () => cache });
    const releaseA = await admission.acquire(1, undefined, 300);
    assert.equal(held, 600, "fits beside the cache: nothing evicted");
    assert.equal(admission.kvHeadroomBytes, 700);
    const releaseB = await admission.acquire(1, undefined, 500);
    assert.equal(held, 200, "exactly what B needed was evicted");
    const waiting = admission.acquire(1, undefined, 300);
    assert.equal(admission.waiting, 1, "a request the budget cannot hold without the cache waits as before");
    releaseA();
    (await waiting)();
    releaseB();
  });

  test("on a real engine: the cache holds only what reservations leave, and a request that fits the budget is admitted at once by evicting it", async () => {
    const ckpt = await writeTestCheckpoint("tiny", 23);
    const real = await loadTestEngine(ckpt.dir);
    try {
      const perToken = real.info.kvBytesPerToken;
      const budget = 200 * perToken;
      const colm = createApp(real, { kvBudgetBytes: budget, log: () => undefined });
      const cache = real.prefixCache!;
      const ids = (n: number, from: number) => Array.from({ length: n }, (_, i) => 32 + ((from + i * 7) % 90));
      const first = await request(colm.app).post("/v1/completions").send({ model: "tiny", prompt: ids(100, 1), max_tokens: 4, temperature: 0 });
      assert.equal(first.status, 200);
      assert.equal(cache.bytes, 96 * perToken, "6 blocks: all that the 104 reserved tokens left of 200");
      let worst = 0;
      const watch = setInterval(() => (worst = Math.max(worst, cache.bytes + colm.admission.kvReservedBytes)), 1);
      const big = request(colm.app).post("/v1/completions").send({ model: "tiny", prompt: ids(150, 2), max_tokens: 40, temperature: 0 });
      const res = await big;
      clearInterval(watch);
      assert.equal(res.status, 200, "190 tokens fit the 200-token budget once the cache gave its room back");
      assert.ok(worst <= budget, `cache + reservations peaked at ${worst} of ${budget}`);
      assert.ok(cache.stats().evictedBlocks >= 6);
      assert.equal(colm.admission.waiting, 0);
      await colm.close();
    } finally {
      await real.close();
      ckpt.cleanup();
    }
  });

  test("the router gives a cache-hitting request a larger model when its TTFT budget allows", () => {
    const model = new CostModel({ nChains: 4, alpha: 1 });
    for (let k = 1; k <= 4; k++) model.observe({ kind: "decode", rows: 1, tokens: 1, chains: k, ms: 10 * k });
    model.observe({ kind: "prefill", rows: 1, tokens: 1001, chains: 1, ms: 1010 }); // 1 ms per prompt token
    model.observe({ kind: "prefix_copy", rows: 1, tokens: 1000, chains: 1, ms: 10 });
    const ask = { latencyBudget: { ttft_ms: 100 }, promptTokens: 1001, maxTokens: 4 };
    assert.deepEqual([route(ask, model, { running: 0, queued: 0 }).chains, route(ask, model, { running: 0, queued: 0 }).reason], [1, "no_fit"]);
    const hit = route({ ...ask, cachedTokens: 992 }, model, { running: 0, queued: 0 });
    assert.equal(hit.chains, 4);
    assert.ok(Math.abs(hit.predicted!.ttftMs - (8 + 9.92 + 40)) < 1e-9, String(hit.predicted!.ttftMs));
  });
});
