// Held-out quality of a served model: the mean next-byte cross-entropy (nats per token) of every
// sub-model k over the bundled model's validation split, computed by the engine's own graph, so a
// quantized model is judged as it is served. The split is models/train/data.py's (every 20th
// chapter of the KJV), cut into the training's non-overlapping windows of 256 + 1 tokens.
import { existsSync, readFileSync } from "node:fs";
import { KvCache } from "../kernels/kv-cache.ts";
import type { ColmEngine } from "../server/engine/engine.ts";

export const VALIDATION_SPLIT = "models/train/data/val.bin";

/** The validation split's bytes; explains how to make it when it is missing. */
export function validationBytes(path = VALIDATION_SPLIT): Uint8Array {
  if (!existsSync(path)) throw new Error(`${path} is missing: make it with \`/usr/bin/python3 models/train/data.py models/train/data\` (needs Debian's bible-kjv)`);
  return new Uint8Array(readFileSync(path));
}

/** Mean cross-entropy per token of sub-models 1 … n over the split's windows (at most `maxWindows`), index k-1. */
export async function validationLoss(engine: ColmEngine, bytes: Uint8Array, context = 256, maxWindows = Infinity): Promise<number[]> {
  const runner = engine.runner;
  const c = runner.config;
  const windows = Math.min(maxWindows, Math.floor((bytes.length - 1) / context));
  const totals = new Array<number>(c.nChains).fill(0);
  const rows = Array.from({ length: context }, (_, t) => t);
  for (let w = 0; w < windows; w++) {
    const window = bytes.subarray(w * context, w * context + context + 1);
    for (let k = 1; k <= c.nChains; k++) {
      const out = await runner.step(window.subarray(0, context), k, new KvCache(c.n_layers, c.kv_heads, c.head_dim, context), rows);
      for (let t = 0; t < context; t++) totals[k - 1] += crossEntropy(out.logits.subarray(t * c.vocab_size, (t + 1) * c.vocab_size), window[t + 1]);
    }
  }
  return totals.map((s) => s / (windows * context));
}

/** −log softmax(logits)[target], in float64. */
function crossEntropy(logits: Float32Array, target: number): number {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  return Math.log(sum) + max - logits[target];
}
