// npm run bench:sweep — the serving sweep on bench-s (random weights): offered load from light to
// 2× saturation, three policies, through the real HTTP server in this process (SSE on loopback).
//   1. start-up warm-up of the router's cost model;
//   2. what k=4 sustains: a closed loop at the full batch (everything in flight), fixed at k=4,
//      `--saturation-requests` requests;
//      the latency budget is `--budget-frac` × its TPOT there (as in bench:serve), so a fixed k=4
//      cannot meet it at full load and smaller k can;
//   3. at each load (`--loads` × the k=4 sustained rate; Poisson open loop, `--requests` each, the
//      same seed so every policy sees the same arrivals and prompts), one run per policy:
//        fixed-k4     every request "<name>:c4" — a one-size deployment;
//        routing      elastic with latency_budget {tpot_ms}, the size chosen at admission from
//                     the predicted load and kept to the end (router.switching = false);
//        adaptive     the same, and re-chosen before every token as the batch changes;
//      the three runs of a load come back to back so drifts of this shared machine hit all three.
//   4. per run: p50/p99 TTFT and TPOT (client-measured), mean chain count over the tokens served,
//      the share of requests that met the budget (a fixed-k4 request is judged by the same
//      budget; errors count as misses), tokens/s.
// Writes loadtest/results/sweep.json.
import { parseMix, type LatencyBudget } from "./arrivals.ts";
import { runLoad, type LoadResult } from "./loadgen.ts";
import { BenchArgs, writeResult } from "./results.ts";
import { startServingBench, tpotBudgetMs } from "./serving-bench.ts";
import { BENCH_S, describeShape } from "./shapes.ts";
import { meetsBudget } from "./stats.ts";

const args = new BenchArgs();
const PROMPT = args.num("prompt", 32);
const MAX_TOKENS = args.num("max-tokens", 32);
const BATCH = args.num("batch", 16);
const REQUESTS = args.num("requests", 120);
/** Requests of the closed loop that finds what k=4 sustains (more: a steadier 1× rate). */
const SATURATION_REQUESTS = args.num("saturation-requests", 5 * BATCH);
const BUDGET_FRAC = args.num("budget-frac", 0.7);
const SEED = args.num("seed", 42);
const LOADS = (args.get("loads") ?? "0.25,0.5,0.75,1,1.25,1.5,2").split(",").map(Number);
if (LOADS.some((x) => !(x > 0))) throw new Error(`--loads: positive multiples of the k=4 rate, got ${args.get("loads")}`);

type PolicyName = "fixed-k4" | "routing" | "adaptive";
const POLICIES: PolicyName[] = ["fixed-k4", "routing", "adaptive"];

/** One run of the sweep: one policy at one offered load. */
interface SweepPoint {
  load: number;
  offered_req_s: number;
  ttft_p50_ms: number;
  ttft_p99_ms: number;
  tpot_p50_ms: number;
  tpot_p99_ms: number;
  mean_chains: number;
  budget_met: number;
  tokens_per_s: number;
  requests: number;
  errors: number;
  wall_s: number;
  chain_histogram: Record<string, number>;
}

const sweepStart = performance.now();
const bench = await startServingBench({ prompt: PROMPT, maxTokens: MAX_TOKENS, batch: BATCH, seed: SEED, saturationRequests: SATURATION_REQUESTS });
const { base, k4TpotMs } = bench;
const sustainedReqS = bench.k4SustainedReqS;
const router = bench.colm.router!;
const budget: LatencyBudget = { tpot_ms: args.num("budget-ms", tpotBudgetMs(BUDGET_FRAC, k4TpotMs)) };
console.log(`budget tpot_ms ${budget.tpot_ms}; loads ${LOADS.join(", ")} × ${sustainedReqS.toFixed(2)} req/s, ${REQUESTS} requests per run`);

function point(load: number, rate: number, run: LoadResult): SweepPoint {
  const s = run.summary;
  return {
    load,
    offered_req_s: rate,
    ttft_p50_ms: s.ttftMs.p50,
    ttft_p99_ms: s.ttftMs.p99,
    tpot_p50_ms: s.tpotMs.p50,
    tpot_p99_ms: s.tpotMs.p99,
    mean_chains: s.meanChains,
    budget_met: run.records.filter((r) => meetsBudget(r, budget)).length / run.records.length,
    tokens_per_s: s.tokenThroughput,
    requests: s.requests,
    errors: s.errors,
    wall_s: s.wallS,
    chain_histogram: s.chainHistogram,
  };
}

const mixOf: Record<PolicyName, string> = { "fixed-k4": "model=c4", routing: `budget:tpot_ms=${budget.tpot_ms}`, adaptive: `budget:tpot_ms=${budget.tpot_ms}` };
const points: Record<PolicyName, SweepPoint[]> = { "fixed-k4": [], routing: [], adaptive: [] };
for (const load of LOADS) {
  const rate = load * sustainedReqS;
  for (const policy of POLICIES) {
    router.switching = policy === "adaptive";
    const run = await runLoad({ ...base, rate, requests: REQUESTS, mix: parseMix(mixOf[policy]) });
    const p = point(load, rate, run);
    points[policy].push(p);
    console.log(
      `${load.toFixed(2)}× (${rate.toFixed(1)} req/s) ${policy.padEnd(8)}: TTFT p50/p99 ${p.ttft_p50_ms.toFixed(0)}/${p.ttft_p99_ms.toFixed(0)} ms, ` +
        `TPOT p50/p99 ${p.tpot_p50_ms.toFixed(1)}/${p.tpot_p99_ms.toFixed(1)} ms, chains ${p.mean_chains.toFixed(2)}, ` +
        `budget met ${(p.budget_met * 100).toFixed(0)}%, ${p.tokens_per_s.toFixed(0)} tok/s${p.errors ? `, ${p.errors} errors` : ""}`,
    );
  }
}
router.switching = true;
const view = router.view();
await bench.close();

writeResult("sweep", "bench:sweep", {
  shape: describeShape(BENCH_S),
  prompt_tokens: PROMPT,
  max_tokens: MAX_TOKENS,
  batch: BATCH,
  requests_per_run: REQUESTS,
  saturation_requests: SATURATION_REQUESTS,
  seed: SEED,
  k4_sustained_req_s: sustainedReqS,
  k4_tpot_p50_ms_full_batch: k4TpotMs,
  budget,
  budget_frac_of_k4_tpot: budget.tpot_ms! / k4TpotMs,
  loads: LOADS,
  hysteresis: view.hysteresis,
  policies: {
    "fixed-k4": "every request model <name>:c4 (one size for everyone)",
    routing: "elastic with latency_budget; k chosen at admission from the predicted load, kept to the end",
    adaptive: "elastic with latency_budget; k chosen at admission and re-chosen before every token",
  },
  points,
  sweep_s: (performance.now() - sweepStart) / 1000,
});
