// Held-out quality of a served model: the mean next-token cross-entropy (nats per token) of every
// sub-model k over the model's own held-out split, computed by the engine's own graph, so a
// quantized model is judged as it is served. Byte-level colm-kjv: models/train/data.py's split
// (every 20th chapter of the KJV) in the training's non-overlapping windows of 256 + 1 bytes. A
// model with its own tokenizer (colm-long): models/train/data_long.py's held-out documents as
// tokens (val.tok.u16), in windows of max_position + 1 tokens, as evaluate_long.py reads them.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { KvCache } from "../kernels/kv-cache.ts";
import type { ColmConfig } from "../models/config.ts";
import type { ColmEngine } from "../server/engine/engine.ts";

/** Held-out tokens: bytes for the byte-level model, token ids below 65536 for the others. */
export type Tokens = Uint8Array | Uint16Array;

export const VALIDATION_SPLIT = "models/train/data/val.bin";
export const LONG_VALIDATION_SPLIT = "models/train/data-long/val.tok.u16";

/** The validation split's bytes; explains how to make it when it is missing. */
export function validationBytes(path = VALIDATION_SPLIT): Uint8Array {
  if (!existsSync(path)) throw new Error(`${path} is missing: make it with \`/usr/bin/python3 models/train/data.py models/train/data\` (needs Debian's bible-kjv)`);
  return new Uint8Array(readFileSync(path));
}

/** A model's held-out tokens and the window its loss is taken over (see the top of this file). */
export function validationSplit(dir: string, c: ColmConfig): { tokens: Tokens; context: number; split: string } {
  if (!existsSync(join(dir, "tokenizer.json"))) return { tokens: validationBytes(), context: Math.min(256, c.max_position), split: VALIDATION_SPLIT };
  if (!existsSync(LONG_VALIDATION_SPLIT)) {
    throw new Error(`${LONG_VALIDATION_SPLIT} is missing: make it with \`/usr/bin/python3 models/train/data_long.py --out models/train/data-long\` and \`bpe.py encode\` (models/train/run_long.sh, step 0)`);
  }
  const raw = readFileSync(LONG_VALIDATION_SPLIT);
  return { tokens: new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2), context: c.max_position, split: LONG_VALIDATION_SPLIT };
}

/** Mean cross-entropy per token of sub-models 1 … n over the split's windows (at most `maxWindows`, evenly spread), index k-1. */
export async function validationLoss(engine: ColmEngine, tokens: Tokens, context = 256, maxWindows = Infinity): Promise<number[]> {
  const runner = engine.runner;
  const c = runner.config;
  const all = Math.floor((tokens.length - 1) / context);
  const windows = Math.min(maxWindows, all);
  const totals = new Array<number>(c.nChains).fill(0);
  const rows = Array.from({ length: context }, (_, t) => t);
  for (let i = 0; i < windows; i++) {
    const w = Math.floor((i * all) / windows); // a subset is spread evenly over the split (evaluate_long.py's val_windows)
    const window = tokens.subarray(w * context, w * context + context + 1);
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
