// Helpers to run a checkpoint through the real onnxruntime runner in tests.
import { loadCheckpoint, type Checkpoint } from "../../models/checkpoint.ts";
import { KvCache } from "../../kernels/kv-cache.ts";
import { ModelRunner, type StepResult } from "../../ops/runner.ts";
import { bitsOf, type Precision } from "../../models/quantized.ts";
import { quantizeCheckpoint } from "../../kernels/quantize.ts";
import type { AccuracyLevel } from "../../ops/graph.ts";

/**
 * The precisions the model tests run at. Quantized ones run with int8 activations (what the server
 * runs) on the native kernel, as the server runs them, and on onnxruntime's graph (MatMulNBits at
 * accuracy level 4, where the native kernel is unavailable or off); q4 also at level 0 (float32
 * compute on the quantized weights: the quantized model's exact arithmetic, onnxruntime only).
 */
export interface PrecisionUnderTest {
  precision: Precision;
  accuracyLevel?: AccuracyLevel;
  native?: "off";
  label: string;
}
export const PRECISIONS_UNDER_TEST: readonly PrecisionUnderTest[] = [
  { precision: "f32", label: "f32" },
  { precision: "q8", accuracyLevel: 4, label: "q8" },
  { precision: "q4", accuracyLevel: 4, label: "q4" },
  { precision: "q8", accuracyLevel: 4, native: "off", label: "q8, onnxruntime only" },
  { precision: "q4", accuracyLevel: 4, native: "off", label: "q4, onnxruntime only" },
  { precision: "q4", accuracyLevel: 0, label: "q4, float32 compute" },
];

/**
 * How far two ways of computing the same logits may differ (e.g. a prompt at once, or token by
 * token from the cache): 1e-5 in float32 arithmetic. With int8 activations (accuracy level 4) a
 * float32 rounding difference of 1e-7 upstream can move an activation across an int8 rounding
 * step, 1/127 of its block's largest value; 1% of the largest logit bounds such a step here.
 */
export function pathTolerance(p: PrecisionUnderTest, logits: ArrayLike<number>): number {
  if (p.accuracyLevel !== 4) return 1e-5;
  let max = 0;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, Math.abs(logits[i]));
  return 0.01 * max;
}
/** The tiny test models' chains are 16 wide: the block size that divides them. */
export const TEST_BLOCK_SIZE = 16;

export interface Loaded {
  ckpt: Checkpoint;
  runner: ModelRunner;
}

/**
 * A runner on one thread whose every call writes keys and values into its reused buffers, at
 * `precision` (quantized at load; `ckpt.weights` are then the dequantized values the graph runs).
 */
export async function loadRunner(dir: string, precision: Precision = "f32", accuracyLevel?: AccuracyLevel, native?: "off"): Promise<Loaded> {
  const bits = bitsOf(precision);
  const ckpt = bits ? quantizeCheckpoint(loadCheckpoint(dir), bits, TEST_BLOCK_SIZE) : loadCheckpoint(dir);
  const runner = await ModelRunner.create(ckpt, { threads: 1, reusedOutputFloats: 0, accuracyLevel, native });
  return { ckpt, runner };
}

export const range = (n: number, from = 0): number[] => Array.from({ length: n }, (_, i) => from + i);

/** A fresh cache for a runner's model. */
export function newCache(runner: ModelRunner): KvCache {
  return new KvCache(runner.config.n_layers, runner.config.kv_heads, runner.config.head_dim);
}

/**
 * Whole-sequence forward at `chains` from an empty cache, logits for every row; the filled cache
 * too. The keys and values are copies (the runner's own are views it reuses on its next call).
 */
export async function fullForward(runner: ModelRunner, tokens: number[], chains: number): Promise<StepResult & { cache: KvCache }> {
  const cache = newCache(runner);
  const out = await runner.step(tokens, chains, cache, range(tokens.length));
  cache.append(out.newKeys, out.newValues, tokens.length);
  return { ...out, newKeys: out.newKeys.map((k) => k.slice()), newValues: out.newValues.map((v) => v.slice()), cache };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Columns [0, width) of a row-major [rows, cols] matrix. */
export function leadingColumns(x: Float32Array, rows: number, cols: number, width: number): Float32Array {
  const out = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * cols, r * cols + width), r * width);
  return out;
}
