// npm run bench:limits — what this machine can do at most, measured with onnxruntime itself (the
// engine's own kernels and session options), and how close the engine comes to it:
//   peak float32 GFLOP/s of large MatMuls (weights as initializers, prepacked like the model's),
//   streaming-read bandwidth (a batch-1 MatMul over a weight far larger than the caches, the way
//   decode reads weights; and a ReduceSum over a huge tensor),
// then, from loadtest/results/engine.json (npm run bench:engine, not re-measured here), prefill MFU
// and the decode roofline fraction per chain count, for bench-m and its dense baseline.
// Flags: --repeats=N (timed runs per kernel per round, median), --rounds=N (best round kept),
// --weight-mib=N (bandwidth weight size).
// Writes loadtest/results/limits.json.
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import * as ort from "onnxruntime-node";
import { parseConfig, type ColmConfig } from "../models/config.ts";
import { DataType, GraphBuilder } from "../ops/graph.ts";
import { median } from "./engine-figures.ts";
import { chain1PrefillFlops, decodeBytesPerToken, prefillFlops } from "./model-cost.ts";
import { BenchArgs, writeResult } from "./results.ts";
import { BENCH_M, DENSE_M, describeShape } from "./shapes.ts";

const args = new BenchArgs();
/** Timed runs per kernel per round (median). */
const REPEATS = args.num("repeats", 9);
/**
 * Rounds over all kernels: a kernel's figure is its best round's median. The 2 cores are shared and
 * run times here are bimodal (the same 2048³ MatMul alternates between ~190 and ~370 GFLOP/s from
 * one run to the next, with or without thread spinning); interference only ever slows a round down,
 * and rounds are interleaved across kernels so one burst of it does not sink one kernel's figure.
 */
const ROUNDS = args.num("rounds", 3);
/** Untimed runs first (at least this many, for at least WARMUP_MS): arena and output buffers, first-run slowness. */
const WARMUP_RUNS = 3;
const WARMUP_MS = 1000;
const WEIGHT_MIB = args.num("weight-mib", 256);
const THREADS = Number(process.env.COLM_THREADS) || availableParallelism();

/** MatMul shapes [M, K] × [K, N] for the compute peak: square ones and a dense-m FFN projection of a 2048-token prompt. */
const PEAK_SHAPES: [number, number, number][] = [
  [1024, 1024, 1024],
  [2048, 2048, 2048],
  [2048, 1024, 2816],
];

// ---------------------------------------------------------------- kernels and timing

/** A session with the engine's options (ops/runner.ts): every optimisation, `THREADS` intra-op threads. */
function openSession(model: Uint8Array): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(model, {
    graphOptimizationLevel: "all",
    executionMode: "sequential",
    intraOpNumThreads: THREADS,
    interOpNumThreads: 1,
    executionProviders: ["cpu"],
  });
}

/** Values in [-1, 1) from a fixed LCG: deterministic and much faster than Math.random for 10⁸ values. */
function randomFloats(count: number, seed = 1): Float32Array {
  const out = new Float32Array(count);
  let s = seed >>> 0;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** One kernel to time: a one-node model, its inputs, and the work of one run (FLOPs or bytes read). */
interface Kernel {
  what: string;
  work: number;
  /** Built per round (not held between rounds: the bandwidth kernels are hundreds of MiB). */
  model: () => Uint8Array;
  feeds: () => Record<string, ort.Tensor>;
}

/** x [M, K] (an input) × W [K, N] (an initializer, so onnxruntime prepacks it as it does the model's weights); work = 2·M·K·N FLOPs. */
function matmulKernel(m: number, k: number, n: number, work = 2 * m * k * n): Kernel {
  return {
    what: m === 1 ? `MatMul [1, ${k}] × [${k}, ${n}]` : `MatMul ${m}×${k}×${n}`,
    work,
    model: () => {
      const g = new GraphBuilder("matmul");
      const x = g.input("x", DataType.FLOAT, [m, k]);
      g.output("y", g.op("MatMul", [x, g.weight("w", [k, n], randomFloats(k * n))]), DataType.FLOAT, [m, n]);
      return g.model();
    },
    feeds: () => ({ x: new ort.Tensor("float32", randomFloats(m * k, 2), [m, k]) }),
  };
}

/**
 * Decode-like streaming: x [1, K] × W [K, N], W = `WEIGHT_MIB` MiB (far beyond the caches), so a
 * run is one pass over the prepacked weight; work = weight bytes. Two aspect ratios, since
 * onnxruntime splits the work across threads differently for each.
 */
function gemvKernels(): Kernel[] {
  const floats = (WEIGHT_MIB * 2 ** 20) / 4;
  return [4096, 16384].map((k) => matmulKernel(1, k, floats / k, 4 * floats));
}

/**
 * A read-only pass over a huge tensor: ReduceSum over the last axis of [rows, 16384] (`WEIGHT_MIB`
 * MiB), rows split across threads; work = its bytes. The tensor is an input, not an initializer:
 * onnxruntime would constant-fold a reduction of a constant.
 */
function reduceKernel(): Kernel {
  const cols = 16384;
  const rows = (WEIGHT_MIB * 2 ** 20) / 4 / cols;
  return {
    what: `ReduceSum [${rows}, ${cols}] over axis 1`,
    work: 4 * rows * cols,
    model: () => {
      const g = new GraphBuilder("reduce");
      const x = g.input("x", DataType.FLOAT, [rows, cols]);
      g.output("s", g.op("ReduceSum", [x, g.int64([1])], { keepdims: 0 }), DataType.FLOAT, [rows]);
      return g.model();
    },
    feeds: () => ({ x: new ort.Tensor("float32", randomFloats(rows * cols, 3), [rows, cols]) }),
  };
}

/** Median ms of `REPEATS` runs of `kernel` in a fresh session, after the warm-up; and its fastest run. */
async function timeRound(kernel: Kernel): Promise<{ ms: number; fastest: number }> {
  const session = await openSession(kernel.model());
  try {
    const feeds = kernel.feeds();
    const warmupStart = performance.now();
    for (let i = 0; i < WARMUP_RUNS || performance.now() - warmupStart < WARMUP_MS; i++) await session.run(feeds);
    const times: number[] = [];
    for (let r = 0; r < REPEATS; r++) {
      const t0 = performance.now();
      await session.run(feeds);
      times.push(performance.now() - t0);
    }
    return { ms: median(times), fastest: Math.min(...times) };
  } finally {
    await session.release();
  }
}

interface KernelFigure {
  what: string;
  /** FLOPs (MatMul peak) or bytes read (bandwidth) per run. */
  work: number;
  round_median_ms: number[];
  /** The best round's median. */
  ms: number;
  fastest_run_ms: number;
  /** work ÷ ms, in G per second: GFLOP/s or GB/s. */
  rate: number;
  fastest_run_rate: number;
}

/** Every kernel, `ROUNDS` times round-robin; each kernel's figure from its best round. */
async function measureKernels(kernels: Kernel[]): Promise<KernelFigure[]> {
  const rounds = kernels.map(() => ({ medians: [] as number[], fastest: Infinity }));
  for (let r = 0; r < ROUNDS; r++) {
    for (const [i, kernel] of kernels.entries()) {
      const t = await timeRound(kernel);
      rounds[i].medians.push(t.ms);
      rounds[i].fastest = Math.min(rounds[i].fastest, t.fastest);
      console.error(`round ${r + 1}: ${kernel.what}: ${t.ms.toFixed(2)} ms (${(kernel.work / t.ms / 1e6).toFixed(1)} G/s)`);
    }
  }
  return kernels.map((kernel, i) => {
    const ms = Math.min(...rounds[i].medians);
    return { what: kernel.what, work: kernel.work, round_median_ms: rounds[i].medians, ms, fastest_run_ms: rounds[i].fastest, rate: kernel.work / ms / 1e6, fastest_run_rate: kernel.work / rounds[i].fastest / 1e6 };
  });
}

// ---------------------------------------------------------------- the engine against the limits

/** The parts of loadtest/results/engine.json read here (written by npm run bench:engine). */
interface EngineResult {
  command: string;
  prompt_tokens: number;
  prefill_lengths: number[];
  decode_context_tokens: number;
  repeats: number;
  decode_tokens_per_s: Record<string, number>;
  prefill_by_length: Record<string, { full_ms: number; chain1_ms: number }>;
  dense: { prefill: Record<string, { full_ms: number }>; decode_tokens_per_s: Record<string, number> };
}

interface MfuFigure {
  flops: number;
  ms: number;
  gflops: number;
  /** Achieved FLOP/s ÷ the measured peak. */
  mfu: number;
}

interface RooflineFigure {
  bytes_per_token: number;
  tokens_per_s: number;
  gbps: number;
  /** Achieved bytes/s ÷ the measured streaming bandwidth. */
  fraction: number;
}

const mfu = (flops: number, ms: number, peakGflops: number): MfuFigure => ({ flops, ms, gflops: flops / ms / 1e6, mfu: flops / ms / 1e6 / peakGflops });

function roofline(c: ColmConfig, k: number, context: number, tokensPerS: number, bandwidthGbps: number): RooflineFigure {
  const bytes = decodeBytesPerToken(c, k, context);
  return { bytes_per_token: bytes, tokens_per_s: tokensPerS, gbps: (bytes * tokensPerS) / 1e9, fraction: (bytes * tokensPerS) / 1e9 / bandwidthGbps };
}

/** Prefill MFU per prompt length: CoLM chain-1 (+ last token at k = n), CoLM full n-chain, dense. */
function prefillMfu(e: EngineResult, colm: ColmConfig, dense: ColmConfig, peak: number): Record<string, Record<string, MfuFigure>> {
  const n = colm.nChains;
  const out: Record<string, Record<string, MfuFigure>> = {};
  for (const T of e.prefill_lengths) {
    const p = e.prefill_by_length[String(T)];
    const d = e.dense.prefill[String(T)];
    out[String(T)] = {
      colm_chain1: mfu(chain1PrefillFlops(colm, T, n), p.chain1_ms, peak),
      colm_full: mfu(prefillFlops(colm, T, n), p.full_ms, peak),
      ...(d ? { dense: mfu(prefillFlops(dense, T, 1), d.full_ms, peak) } : {}),
    };
  }
  return out;
}

/** Decode roofline per chain count k (and the dense model as "dense") at engine.json's decode context. */
function decodeRoofline(e: EngineResult, colm: ColmConfig, dense: ColmConfig, bandwidth: number): Record<string, RooflineFigure> {
  const out: Record<string, RooflineFigure> = {};
  for (let k = 1; k <= colm.nChains; k++) out[String(k)] = roofline(colm, k, e.decode_context_tokens, e.decode_tokens_per_s[String(k)], bandwidth);
  out.dense = roofline(dense, 1, e.decode_context_tokens, e.dense.decode_tokens_per_s["1"], bandwidth);
  return out;
}

// ---------------------------------------------------------------- run

const engine = JSON.parse(readFileSync("loadtest/results/engine.json", "utf8")) as EngineResult;
if (!engine.dense) throw new Error("loadtest/results/engine.json has no dense section: run npm run bench:engine (both models) first");
const colmConfig = parseConfig(BENCH_M);
const denseConfig = parseConfig(DENSE_M);

const peakKernels = PEAK_SHAPES.map(([m, k, n]) => matmulKernel(m, k, n));
const streamKernels = [...gemvKernels(), reduceKernel()];
const figures = await measureKernels([...peakKernels, ...streamKernels]);
const matmuls = figures.slice(0, peakKernels.length);
const streams = figures.slice(peakKernels.length);
const peakGflops = Math.max(...matmuls.map((f) => f.rate));
const bandwidthGbps = Math.max(...streams.map((f) => f.rate));

const mfuByLength = prefillMfu(engine, colmConfig, denseConfig, peakGflops);
const rooflineByK = decodeRoofline(engine, colmConfig, denseConfig, bandwidthGbps);
const headline = mfuByLength[String(engine.prompt_tokens)];

writeResult("limits", "bench:limits", {
  threads: THREADS,
  repeats: REPEATS,
  rounds: ROUNDS,
  warmup: { min_runs: WARMUP_RUNS, min_ms: WARMUP_MS },
  peak_gflops: peakGflops,
  bandwidth_gbps: bandwidthGbps,
  peak_gflops_fastest_run: Math.max(...matmuls.map((f) => f.fastest_run_rate)),
  bandwidth_gbps_fastest_run: Math.max(...streams.map((f) => f.fastest_run_rate)),
  definitions: {
    peak_gflops: "best over the MatMul shapes (matmul[].rate) of 2·M·K·N ÷ the best round's median run time",
    bandwidth_gbps: "best over the streaming kernels (bandwidth.kernels[].rate) of bytes read ÷ the best round's median run time",
    mfu: "matrix FLOPs of the call (loadtest/model-cost.ts callFlops) ÷ engine.json median time ÷ peak_gflops",
    decode_roofline_fraction: "(weight bytes sub-model k reads per token + KV cache read once at the decode context) × tok/s ÷ bandwidth_gbps (loadtest/model-cost.ts decodeBytesPerToken)",
  },
  matmul: matmuls,
  bandwidth: { weight_mib: WEIGHT_MIB, kernels: streams },
  engine_inputs: {
    source: "loadtest/results/engine.json",
    command: engine.command,
    repeats: engine.repeats,
    colm_shape: describeShape(BENCH_M),
    dense_shape: describeShape(DENSE_M),
    prompt_tokens: engine.prompt_tokens,
    decode_context_tokens: engine.decode_context_tokens,
  },
  prefill_mfu: {
    chain1_k4: headline.colm_chain1.mfu,
    full_k4: headline.colm_full.mfu,
    dense: headline.dense?.mfu,
    by_length: mfuByLength,
  },
  decode_roofline_fraction: Object.fromEntries(Object.entries(rooflineByK).map(([k, r]) => [k, r.fraction])),
  decode_roofline: rooflineByK,
});

// The table a reader compares.
const pct = (x: number | undefined): string => (x === undefined ? "–" : `${(100 * x).toFixed(1)}%`).padStart(9);
const num = (x: number, digits = 1): string => x.toFixed(digits).padStart(9);
const rows = [
  `machine limits (${THREADS} threads, best of ${ROUNDS} rounds' medians of ${REPEATS}): peak ${peakGflops.toFixed(1)} GFLOP/s (MatMul), streaming read ${bandwidthGbps.toFixed(1)} GB/s`,
  ...matmuls.map((f) => `  ${f.what}`.padEnd(44) + `${num(f.rate)} GFLOP/s`),
  ...streams.map((f) => `  ${f.what}`.padEnd(44) + `${num(f.rate)} GB/s`),
  `prefill MFU (engine.json, logits for the last token)`.padEnd(44) + engine.prefill_lengths.map((t) => String(t).padStart(9)).join(""),
  `  CoLM chain-1 + last token at k=${colmConfig.nChains}`.padEnd(44) + engine.prefill_lengths.map((t) => pct(mfuByLength[String(t)].colm_chain1.mfu)).join(""),
  `  CoLM full ${colmConfig.nChains}-chain`.padEnd(44) + engine.prefill_lengths.map((t) => pct(mfuByLength[String(t)].colm_full.mfu)).join(""),
  `  dense`.padEnd(44) + engine.prefill_lengths.map((t) => pct(mfuByLength[String(t)].dense?.mfu)).join(""),
  `decode, batch 1, ${engine.decode_context_tokens} tokens of context`.padEnd(44) + Object.keys(rooflineByK).map((k) => (k === "dense" ? k : `k=${k}`).padStart(9)).join(""),
  `  MB read per token`.padEnd(44) + Object.values(rooflineByK).map((r) => num(r.bytes_per_token / 1e6)).join(""),
  `  tok/s`.padEnd(44) + Object.values(rooflineByK).map((r) => num(r.tokens_per_s)).join(""),
  `  GB/s achieved`.padEnd(44) + Object.values(rooflineByK).map((r) => num(r.gbps)).join(""),
  `  roofline fraction`.padEnd(44) + Object.values(rooflineByK).map((r) => pct(r.fraction)).join(""),
];
console.log(rows.join("\n"));
