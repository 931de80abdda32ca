// npm run bench:serve — latency budgets under overload on bench-s (random weights), through the
// real HTTP server in this process (SSE clients on loopback):
//   1. start-up warm-up of the router's cost model;
//   2. what k=4 sustains: a closed loop at the full batch (16 in flight), fixed at k=4;
//   3. an open loop of Poisson arrivals at `--overload` × that rate, twice with the same seed:
//      every request elastic with latency_budget {tpot_ms} (adaptive routing + switching), then
//      every request fixed at k=4 (model "<name>:c4");
//   4. for both: the share of requests whose client-measured time per output token meets the
//      budget (errors count as misses) and the mean chain count served.
// The budget defaults to `--budget-frac` × the k=4 TPOT measured at the full batch in step 2, so
// a fixed k=4 cannot meet it at full load by construction and smaller k can (their step costs
// are printed). Writes loadtest/results/serve.json.
import { existsSync, readFileSync } from "node:fs";
import { parseMix, type LatencyBudget } from "./arrivals.ts";
import { runLoad } from "./loadgen.ts";
import { startServingBench, tpotBudgetMs } from "./serving-bench.ts";
import { BENCH_S, describeShape } from "./shapes.ts";
import { BenchArgs, writeResult } from "./results.ts";
import { meetsBudget, type RequestRecord } from "./stats.ts";

const args = new BenchArgs();
const PROMPT = args.num("prompt", 32);
const MAX_TOKENS = args.num("max-tokens", 32);
const BATCH = args.num("batch", 16);
const REQUESTS = args.num("requests", 160);
const OVERLOAD = args.num("overload", 2);
const BUDGET_FRAC = args.num("budget-frac", 0.7);
const SEED = args.num("seed", 42);

const bench = await startServingBench({ prompt: PROMPT, maxTokens: MAX_TOKENS, batch: BATCH, seed: SEED, saturationRequests: 3 * BATCH });
const { base, k4TpotMs } = bench;
const sustainedReqS = bench.k4SustainedReqS;
const router = bench.colm.router!;

const stepAtBatch = Object.fromEntries(router.model.decodeLines().map((l) => [l.chains, l.fixedMs + l.perRowMs * BATCH]));
console.log(`cost model, decode step at B=${BATCH}: ${Object.entries(stepAtBatch).map(([k, ms]) => `k=${k} ${ms.toFixed(1)} ms`).join(", ")}`);

const budget: LatencyBudget = { tpot_ms: args.num("budget-ms", tpotBudgetMs(BUDGET_FRAC, k4TpotMs)) };
const rate = OVERLOAD * sustainedReqS;
console.log(`overload: ${rate.toFixed(2)} req/s (${OVERLOAD}× k=4), ${REQUESTS} requests, budget tpot_ms ${budget.tpot_ms}`);

interface RunFigures {
  budget_met: number;
  mean_chains: number;
  tpot_p50_ms: number;
  tpot_p90_ms: number;
  ttft_p50_ms: number;
  tokens_per_s: number;
  wall_s: number;
  errors: number;
  chain_histogram: Record<string, number>;
}

function figures(records: RequestRecord[], s: Awaited<ReturnType<typeof runLoad>>["summary"]): RunFigures {
  return {
    budget_met: records.filter((r) => meetsBudget(r, budget)).length / records.length,
    mean_chains: s.meanChains,
    tpot_p50_ms: s.tpotMs.p50,
    tpot_p90_ms: s.tpotMs.p90,
    ttft_p50_ms: s.ttftMs.p50,
    tokens_per_s: s.tokenThroughput,
    wall_s: s.wallS,
    errors: s.errors,
    chain_histogram: s.chainHistogram,
  };
}

const adaptiveRun = await runLoad({ ...base, rate, requests: REQUESTS, mix: parseMix(`budget:tpot_ms=${budget.tpot_ms}`) });
const adaptive = figures(adaptiveRun.records, adaptiveRun.summary);
console.log(`adaptive: ${(adaptive.budget_met * 100).toFixed(1)}% met the budget, mean chains ${adaptive.mean_chains.toFixed(2)}, TPOT p50 ${adaptive.tpot_p50_ms.toFixed(1)} ms, ${adaptive.tokens_per_s.toFixed(0)} tok/s`);
const fixedRun = await runLoad({ ...base, rate, requests: REQUESTS, mix: parseMix("model=c4") });
const fixed = figures(fixedRun.records, fixedRun.summary);
console.log(`fixed k=4: ${(fixed.budget_met * 100).toFixed(1)}% met the budget, TPOT p50 ${fixed.tpot_p50_ms.toFixed(1)} ms, ${fixed.tokens_per_s.toFixed(0)} tok/s`);

const view = router.view();
await bench.close();

const batchingPath = "loadtest/results/batching.json";
const throughputRatioC16 = existsSync(batchingPath) ? (JSON.parse(readFileSync(batchingPath, "utf8")) as { throughput_ratio_c16?: number }).throughput_ratio_c16 ?? null : null;
const result = {
  shape: describeShape(BENCH_S),
  prompt_tokens: PROMPT,
  max_tokens: MAX_TOKENS,
  batch: BATCH,
  requests: REQUESTS,
  k4_sustained_req_s: sustainedReqS,
  k4_tpot_p50_ms_full_batch: k4TpotMs,
  offered_req_s: rate,
  overload: OVERLOAD,
  budget,
  predicted_step_ms_at_full_batch: stepAtBatch,
  hysteresis: view.hysteresis,
  adaptive,
  fixed_k4: fixed,
  budget_met_adaptive: adaptive.budget_met,
  budget_met_fixed: fixed.budget_met,
  mean_chains_adaptive: adaptive.mean_chains,
  throughput_ratio_c16: throughputRatioC16,
  throughput_ratio_c16_source: batchingPath,
};
writeResult("serve", "bench:serve", result);
