// Latency-budget routing and load-adaptive switching (issue 5). Deterministic: the router is
// driven by a table of costs (or a cost model fed known steps) and an injected clock and load;
// no test asserts on real timings.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import request from "supertest";
import { createApp, type ColmApp } from "../server/api/app.ts";
import { CostModel, type CostPredictor } from "../server/policy/cost-model.ts";
import type { Engine } from "../server/engine/types.ts";
import { ChainControl } from "../server/engine/chain-control.ts";
import { AdaptiveChains, DEFAULT_HYSTERESIS, predict, route, type HysteresisConfig, type LatencyBudget, type LoadSnapshot } from "../server/policy/latency-router.ts";
import { mergeBudgetHeaders } from "../server/api/request.ts";
import { ColmError, httpStatus } from "../server/api/errors.ts";
import { loadTestEngine, metricValue, parsePrometheus, parseSse, writeTestCheckpoint, type TestCheckpoint } from "./helpers/server-fixture.ts";

/** step_k(B) = k · (2 + B) ms; prefill(T, k) = 0.1 · (T − 1) + step_k(1). */
const TABLE: CostPredictor = {
  nChains: 4,
  decodeStepMs: (k, B) => k * (2 + B),
  prefillMs: (T, k) => 0.1 * (T - 1) + k * 3,
};

const load = (running: number, queued = 0): LoadSnapshot => ({ running, queued });
const req = (latencyBudget?: LatencyBudget, fixedChains?: number, promptTokens = 101, maxTokens = 10) => ({ latencyBudget, fixedChains, promptTokens, maxTokens });

describe("route: a table of budgets and loads", () => {
  const cases: Array<{ what: string; budget?: LatencyBudget; fixed?: number; load: LoadSnapshot; chains: number; reason: string }> = [
    { what: "no budget → largest k", load: load(15), chains: 4, reason: "no_budget" },
    { what: "fixed size kept even when it breaks the budget", budget: { tpot_ms: 1 }, fixed: 3, load: load(15), chains: 3, reason: "fixed" },
    { what: "tpot 25, idle (B=1: k=4 takes 12)", budget: { tpot_ms: 25 }, load: load(0), chains: 4, reason: "budget" },
    { what: "tpot 25, 7 running (B=8: 40/30/20/10)", budget: { tpot_ms: 25 }, load: load(7), chains: 2, reason: "budget" },
    { what: "tpot 25, 3 running + 2 queued (B=6: 32/24)", budget: { tpot_ms: 25 }, load: load(3, 2), chains: 3, reason: "budget" },
    { what: "tpot 5 under load: nothing fits → k=1", budget: { tpot_ms: 5 }, load: load(7), chains: 1, reason: "no_fit" },
    { what: "a long queue joins a batch of at most the capacity (B=8)", budget: { tpot_ms: 25 }, load: { running: 8, queued: 50, capacity: 8 }, chains: 2, reason: "budget" },
    // ttft = queued · (prefill(101, 1) + step_1(B)) + prefill(101, k) = 2 · (13 + 5) + 10 + 3k
    { what: "ttft 57 with 2 queued (46 + 3k ≤ 57 → k=3)", budget: { ttft_ms: 57 }, load: load(0, 2), chains: 3, reason: "budget" },
    { what: "ttft 100, idle → k=4", budget: { ttft_ms: 100 }, load: load(0), chains: 4, reason: "budget" },
    // total = ttft + 9 · tpot at B=1: k=4 → 22 + 108 = 130; k=3 → 19 + 81 = 100
    { what: "total 110, idle → k=3", budget: { total_ms: 110 }, load: load(0), chains: 3, reason: "budget" },
    { what: "all three parts must hold", budget: { ttft_ms: 100, tpot_ms: 13, total_ms: 1000 }, load: load(0), chains: 4, reason: "budget" },
  ];
  for (const c of cases) {
    test(c.what, () => {
      const d = route(req(c.budget, c.fixed), TABLE, c.load);
      assert.equal(d.chains, c.chains);
      assert.equal(d.reason, c.reason);
    });
  }

  test("nothing known yet → largest k; a k never seen is bounded by a larger one", () => {
    const empty = new CostModel({ nChains: 4 });
    assert.deepEqual(route(req({ tpot_ms: 1 }), empty, load(0)), { chains: 4, reason: "no_costs" });
    const onlyK4 = new CostModel({ nChains: 4 });
    onlyK4.observe({ kind: "decode", rows: 1, tokens: 1, chains: 4, ms: 10 });
    // k=1…3 have no data: bounded by k=4's 10 ms, which meets a 20 ms budget at k=4 already.
    assert.equal(route(req({ tpot_ms: 20 }), onlyK4, load(0)).chains, 4);
    assert.equal(route(req({ tpot_ms: 5 }), onlyK4, load(0)).reason, "no_fit");
  });
});

describe("CostModel: online fit from steps", () => {
  test("decode a + b·B per k from steps at two batch sizes, prefill per token, EWMA follows change", () => {
    const m = new CostModel({ nChains: 2, alpha: 0.2 });
    for (let i = 0; i < 50; i++) {
      m.observe({ kind: "decode", rows: 1, tokens: 1, chains: 2, ms: 5 });
      m.observe({ kind: "decode", rows: 8, tokens: 8, chains: 2, ms: 12 });
    }
    assert.ok(Math.abs(m.decodeStepMs(2, 1)! - 5) < 1e-6);
    assert.ok(Math.abs(m.decodeStepMs(2, 8)! - 12) < 1e-6);
    assert.ok(Math.abs(m.decodeStepMs(2, 16)! - 20) < 1e-6);
    assert.equal(m.decodeStepMs(1, 1), undefined);
    // Prefill: 101 tokens at k=2 in 5 + 100·0.5 ms → 0.5 ms per chain-1 token.
    m.observe({ kind: "prefill", rows: 1, tokens: 101, chains: 2, ms: 55 });
    assert.ok(Math.abs(m.prefillMsPerToken! - 0.5) < 1e-6);
    assert.ok(Math.abs(m.prefillMs(11, 2)! - 10) < 1e-6);
    // The machine gets slower, seen at one batch size only: the prediction there follows it
    // (the slope fitted while B still varied is kept once it cannot be refitted).
    for (let i = 0; i < 100; i++) m.observe({ kind: "decode", rows: 4, tokens: 4, chains: 2, ms: 18 });
    const line = m.decodeLines().find((l) => l.chains === 2)!;
    assert.ok(Number.isFinite(line.perRowMs) && line.perRowMs >= 0, String(line.perRowMs));
    assert.ok(Math.abs(m.decodeStepMs(2, 4)! - 18) < 0.1, String(m.decodeStepMs(2, 4)));
    // Token intervals seen by generations: the excess over the step becomes the per-token overhead.
    assert.equal(m.tokenOverheadMs, 0);
    m.observeTokenInterval(2, 4, m.decodeStepMs(2, 4)! + 3);
    assert.ok(Math.abs(m.tokenOverheadMs - 3) < 1e-9);
    // Faster than the step (tokens of one speculative round arrive together): the mean comes down…
    const step = m.decodeStepMs(2, 4)!;
    m.observeTokenInterval(2, 4, step - 1);
    assert.ok(Math.abs(m.tokenOverheadMs - (0.8 * 3 - 0.2 * 1)) < 1e-9);
    // …but the overhead is never negative.
    for (let i = 0; i < 50; i++) m.observeTokenInterval(2, 4, 0);
    assert.equal(m.tokenOverheadMs, 0);
    // Garbage is ignored.
    m.observe({ kind: "decode", rows: 1, tokens: 1, chains: 9, ms: 1 });
    m.observe({ kind: "decode", rows: 1, tokens: 1, chains: 1, ms: Number.NaN });
    assert.equal(m.decodeStepMs(1, 1), undefined);
  });
});

/** Drive one AdaptiveChains through `batches` (the batch size before each token). */
function drive(batches: number[], budget: LatencyBudget, start: number, hysteresis: HysteresisConfig = DEFAULT_HYSTERESIS, clock?: () => number) {
  let B = batches[0];
  const a = new AdaptiveChains({ predictor: TABLE, batch: () => B, now: clock ?? (() => 0), hysteresis }, budget, batches.length, 0);
  const control = new ChainControl(start);
  control.policy = a.choose;
  const chains: number[] = [];
  batches.forEach((b, i) => {
    B = b;
    chains.push(control.choose(i));
  });
  return chains;
}

const switches = (chains: number[]) => chains.filter((k, i) => i > 0 && k !== chains[i - 1]).length;

describe("AdaptiveChains: load-adaptive switching with hysteresis", () => {
  test("downshift under rising load, upshift after it falls", () => {
    // tpot 25: B=1 → k=4 (12); B=8 → k=2 (20); B=20 → k=1 (22); back to B=1 → up to 4 (12 ≤ 0.8·25).
    const batches = [...Array(6).fill(1), ...Array(6).fill(8), ...Array(6).fill(20), ...Array(6).fill(8), ...Array(6).fill(1)];
    const chains = drive(batches, { tpot_ms: 25 }, 4);
    // B=8 again: k=2 takes 20 ≤ 0.8·25, so it moves up to 2 (k=3 at 30 does not qualify).
    const expected = [4, 2, 1, 2, 4].flatMap((k) => Array(6).fill(k));
    assert.deepEqual(chains, expected);
  });

  test("a switch waits minTokensBetweenSwitches after the previous one", () => {
    const chains = drive([1, 8, 20, 20, 20, 20, 20, 20], { tpot_ms: 25 }, 4, { upMargin: 0.8, minTokensBetweenSwitches: 4 });
    assert.deepEqual(chains, [4, 2, 2, 2, 2, 1, 1, 1]);
  });

  test("no flapping on a load oscillating around the threshold", () => {
    // tpot 25 at k=4: B=4 → 24 (fits), B=5 → 28 (breaks). With hysteresis: one downshift, then
    // k=4 at 24 > 0.8·25 never qualifies for the way up.
    const oscillating = Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? 4 : 5));
    const damped = drive(oscillating, { tpot_ms: 25 }, 4);
    assert.equal(switches(damped), 1, JSON.stringify(damped));
    assert.equal(damped[damped.length - 1], 3);
    // Without it (up at the threshold itself, switches allowed every token) it flaps.
    const undamped = drive(oscillating, { tpot_ms: 25 }, 4, { upMargin: 1, minTokensBetweenSwitches: 1 });
    assert.ok(switches(undamped) > 10, JSON.stringify(undamped));
  });

  test("the loop's per-token overhead counts against the budget", () => {
    const withOverhead: CostPredictor = { ...TABLE, tokenOverheadMs: 6 };
    // B=8, tpot 25: k=2 takes 20 + 6 > 25 → k=1 (10 + 6).
    assert.equal(route(req({ tpot_ms: 25 }), withOverhead, load(7)).chains, 1);
    assert.equal(route(req({ tpot_ms: 25 }), TABLE, load(7)).chains, 2);
  });

  test("total_ms: the time left spread over the tokens left tightens the limit (injected clock)", () => {
    let now = 0;
    const a = new AdaptiveChains({ predictor: TABLE, batch: () => 1, now: () => now, hysteresis: { upMargin: 0.8, minTokensBetweenSwitches: 1 } }, { total_ms: 200 }, 10, 0);
    assert.equal(a.tpotLimit(0), 20);
    now = 150; // 50 ms left for 5 tokens → 10 ms each: k=4 (12) breaks it, k=3 (9) fits
    assert.equal(a.tpotLimit(5), 10);
    assert.equal(a.choose(5, 4), 3);
    now = 500; // over: k=1
    assert.equal(a.choose(7, 3), 1);
  });

  test("token 0 keeps the routed size; a manual size ends the policy (ChainControl)", () => {
    const a = new AdaptiveChains({ predictor: TABLE, batch: () => 20, now: () => 0, hysteresis: DEFAULT_HYSTERESIS }, { tpot_ms: 25 }, 10, 0);
    assert.equal(a.choose(0, 4), 4);
    const c = new ChainControl(4);
    const applied: Array<[number, number]> = [];
    c.onApplied((k, at) => applied.push([k, at]));
    c.policy = a.choose;
    assert.equal(c.choose(0), 4);
    assert.equal(c.choose(1), 1);
    c.policy = undefined;
    c.target = 3;
    assert.equal(c.choose(2), 3);
    assert.deepEqual(applied, [[1, 1], [3, 2]]);
  });
});

describe("predictions follow cost", () => {
  test("a larger k is never predicted cheaper, even when the measurements say so (k=1 measured slower than k=2)", () => {
    const noisy: CostPredictor = { nChains: 4, decodeStepMs: (k) => [8.8, 6.65, 9, 12][k - 1], prefillMs: (_T, k) => [5, 4, 6, 7][k - 1] };
    for (const load of [{ running: 0, queued: 0 }, { running: 3, queued: 2, capacity: 8 }]) {
      const p = [1, 2, 3, 4].map((k) => predict(noisy, k, 16, 8, load)!);
      for (let k = 1; k < 4; k++) {
        assert.ok(p[k - 1].tpotMs <= p[k].tpotMs, `tpot k=${k} ≤ k=${k + 1}`);
        assert.ok(p[k - 1].ttftMs <= p[k].ttftMs, `ttft k=${k} ≤ k=${k + 1}`);
      }
      assert.equal(p[0].tpotMs, 6.65, "k=1 is bounded by the k=2 it is part of");
    }
  });
});

describe("X-Latency-Budget-* headers", () => {
  test("merged under the body's fields; bad values are a 400", () => {
    assert.deepEqual(mergeBudgetHeaders({ "x-latency-budget-tpot-ms": "40", "x-latency-budget-ttft-ms": "500" }, { tpot_ms: 10 }), { tpot_ms: 10, ttft_ms: 500 });
    assert.deepEqual(mergeBudgetHeaders({ "x-latency-budget-total-ms": "1000" }, null), { total_ms: 1000 });
    assert.equal(mergeBudgetHeaders({}, undefined), undefined);
    assert.throws(() => mergeBudgetHeaders({ "x-latency-budget-tpot-ms": "fast" }, undefined), (e: unknown) => e instanceof ColmError && httpStatus(e) === 400);
    assert.throws(() => mergeBudgetHeaders({ "x-latency-budget-tpot-ms": "-3" }, undefined), (e: unknown) => e instanceof ColmError && httpStatus(e) === 400);
  });
});

describe("through the server (tiny random checkpoint, real engine)", () => {
  let ckpt: TestCheckpoint;
  let engine: Engine;
  let colm: ColmApp;
  /** Known costs: k = 3, 4 take a second a step, k = 1, 2 a microsecond; a tiny EWMA weight
   * keeps the real (millisecond) steps of these tests from moving them noticeably. */
  const injected = () => {
    const m = new CostModel({ nChains: 4, alpha: 0.001 }); // real steps barely move it
    for (const k of [1, 2, 3, 4]) {
      for (const B of [1, 8]) m.observe({ kind: "decode", rows: B, tokens: B, chains: k, ms: k >= 3 ? 1000 : 0.001 });
    }
    return m;
  };

  before(async () => {
    ckpt = await writeTestCheckpoint("tiny", 21);
    engine = await loadTestEngine(ckpt.dir);
    colm = createApp(engine, { log: () => undefined, router: { costModel: injected() } });
  });
  after(async () => {
    await colm.close();
    await engine.close();
    ckpt.cleanup();
  });

  const complete = (body: Record<string, unknown>, headers: Record<string, string> = {}) =>
    request(colm.app).post("/v1/completions").set(headers).send({ model: "tiny", prompt: "In the beginning", max_tokens: 6, temperature: 0, ...body });

  test("budget routes an elastic request; fixed sizes and no budget are kept", async () => {
    const budgeted = await complete({ latency_budget: { tpot_ms: 50 } });
    assert.equal(budgeted.status, 200, JSON.stringify(budgeted.body));
    assert.equal(budgeted.body.model, "tiny:c2");
    assert.equal(budgeted.body.chains, 2);
    assert.equal((await complete({})).body.chains, 4);
    assert.equal((await complete({ model: "tiny:c4", latency_budget: { tpot_ms: 50 } })).body.chains, 4);
    assert.equal((await complete({ chains: 3, latency_budget: { tpot_ms: 50 } })).body.chains, 3);
  });

  test("header budgets (body wins), chat too; a bad header is a 400", async () => {
    assert.equal((await complete({}, { "X-Latency-Budget-TPOT-Ms": "50" })).body.chains, 2);
    assert.equal((await complete({ latency_budget: { tpot_ms: 5000 } }, { "X-Latency-Budget-TPOT-Ms": "50" })).body.chains, 4);
    const chat = await request(colm.app)
      .post("/v1/chat/completions")
      .set({ "X-Latency-Budget-Total-Ms": "2000" })
      .send({ model: "tiny", messages: [{ role: "user", content: "hi" }], max_tokens: 4, temperature: 0 });
    assert.equal(chat.status, 200);
    assert.equal(chat.body.chains, 2);
    const bad = await complete({}, { "X-Latency-Budget-TTFT-Ms": "soon" });
    assert.equal(bad.status, 400);
    assert.match(bad.body.error.message, /x-latency-budget-ttft-ms/);
  });

  test("no k fits → served at k=1 and a budget miss is counted", async () => {
    const before = metricValue(parsePrometheus((await request(colm.app).get("/metrics")).text), "colm_latency_budget_misses_total", { budget: "no_fit" });
    const res = await complete({ latency_budget: { tpot_ms: 0.0001 } });
    assert.equal(res.status, 200);
    assert.equal(res.body.chains, 1);
    const samples = parsePrometheus((await request(colm.app).get("/metrics")).text);
    assert.equal(metricValue(samples, "colm_latency_budget_misses_total", { budget: "no_fit" }), before + 1);
    assert.ok(samples.some((s) => s.name === "colm_router_predicted_tpot_seconds" && s.labels.chains === "4"));
    // The caller is told too, per choice: which parts of its budget it missed.
    assert.ok(res.body.usage.completion_tokens >= 2);
    assert.deepEqual(res.body.choices[0].latency_budget_missed, ["tpot"]);
    const met = await complete({ latency_budget: { tpot_ms: 1e9 } });
    assert.equal(met.body.choices[0].latency_budget_missed, undefined, "a met budget adds nothing");
  });

  test("switching off: a budgeted request is routed but keeps its size, and /v1/router says so", async () => {
    const router = colm.router!;
    const ask = { latencyBudget: { tpot_ms: 50 }, promptTokens: 4, maxTokens: 6 };
    assert.ok(router.adaptive(ask, router.route(ask), 0), "switching is on by default");
    router.switching = false;
    try {
      assert.equal(router.adaptive(ask, router.route(ask), 0), undefined);
      assert.equal((await request(colm.app).get("/v1/router")).body.switching, false);
      assert.equal((await complete({ latency_budget: { tpot_ms: 50 } })).body.chains, 2, "still routed");
    } finally {
      router.switching = true;
    }
  });

  test("GET /v1/router: what the server believes", async () => {
    const res = await request(colm.app).get("/v1/router");
    assert.equal(res.status, 200);
    const v = res.body;
    assert.equal(v.object, "router");
    assert.equal(typeof v.policy, "string");
    assert.equal(typeof v.calibrated, "boolean");
    assert.deepEqual(Object.keys(v.load).sort(), ["batch", "queued", "running"]);
    assert.ok(v.prefill_ms_per_token === null || typeof v.prefill_ms_per_token === "number");
    assert.deepEqual(v.hysteresis, { up_margin: DEFAULT_HYSTERESIS.upMargin, min_tokens_between_switches: DEFAULT_HYSTERESIS.minTokensBetweenSwitches });
    assert.deepEqual(v.chains.map((c: { chains: number }) => c.chains), [1, 2, 3, 4]);
    for (const c of v.chains) {
      for (const f of ["tpot_ms", "tpot_ms_b1", "step_fixed_ms", "step_per_row_ms"]) assert.equal(typeof c[f], "number", `${f} of k=${c.chains}`);
      assert.ok(c.observations >= 2);
    }
    assert.ok(v.chains[3].tpot_ms_b1 > 900 && v.chains[0].tpot_ms_b1 < 100, JSON.stringify(v.chains));
    assert.equal(typeof v.token_overhead_ms, "number");
    assert.equal((await request(colm.app).post("/v1/router")).status, 405);
  });
});

describe("end to end: warm-up through the real engine, then a budgeted elastic stream", () => {
  let ckpt: TestCheckpoint;
  let engine: Engine;
  let colm: ColmApp;
  before(async () => {
    ckpt = await writeTestCheckpoint("tiny", 23);
    engine = await loadTestEngine(ckpt.dir);
    colm = createApp(engine, { log: () => undefined });
    await colm.calibrate();
  });
  after(async () => {
    await colm.close();
    await engine.close();
    ckpt.cleanup();
  });

  test("calibrated costs for every k; the request completes and reports its chains per token", async () => {
    const view = (await request(colm.app).get("/v1/router")).body;
    assert.equal(view.calibrated, true);
    for (const c of view.chains) assert.ok(c.observations > 0 && c.tpot_ms_b1 > 0, JSON.stringify(c));
    assert.ok(view.prefill_ms_per_token >= 0);
    const res = await request(colm.app)
      .post("/v1/completions")
      .send({ model: "tiny", prompt: "Let there be light", max_tokens: 12, temperature: 0, stream: true, latency_budget: { tpot_ms: 10_000, ttft_ms: 10_000 } });
    assert.equal(res.status, 200);
    const events = parseSse(res.text);
    assert.equal(events.pop(), "[DONE]");
    const chunks = events as Array<{ choices: Array<{ chains: number; finish_reason: string | null }> }>;
    const tokens = chunks.filter((e) => e.choices[0].finish_reason === null);
    assert.equal(tokens.length, 12);
    for (const t of tokens) assert.ok(t.choices[0].chains >= 1 && t.choices[0].chains <= 4);
    const last = chunks[chunks.length - 1].choices[0];
    assert.equal(last.finish_reason, "length");
    assert.equal(last.chains, tokens[tokens.length - 1].choices[0].chains);
  });
});
