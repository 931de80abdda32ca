// Load generator: distributions, percentiles, the loopback guard, CLI parsing, and end-to-end
// runs (SSE and WebSocket) against the real server on a small random checkpoint.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { SeededRng } from "../kernels/rng.ts";
import {
  exponential,
  parseIntDist,
  parseMix,
  pickClass,
  poissonArrivals,
  sampleInt,
  sliceText,
  syntheticIds,
  syntheticText,
} from "../loadtest/arrivals.ts";
import { checkLoopbackUrl, makeSpec, parseCli, runLoad, type LoadOptions, type LoadResult } from "../loadtest/loadgen.ts";
import { requestBody } from "../loadtest/clients.ts";
import { BenchArgs } from "../loadtest/results.ts";
import { describe as describeDist, formatSummary, meetsBudget, percentile, summarize, type RequestRecord } from "../loadtest/stats.ts";
import { loadTestEngine, startApp, writeTestCheckpoint, type RunningApp, type TestCheckpoint } from "./helpers/server-fixture.ts";

describe("distributions", () => {
  test("parseIntDist: fixed and uniform, bad input rejected", () => {
    assert.deepEqual(parseIntDist("128", "x"), { min: 128, max: 128 });
    assert.deepEqual(parseIntDist("64:512", "x"), { min: 64, max: 512 });
    for (const bad of ["", "0", "5:4", "a", "1:2:3", "-3"]) assert.throws(() => parseIntDist(bad, "prompt-tokens"), /--prompt-tokens/);
  });

  test("sampleInt stays in range, covers it, and is reproducible from the seed", () => {
    const a = new SeededRng(3);
    const draws = Array.from({ length: 2000 }, () => sampleInt({ min: 4, max: 9 }, a));
    assert.ok(draws.every((x) => Number.isInteger(x) && x >= 4 && x <= 9));
    assert.deepEqual([...new Set(draws)].sort(), [4, 5, 6, 7, 8, 9]);
    const b = new SeededRng(3);
    assert.deepEqual(Array.from({ length: 2000 }, () => sampleInt({ min: 4, max: 9 }, b)), draws);
    assert.equal(sampleInt({ min: 7, max: 7 }, a), 7);
  });

  test("Poisson arrivals: exponential gaps with mean 1/rate, bounded by count and duration", () => {
    const rng = new SeededRng(11);
    const gaps = Array.from({ length: 20000 }, () => exponential(4, rng));
    const mean = gaps.reduce((s, x) => s + x, 0) / gaps.length;
    assert.ok(Math.abs(mean - 0.25) < 0.01, `mean gap ${mean}`);
    assert.ok(gaps.every((g) => g > 0 && Number.isFinite(g)));
    const byCount = poissonArrivals(100, new SeededRng(1), 50, 1e9);
    assert.equal(byCount.length, 50);
    assert.ok(byCount.every((t, i) => i === 0 || t > byCount[i - 1]));
    const byTime = poissonArrivals(10, new SeededRng(1), 1e9, 20);
    assert.ok(byTime.length > 150 && byTime.length < 250, `${byTime.length} arrivals in 20 s at 10/s`);
    assert.ok(byTime[byTime.length - 1] <= 20);
  });

  test("mix: parsing, weights, and bad specs", () => {
    const mix = parseMix("budget:tpot_ms=50:0.5,chains=1:0.25,chains=4:0.25");
    assert.deepEqual(mix, [
      { label: "budget:tpot_ms=50", weight: 0.5, budget: { tpot_ms: 50 } },
      { label: "chains=1", weight: 0.25, chains: 1 },
      { label: "chains=4", weight: 0.25, chains: 4 },
    ]);
    assert.deepEqual(parseMix("budget:ttft_ms=200+total_ms=900,model=c2:3,default"), [
      { label: "budget:ttft_ms=200+total_ms=900", weight: 1, budget: { ttft_ms: 200, total_ms: 900 } },
      { label: "model=c2", weight: 3, modelChains: 2 },
      { label: "default", weight: 1 },
    ]);
    for (const bad of ["", "chains=0", "budget:foo=3", "budget:tpot_ms=0", "size=4", "chains=2:0"]) assert.throws(() => parseMix(bad), /--mix/);
    const rng = new SeededRng(5);
    const counts = new Map<string, number>();
    for (let i = 0; i < 8000; i++) {
      const c = pickClass(mix, rng).label;
      counts.set(c, (counts.get(c) ?? 0) + 1);
    }
    assert.ok(Math.abs(counts.get("budget:tpot_ms=50")! / 8000 - 0.5) < 0.03);
    assert.ok(Math.abs(counts.get("chains=4")! / 8000 - 0.25) < 0.03);
  });

  test("prompts: synthetic text/ids of the asked length, file slices", () => {
    const rng = new SeededRng(2);
    for (const n of [1, 7, 300]) {
      const s = syntheticText(n, rng);
      assert.equal(s.length, n);
      assert.match(s, /^[\x20-\x7e]+$/);
    }
    const ids = syntheticIds(50, rng, 32, 127);
    assert.equal(ids.length, 50);
    assert.ok(ids.every((x) => Number.isInteger(x) && x >= 32 && x < 127));
    const corpus = "In the beginning God created the heaven and the earth.";
    for (let i = 0; i < 20; i++) {
      const s = sliceText(corpus, 10, rng);
      assert.equal(s.length, 10);
      assert.ok(corpus.includes(s));
    }
    assert.equal(sliceText("abc", 8, rng), "abc abc ");
  });
});

describe("stats", () => {
  test("percentile interpolates between closest ranks", () => {
    const xs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    assert.equal(percentile(xs, 0), 1);
    assert.equal(percentile(xs, 100), 10);
    assert.equal(percentile(xs, 50), 5.5);
    assert.ok(Math.abs(percentile(xs, 90) - 9.1) < 1e-12);
    assert.ok(Math.abs(percentile(xs, 99) - 9.91) < 1e-12);
    assert.equal(percentile([42], 99), 42);
    assert.ok(Number.isNaN(percentile([], 50)));
    const d = describeDist([5, 1, 3]);
    assert.deepEqual([d.n, d.mean, d.p50, d.max], [3, 3, 3, 5]);
  });

  const rec = (over: Partial<RequestRecord>): RequestRecord => ({
    id: 0, cls: "default", startMs: 0, promptTokens: 4, maxTokens: 4, ok: true, e2eMs: 100, ttftMs: 20, tpotMs: 10,
    itlMs: [10, 10], tokens: 3, chains: [4, 4, 4], budgetMet: true, ...over,
  });

  test("budgets: each field judged; failures never meet", () => {
    const r = rec({});
    assert.equal(meetsBudget(r), true);
    assert.equal(meetsBudget(r, { ttft_ms: 20, tpot_ms: 10, total_ms: 100 }), true);
    assert.equal(meetsBudget(r, { ttft_ms: 19 }), false);
    assert.equal(meetsBudget(r, { tpot_ms: 9 }), false);
    assert.equal(meetsBudget(r, { total_ms: 99 }), false);
    assert.equal(meetsBudget({ ...r, tpotMs: undefined }, { tpot_ms: 1 }), true);
    assert.equal(meetsBudget({ ...r, ok: false }), false);
  });

  test("summarize: counts, goodput, chains, errors by status/code", () => {
    const records = [
      rec({ id: 0 }),
      rec({ id: 1, cls: "chains=1", chains: [1, 1, 1] }),
      rec({ id: 2, budgetMet: false, cls: "budget:tpot_ms=5" }),
      rec({ id: 3, ok: false, budgetMet: false, tokens: 0, chains: [], itlMs: [], ttftMs: undefined, tpotMs: undefined, error: { status: "429", code: "rate_limited", message: "" } }),
    ];
    const s = summarize(records, 2);
    assert.equal(s.requests, 4);
    assert.equal(s.ok, 3);
    assert.deepEqual(s.errorCounts, { "429:rate_limited": 1 });
    assert.equal(s.goodput, 0.5);
    assert.equal(s.outputTokens, 9);
    assert.equal(s.tokenThroughput, 4.5);
    assert.equal(s.requestThroughput, 1.5);
    assert.equal(s.meanChains, 3);
    assert.deepEqual(s.chainHistogram, { 1: 3, 4: 6 });
    assert.equal(s.ttftMs.n, 3);
    assert.equal(s.itlMs.n, 6);
    assert.equal(s.byClass["chains=1"].meanChains, 1);
    const table = formatSummary(s);
    assert.match(table, /TTFT/);
    assert.match(table, /429:rate_limited ×1/);
  });
});

describe("CLI", () => {
  test("loopback guard", () => {
    assert.equal(checkLoopbackUrl("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    assert.equal(checkLoopbackUrl("http://localhost:8080/"), "http://localhost:8080");
    assert.equal(checkLoopbackUrl("http://[::1]:9000"), "http://[::1]:9000");
    for (const bad of ["http://10.0.0.2:8080", "http://example.com", "http://127.0.0.2:80", "http://0.0.0.0:8080", "http://localhost.evil.com"]) {
      assert.throws(() => checkLoopbackUrl(bad), /only loopback hosts/);
    }
    assert.throws(() => checkLoopbackUrl("ftp://127.0.0.1"), /http/);
    assert.throws(() => checkLoopbackUrl("not a url"), /valid URL/);
    assert.throws(() => parseCli(["--url", "http://192.168.1.5:8080", "--rate", "4"]), /refusing to load-test 192\.168\.1\.5/);
  });

  test("argument parsing", () => {
    const cfg = parseCli(["--url", "http://127.0.0.1:8080", "--rate", "4", "--prompt-tokens", "64:512", "--max-tokens", "32", "--mix", "chains=2", "--seed", "9", "--mode", "ws"], {});
    assert.notEqual(cfg, "help");
    if (cfg === "help") return;
    assert.equal(cfg.options.rate, 4);
    assert.equal(cfg.options.concurrency, undefined);
    assert.equal(cfg.options.mode, "ws");
    assert.deepEqual(cfg.options.promptTokens, { min: 64, max: 512 });
    assert.deepEqual(cfg.options.maxTokens, { min: 32, max: 32 });
    assert.equal(cfg.options.seed, 9);
    assert.equal(cfg.options.requests, 100);
    assert.equal(parseCli(["--help"]), "help");
    assert.throws(() => parseCli(["--url", "http://127.0.0.1:1"]), /exactly one of --rate/);
    assert.throws(() => parseCli(["--url", "http://127.0.0.1:1", "--rate", "1", "--concurrency", "2"]), /exactly one of --rate/);
    assert.throws(() => parseCli(["--url", "http://127.0.0.1:1", "--rate", "0"]), /--rate/);
    assert.throws(() => parseCli(["--url", "http://127.0.0.1:1", "--concurrency", "1.5"]), /--concurrency/);
    assert.throws(() => parseCli(["--url", "http://127.0.0.1:1", "--rate", "1", "--mode", "grpc"]), /--mode/);
    assert.throws(() => parseCli(["--rate", "1"]), /--url is required/);
  });

  test("benchmark arguments: --name=value and --name value alike; a value that is not a number is an error", () => {
    const args = new BenchArgs(["--prompt", "520", "--chains=1", "--loads", "0.5,1", "--verbose"]);
    assert.equal(args.num("prompt", 128), 520);
    assert.equal(args.num("chains", 4), 1);
    assert.equal(args.num("max-tokens", 64), 64);
    assert.equal(args.get("loads"), "0.5,1");
    assert.equal(args.get("verbose"), "true");
    assert.throws(() => new BenchArgs(["--prompt=abc"]).num("prompt", 1), /--prompt needs a number, got "abc"/);
    assert.throws(() => new BenchArgs(["520"]), /unexpected argument "520"/);
  });

  test("request specs are reproducible from the seed", () => {
    const cfg = parseCli(["--url", "http://127.0.0.1:1", "--concurrency", "2", "--prompt-tokens", "3:40", "--max-tokens", "2:9", "--mix", "chains=1,model=c3,budget:tpot_ms=50"], {});
    if (cfg === "help") throw new Error("unexpected help");
    const draw = () => {
      const rng = new SeededRng(cfg.options.seed);
      return Array.from({ length: 30 }, (_, i) => makeSpec(i, cfg.options, "m", rng));
    };
    const a = draw();
    assert.deepEqual(a, draw());
    for (const s of a) {
      assert.equal(typeof s.prompt === "string" ? s.prompt.length : s.prompt.length, s.promptTokens);
      assert.ok(s.promptTokens >= 3 && s.promptTokens <= 40 && s.maxTokens >= 2 && s.maxTokens <= 9);
      if (s.cls === "model=c3") assert.equal(s.model, "m:c3");
      else assert.equal(s.model, "m");
      if (s.cls === "chains=1") assert.equal(s.chains, 1);
      if (s.cls.startsWith("budget")) assert.deepEqual(s.budget, { tpot_ms: 50 });
    }
    assert.equal(new Set(a.map((s) => s.cls)).size, 3);
  });

  test("--shared-prefix-tokens: every prompt starts with the same prefix, then its own tokens; --no-cache sends cache: false", () => {
    for (const form of ["text", "ids"]) {
      const cfg = parseCli(["--url", "http://127.0.0.1:1", "--concurrency", "2", "--prompt-tokens", "5:9", "--shared-prefix-tokens", "50", "--prompt-form", form, "--no-cache"], {});
      if (cfg === "help") throw new Error("unexpected help");
      const rng = new SeededRng(cfg.options.seed);
      const specs = Array.from({ length: 6 }, (_, i) => makeSpec(i, cfg.options, "m", rng));
      const prefix = specs[0].prompt.slice(0, 50);
      for (const s of specs) {
        assert.deepEqual(s.prompt.slice(0, 50), prefix);
        assert.equal(s.prompt.length, s.promptTokens);
        assert.ok(s.promptTokens >= 55 && s.promptTokens <= 59);
        assert.equal(requestBody(s).cache, false);
      }
      assert.ok(new Set(specs.map((s) => JSON.stringify(s.prompt.slice(50)))).size > 1, "the rest differs");
    }
  });
});

describe("end to end against the server", () => {
  let ckpt: TestCheckpoint;
  let app: RunningApp;

  before(async () => {
    ckpt = await writeTestCheckpoint("tiny-load");
    app = await startApp(await loadTestEngine(ckpt.dir));
  });
  after(async () => {
    await app?.close();
    ckpt?.cleanup();
  });

  const base = (over: Partial<LoadOptions>): LoadOptions => ({
    url: app.url,
    mode: "sse",
    requests: 10,
    durationS: 20,
    graceS: 10,
    promptTokens: { min: 4, max: 24 },
    promptForm: "text",
    idLow: 32,
    idHigh: 127,
    maxTokens: { min: 2, max: 6 },
    mix: parseMix("budget:ttft_ms=60000+tpot_ms=60000:0.4,chains=1:0.2,model=c2:0.2,default:0.2"),
    seed: 4,
    ...over,
  });

  function checkResult(res: LoadResult, n: number): void {
    assert.equal(res.model, "tiny-load");
    assert.equal(res.records.length, n);
    assert.equal(res.summary.requests, n);
    assert.deepEqual(res.summary.errorCounts, {});
    assert.equal(res.summary.ok, n);
    assert.equal(res.summary.goodput, 1); // budgets are a minute: every success meets them
    for (const r of res.records) {
      assert.ok(r.ok, JSON.stringify(r.error));
      assert.ok(r.ttftMs !== undefined && r.ttftMs <= r.e2eMs, `ttft ${r.ttftMs} e2e ${r.e2eMs}`);
      assert.ok(r.usage, "usage reported");
      assert.equal(r.tokens, r.usage.completion_tokens);
      assert.equal(r.usage.prompt_tokens, r.promptTokens);
      assert.ok(r.tokens >= 1 && r.tokens <= r.maxTokens);
      assert.equal(r.chains.length, r.tokens);
      assert.ok(r.chains.every((k) => Number.isInteger(k) && k >= 1 && k <= 4), JSON.stringify(r.chains));
      if (r.cls === "chains=1") assert.ok(r.chains.every((k) => k === 1));
      if (r.cls === "model=c2") assert.ok(r.chains.every((k) => k === 2));
      assert.equal(r.itlMs.length, r.tokens - 1);
      if (r.tokens >= 2) assert.ok(r.tpotMs !== undefined && r.tpotMs >= 0);
    }
    assert.equal(res.summary.outputTokens, res.records.reduce((a, r) => a + r.tokens, 0));
    assert.ok(res.summary.meanChains >= 1 && res.summary.meanChains <= 4);
    assert.ok(res.summary.tokenThroughput > 0);
  }

  test("SSE, open loop Poisson: 10 requests", async () => {
    const lines: string[] = [];
    const res = await runLoad(base({ rate: 20 }), { progress: (l) => lines.push(l), progressIntervalMs: 100 });
    checkResult(res, 10);
    assert.ok(new Set(res.records.map((r) => r.cls)).size >= 3);
  });

  test("WebSocket, closed loop ×3: 6 requests on one socket", async () => {
    const res = await runLoad(base({ mode: "ws", concurrency: 3, requests: 6, seed: 8 }));
    checkResult(res, 6);
  });

  test("token-id prompts; errors are counted by status and code", async () => {
    const res = await runLoad(base({ concurrency: 2, requests: 4, promptForm: "ids", mix: parseMix("chains=1,model=c9") }));
    assert.equal(res.records.length, 4);
    for (const r of res.records) {
      if (r.cls === "chains=1") assert.ok(r.ok && r.tokens === r.usage?.completion_tokens);
      else assert.deepEqual([r.ok, r.error?.status, r.budgetMet], [false, "404", false]);
    }
    const bad = res.records.filter((r) => !r.ok).length;
    assert.ok(bad > 0);
    assert.equal(Object.values(res.summary.errorCounts).reduce((a, b) => a + b, 0), bad);
  });

  test("duration bound: stops by itself and cuts at the grace deadline", async () => {
    const t0 = Date.now();
    const res = await runLoad(base({ rate: 50, requests: 1000, durationS: 0.3, graceS: 0, maxTokens: { min: 40, max: 40 } }));
    assert.ok(Date.now() - t0 < 5000);
    assert.ok(res.records.length >= 1 && res.records.length < 1000);
    for (const r of res.records) assert.ok(r.ok || r.error?.status === "cut", JSON.stringify(r.error));
  });
});
