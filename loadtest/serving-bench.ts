// What bench:serve and bench:sweep share: bench-s served by the real HTTP server in this process
// (SSE clients on loopback), the router's cost model warmed up, and what a fixed k=4 sustains
// with its batch full: both benchmarks derive their offered loads and latency budget from it.
import { createApp, listeningUrl, type ColmApp } from "../server/api/app.ts";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import { parseMix } from "./arrivals.ts";
import { runLoad, type LoadOptions } from "./loadgen.ts";
import { BENCH_S, benchCheckpoint } from "./shapes.ts";

export interface ServingBenchOptions {
  prompt: number;
  maxTokens: number;
  /** Sequences per batched step, and the closed loop's concurrency. */
  batch: number;
  seed: number;
  /** Requests of the closed loop that measures what k=4 sustains. */
  saturationRequests: number;
}

export type BaseLoad = Omit<LoadOptions, "mix" | "rate" | "concurrency" | "requests">;

export interface ServingBench {
  engine: ColmEngine;
  colm: ColmApp;
  /** Load options every run shares (server URL, prompt and output lengths, seed, greedy). */
  base: BaseLoad;
  /** Requests/s a fixed k=4 sustains with everything in flight, and its TPOT p50 there. */
  k4SustainedReqS: number;
  k4TpotMs: number;
  close(): Promise<void>;
}

export async function startServingBench(o: ServingBenchOptions): Promise<ServingBench> {
  const engine = await loadModel(benchCheckpoint(BENCH_S), { maxBatch: o.batch });
  const colm = createApp(engine, { maxRunning: o.batch, maxWaiting: 100_000, log: () => undefined });
  const server = await colm.listen(0, "127.0.0.1");

  const t0 = performance.now();
  await colm.calibrate();
  console.log(`warm-up: ${(performance.now() - t0).toFixed(0)} ms`);

  const base: BaseLoad = {
    url: listeningUrl(server),
    mode: "sse",
    durationS: 600,
    graceS: 120,
    promptTokens: { min: o.prompt, max: o.prompt },
    promptForm: "ids",
    idLow: 0,
    idHigh: BENCH_S.vocab_size,
    maxTokens: { min: o.maxTokens, max: o.maxTokens },
    seed: o.seed,
    temperature: 0,
  };

  // What k=4 sustains: everything in flight at once, the batch always full.
  const sustained = await runLoad({ ...base, concurrency: o.batch, requests: o.saturationRequests, mix: parseMix("model=c4") });
  const k4SustainedReqS = sustained.summary.requestThroughput;
  const k4TpotMs = sustained.summary.tpotMs.p50;
  console.log(`k=4 sustains ${k4SustainedReqS.toFixed(2)} req/s (${sustained.summary.tokenThroughput.toFixed(0)} tok/s), TPOT p50 ${k4TpotMs.toFixed(1)} ms at ${o.batch} in flight`);

  return {
    engine,
    colm,
    base,
    k4SustainedReqS,
    k4TpotMs,
    async close() {
      await colm.close();
      await engine.close();
    },
  };
}

/** A latency budget as a fraction of k=4's TPOT at full batch, to 0.1 ms. */
export const tpotBudgetMs = (fraction: number, k4TpotMs: number): number => Math.round(fraction * k4TpotMs * 10) / 10;
