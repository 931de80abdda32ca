// npm run profile:step -- [--shape bench-m|bench-s] [--quant f32|q8|q4] [--chains 4] [--batch 1]
//   [--context 128] [--steps 40]
// Where a decode step's time goes: onnxruntime's own profiler over --steps decode steps of a bench
// shape (after a --context-token prefill), summed per operator type, per step. The
// engine's graph and session options, nothing else running in the session. Prints the table; for
// ops/README.md's notes on what a step costs, not a benchmark (profiling adds its own overhead).
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import * as ort from "onnxruntime-node";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { KvCache } from "../kernels/kv-cache.ts";
import { ModelRunner } from "../ops/runner.ts";
import { BenchArgs } from "./results.ts";
import { BENCH_M, BENCH_S, benchCheckpoint, quantizedBenchCheckpoint } from "./shapes.ts";

const args = new BenchArgs();
const shape = (args.get("shape") ?? "bench-m") === "bench-s" ? BENCH_S : BENCH_M;
const quant = args.get("quant") ?? "q4";
const CHAINS = args.num("chains", 4);
const BATCH = args.num("batch", 1);
const CONTEXT = args.num("context", 128);
const STEPS = args.num("steps", 40);
/** --profile false: the wall time of a step only (the profiler's own overhead left out). */
const PROFILE = args.get("profile") !== "false";
/** --config key=value,…: onnxruntime session config entries (e.g. session.intra_op.allow_spinning=0). */
const CONFIG = Object.fromEntries((args.get("config") ?? "").split(",").filter(Boolean).map((kv) => kv.split("=") as [string, string]));
/** --parallel N: onnxruntime's parallel executor with N inter-op threads (independent nodes at once). */
const PARALLEL = args.num("parallel", 0);

const dir = quant === "f32" ? benchCheckpoint(shape) : quantizedBenchCheckpoint(shape, quant as "q8" | "q4");
const prefix = join(tmpdir(), `colm-profile-${process.pid}`);
// The runner's session options plus the profiler (onnxruntime-node has no per-run switch).
const create = ort.InferenceSession.create.bind(ort.InferenceSession) as (m: Uint8Array, o: ort.InferenceSession.SessionOptions) => Promise<ort.InferenceSession>;
const modes = (o: ort.InferenceSession.SessionOptions): ort.InferenceSession.SessionOptions => (PARALLEL ? { ...o, executionMode: "parallel", interOpNumThreads: PARALLEL } : o);
const extra = (o: ort.InferenceSession.SessionOptions): ort.InferenceSession.SessionOptions => ({ ...modes(o), ...(PROFILE ? { enableProfiling: true, profileFilePrefix: prefix } : {}), extra: CONFIG });
(ort.InferenceSession as { create: unknown }).create = (m: Uint8Array, o: ort.InferenceSession.SessionOptions) => create(m, extra(o));
const ckpt = loadCheckpoint(dir);
const runner = await ModelRunner.create(ckpt, { log: () => {}, native: "off" }); // onnxruntime's graph is what is profiled
const c = ckpt.config;
const cache = new KvCache(c.n_layers, c.kv_heads, c.head_dim, CONTEXT + STEPS + 8, BATCH);
const tokens = Array.from({ length: BATCH }, (_, b) => Array.from({ length: CONTEXT }, (_, i) => (i * 7 + b) % c.vocab_size));
const pre = await runner.stepRows(tokens, 1, cache, []);
cache.append(pre.newKeys, pre.newValues, CONTEXT);
const rows = Array.from({ length: BATCH }, (_, b) => b);
const step = async () => {
  const out = await runner.stepRows(rows.map((b) => [b + 1]), CHAINS, cache, rows);
  cache.append(out.newKeys, out.newValues, 1);
};
for (let i = 0; i < 5; i++) await step(); // warm-up, left out below
const t0 = performance.now();
for (let i = 0; i < STEPS; i++) await step();
const wallMs = (performance.now() - t0) / STEPS;
const label = `${shape.name} ${quant} k=${CHAINS} batch ${BATCH} context ${CONTEXT}: ${wallMs.toFixed(2)} ms a step (wall`;
if (!PROFILE) {
  console.log(`${label})`);
  await runner.close();
  process.exit(0);
}
// onnxruntime writes the profile when asked to end it, under the prefix and a date of its own.
(runner as unknown as { session: ort.InferenceSession }).session.endProfiling();
await runner.close();
const name = readdirSync(tmpdir()).find((f) => f.startsWith(basename(prefix)))!;
const file = join(tmpdir(), name);

interface Event {
  cat: string;
  name: string;
  dur: number;
  args?: { op_name?: string };
}
const events = JSON.parse(readFileSync(file, "utf8")) as Event[];
rmSync(file, { force: true });
// The last STEPS runs: their node events come after the run before them ends.
const runIdx = events.flatMap((e, i) => (e.cat === "Session" && e.name === "model_run" ? [i] : []));
const timed = runIdx.slice(-STEPS).map((i) => events[i]);
const from = runIdx[runIdx.length - STEPS - 1] ?? -1;
const nodes = events.filter((e, i) => i > from && e.cat === "Node" && e.name.endsWith("_kernel_time"));
const byOp = new Map<string, { us: number; count: number }>();
for (const e of nodes) {
  const op = e.args?.op_name ?? "?";
  const s = byOp.get(op) ?? { us: 0, count: 0 };
  s.us += e.dur;
  s.count += 1;
  byOp.set(op, s);
}
const runUs = timed.reduce((a, e) => a + e.dur, 0) / STEPS;
// An If's time holds its branch's nodes, which are listed too: the total counts leaf kernels only.
const kernelUs = [...byOp].reduce((a, [op, s]) => (op === "If" ? a : a + s.us), 0) / STEPS;
console.log(`${label}, profiling on), model_run ${(runUs / 1000).toFixed(2)} ms, kernels ${(kernelUs / 1000).toFixed(2)} ms`);
console.log("op type | nodes a step | ms a step | share of leaf kernel time (If: its branches' time, not counted in the total)");
for (const [op, s] of [...byOp].sort((a, b) => b[1].us - a[1].us)) {
  console.log(`${op} | ${(s.count / STEPS).toFixed(0)} | ${(s.us / STEPS / 1000).toFixed(3)} | ${op === "If" ? "–" : `${((100 * s.us) / STEPS / kernelUs).toFixed(1)}%`}`);
}
