// npm run bench:alternatives — what a user would run instead of one elastic CoLM-Air model: four
// separate dense models of widths d_1 … d_4 of bench-m, one per size, served from one process.
// Measured on this machine in one run:
//   memory: resident memory of a fresh process holding the four dense sessions vs one holding
//     bench-m with every size ready (each in its own child process, so neither pollutes the other),
//     and the weight bytes of each;
//   switching size mid-conversation with a 1024-token context: the dense deployment must prefill
//     the whole context on the target model before its next token; CoLM-Air runs the next token at
//     the target chain count against the cache it already has (spec §5.5).
// Flags: --context=N (tokens, default 1024), --repeats=N (dense switches, default 5),
// --step-repeats=N (CoLM switching steps, default 20). Writes loadtest/results/alternatives.json.
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parameterCount } from "../models/checkpoint.ts";
import { parseConfig, type ColmConfigJson } from "../models/config.ts";
import { KvCache } from "../kernels/kv-cache.ts";
import { cachedGraph } from "../ops/graph-cache.ts";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import { median } from "./engine-figures.ts";
import { BenchArgs, writeResult } from "./results.ts";
import { BENCH_M, DENSE_M, benchCheckpoint, describeShape } from "./shapes.ts";
import * as engineSteps from "./engine-steps.ts";

const args = new BenchArgs();
const CONTEXT = args.num("context", 1024);
const REPEATS = args.num("repeats", 5);
const STEP_REPEATS = args.num("step-repeats", 20);

// ---------------------------------------------------------------- the dense alternatives

/**
 * The dense model as wide as bench-m's first k chains (d_k): one chain holding their query heads
 * and FFN width, the same depth, head_dim, kv_heads and vocabulary. The widest is bench-m's dense
 * baseline itself (DENSE_M), so its cached checkpoint and graph are shared with bench:engine.
 */
function denseOfWidth(k: number): ColmConfigJson {
  const sum = (xs: readonly number[]): number => xs.slice(0, k).reduce((a, b) => a + b, 0);
  const heads = sum(BENCH_M.chain_heads);
  const ffn = sum(BENCH_M.ffn_chain_dims);
  if (k === BENCH_M.chain_heads.length) {
    if (DENSE_M.chain_heads[0] !== heads || DENSE_M.ffn_chain_dims[0] !== ffn) throw new Error("DENSE_M is not bench-m's full width");
    return DENSE_M;
  }
  return { ...BENCH_M, name: `dense-d${heads * BENCH_M.head_dim}`, chain_heads: [heads], ffn_chain_dims: [ffn] };
}

const CHAIN_COUNTS = BENCH_M.chain_heads.map((_, i) => i + 1);
const DENSE = CHAIN_COUNTS.map(denseOfWidth);

/** Weight bytes as the engine counts them (float32 parameters, models/checkpoint.ts). */
const weightBytes = (json: ColmConfigJson): number => 4 * parameterCount(parseConfig(json));

// ---------------------------------------------------------------- resident memory (child processes)

interface Resident {
  /** VmRSS of the process after loading and warming, load-time garbage collected. */
  rss_bytes: number;
  /** The same minus the process's RSS before loading anything (node, tsx, onnxruntime's library). */
  loaded_bytes: number;
  weight_bytes: number;
}

const rssBytes = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))![1]) * 1024;

/** Two or more collections with pauses: load-time buffers (graph bytes, checkpoint reads) are garbage by now. */
async function collectGarbage(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("run with node --expose-gc (npm run bench:alternatives does)");
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A few tokens through every chain count of `engine`, so every size has run once (arena, buffers). */
async function warmEverySize(engine: ColmEngine): Promise<void> {
  const c = engine.runner.config;
  for (let k = 1; k <= c.nChains; k++) await engineSteps.prefill(engine, [1, 2, 3, 4, 5, 6, 7, 8], k, new KvCache(c.n_layers, c.kv_heads, c.head_dim, 8), false);
}

/** Child-process side: load every config in `group`, warm it, print what is resident as JSON. */
async function reportResident(group: ColmConfigJson[]): Promise<void> {
  await collectGarbage();
  const before = rssBytes();
  const engines: ColmEngine[] = [];
  for (const json of group) {
    const engine = await loadModel(benchCheckpoint(json));
    await warmEverySize(engine);
    engines.push(engine);
  }
  await collectGarbage();
  const rss = rssBytes();
  const resident: Resident = { rss_bytes: rss, loaded_bytes: rss - before, weight_bytes: group.map(weightBytes).reduce((a, b) => a + b, 0) };
  console.log(JSON.stringify(resident));
  for (const e of engines) await e.close();
}

/** Parent side: what a fresh process holding `group` ("colm" or "dense") has resident. */
function residentInChild(group: "colm" | "dense"): Promise<Resident> {
  const script = fileURLToPath(import.meta.url);
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [...process.execArgv, script, `--child=${group}`], { maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`resident-memory child (${group}) failed: ${stderr.trim() || err.message}`));
      const last = stdout.trim().split("\n").at(-1) ?? "";
      resolve(JSON.parse(last) as Resident);
    });
  });
}

// ---------------------------------------------------------------- switching size mid-conversation

const V = BENCH_M.vocab_size;
/** The conversation so far (same ids for every model) and the token the switch happens at. */
const conversation = Array.from({ length: CONTEXT }, (_, i) => (i * 7919 + 104729) % V);
const NEXT_TOKEN = 42;

const cacheFor = (engine: ColmEngine, tokens: number): KvCache => {
  const c = engine.runner.config;
  return new KvCache(c.n_layers, c.kv_heads, c.head_dim, tokens);
};

async function timedMs(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/**
 * CoLM-Air: the conversation is in the shared cache (filled by chain 1, spec §5.4); switching to k
 * is the next decode step at k (spec §5.5). Targets are visited round-robin, so every timed step
 * follows a step at another chain count: each is a real switch. Median ms per target k.
 */
async function colmSwitchMs(): Promise<Record<string, number>> {
  const engine = await loadModel(benchCheckpoint(BENCH_M));
  const cache = cacheFor(engine, CONTEXT + 2);
  await engineSteps.prefill(engine, conversation, 1, cache);
  const times = new Map<number, number[]>(CHAIN_COUNTS.map((k) => [k, []]));
  const step = async (k: number): Promise<number> => {
    const ms = await timedMs(() => engineSteps.decode(engine, NEXT_TOKEN, k, cache));
    cache.truncate(CONTEXT);
    return ms;
  };
  for (const k of CHAIN_COUNTS) await step(k); // untimed: first step of each size
  for (let r = 0; r < STEP_REPEATS; r++) for (const k of CHAIN_COUNTS) times.get(k)!.push(await step(k));
  await engine.close();
  return Object.fromEntries(CHAIN_COUNTS.map((k) => [String(k), median(times.get(k)!)]));
}

interface DenseSwitch {
  /** The whole conversation through the target model (one call, as a dense server prefills). */
  reprefill_ms: number;
  /** Then the next token, against the rebuilt cache. */
  first_token_ms: number;
  /** Both, per repeat (median of the sums). */
  switch_ms: number;
}

/** Dense: switching to the model of width d_k = prefilling the conversation on it, then the next token. */
async function denseSwitch(json: ColmConfigJson): Promise<DenseSwitch> {
  const engine = await loadModel(benchCheckpoint(json));
  const once = async (): Promise<[number, number]> => {
    const cache = cacheFor(engine, CONTEXT + 1);
    const prefill = await timedMs(() => engineSteps.prefill(engine, conversation, 1, cache, false));
    const first = await timedMs(() => engineSteps.decode(engine, NEXT_TOKEN, 1, cache));
    return [prefill, first];
  };
  await once(); // untimed: onnxruntime grows its arena for a new prompt length on the first call
  const runs: [number, number][] = [];
  for (let r = 0; r < REPEATS; r++) runs.push(await once());
  await engine.close();
  return { reprefill_ms: median(runs.map((r) => r[0])), first_token_ms: median(runs.map((r) => r[1])), switch_ms: median(runs.map((r) => r[0] + r[1])) };
}

// ---------------------------------------------------------------- run

async function main(): Promise<void> {
  // Checkpoints and graphs first (cached; the first time ≈ a minute), so no child builds them while measured.
  for (const json of [BENCH_M, ...DENSE]) await cachedGraph(benchCheckpoint(json), undefined, (m) => console.error(m));

  console.error("resident memory: bench-m (every size ready) and the four dense models, each in a fresh process …");
  const colmResident = await residentInChild("colm");
  const denseResident = await residentInChild("dense");

  console.error(`switching size with ${CONTEXT} tokens of context …`);
  const colm = await colmSwitchMs();
  const dense: DenseSwitch[] = [];
  for (const json of DENSE) dense.push(await denseSwitch(json));

  const bySize = Object.fromEntries(
    CHAIN_COUNTS.map((k, i) => [
      String(k),
      { width: parseConfig(DENSE[i]).hidden, dense_model: DENSE[i].name, ...dense[i], colm_switch_ms: colm[String(k)], dense_over_colm: dense[i].switch_ms / colm[String(k)] },
    ]),
  );
  writeResult("alternatives", "bench:alternatives", {
    colm_shape: describeShape(BENCH_M),
    dense_shapes: DENSE.map((json) => ({ shape: describeShape(json), width: parseConfig(json).hidden, weight_bytes: weightBytes(json) })),
    context_tokens: CONTEXT,
    repeats: REPEATS,
    step_repeats: STEP_REPEATS,
    memory: {
      colm: colmResident,
      dense_four: denseResident,
      rss_ratio_dense_over_colm: denseResident.rss_bytes / colmResident.rss_bytes,
      loaded_ratio_dense_over_colm: denseResident.loaded_bytes / colmResident.loaded_bytes,
      weight_ratio_dense_over_colm: denseResident.weight_bytes / colmResident.weight_bytes,
    },
    switch_cost_ratio: Object.fromEntries(Object.entries(bySize).map(([k, s]) => [k, s.dense_over_colm])),
    switch_by_target: bySize,
  });

  const mib = (b: number): string => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const f = (x: number, digits = 1): string => x.toFixed(digits).padStart(10);
  console.log(
    [
      `memory (fresh process, after gc)       resident    loaded   weights`,
      `  bench-m, every size ready       ${[colmResident.rss_bytes, colmResident.loaded_bytes, colmResident.weight_bytes].map((b) => mib(b).padStart(10)).join("")}`,
      `  four dense models d_1 … d_4     ${[denseResident.rss_bytes, denseResident.loaded_bytes, denseResident.weight_bytes].map((b) => mib(b).padStart(10)).join("")}`,
      `  dense / CoLM                    ${f(denseResident.rss_bytes / colmResident.rss_bytes, 2)}${f(denseResident.loaded_bytes / colmResident.loaded_bytes, 2)}${f(denseResident.weight_bytes / colmResident.weight_bytes, 2)}`,
      `switch size with ${CONTEXT} tokens of context (ms, medians)`,
      `  target                          ${CHAIN_COUNTS.map((k) => `d=${parseConfig(DENSE[k - 1]).hidden}`.padStart(10)).join("")}`,
      `  dense: re-prefill + next token  ${CHAIN_COUNTS.map((k) => f(bySize[String(k)].switch_ms)).join("")}`,
      `  CoLM: next token at k           ${CHAIN_COUNTS.map((k) => f(bySize[String(k)].colm_switch_ms)).join("")}`,
      `  dense / CoLM                    ${CHAIN_COUNTS.map((k) => f(bySize[String(k)].dense_over_colm)).join("")}`,
    ].join("\n"),
  );
}

const child = args.get("child");
if (child === "colm") await reportResident([BENCH_M]);
else if (child === "dense") await reportResident(DENSE);
else await main();
