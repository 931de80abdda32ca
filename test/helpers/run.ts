// Helpers to run a checkpoint through the real onnxruntime runner in tests.
import { loadCheckpoint, type Checkpoint } from "../../models/checkpoint.ts";
import { KvCache } from "../../kernels/kv-cache.ts";
import { ModelRunner, type StepResult } from "../../ops/runner.ts";

export interface Loaded {
  ckpt: Checkpoint;
  runner: ModelRunner;
}

/** A runner on one thread whose every call writes keys and values into its reused buffers. */
export async function loadRunner(dir: string): Promise<Loaded> {
  const ckpt = loadCheckpoint(dir);
  const runner = await ModelRunner.create(ckpt, { threads: 1, reusedOutputFloats: 0 });
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
