// Engine figures for one checkpoint, measured on the engine's own prefill/decode: load time,
// resident memory per weight byte with every size ready, prefill (full size vs chain-1) by prompt
// length, and batch-1 decode tokens/s per chain count. Shared by the engine and model benchmarks.
import { readFileSync } from "node:fs";
import { KvCache } from "../kernels/kv-cache.ts";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import type { Precision } from "../models/quantized.ts";
import * as engineSteps from "./engine-steps.ts";

export interface PrefillFigures {
  /** Whole prompt at full size, logits for the last token only. */
  full_ms: number;
  /** Chain 1 over tokens 1 … T-1 (no logits), then the last token at full size (spec §5.4). */
  chain1_ms?: number;
  /** The median over repeats of full ÷ chain-1 from the same repeat (the two run back to back), and its quartiles. */
  speedup?: number;
  speedup_quartiles?: [number, number];
  max_abs_diff?: number;
}

export interface ModelFigures {
  weight_bytes: number;
  rss_over_weight_bytes: number;
  load_ms: number;
  /** By prompt length. */
  prefill: Record<string, PrefillFigures>;
  decode_tokens_per_s: Record<string, number>;
  /** The median over rounds of k=1's rate ÷ k=n's in the same round, and its quartiles (n > 1). */
  decode_k1_over_kn?: number;
  decode_k1_over_kn_quartiles?: [number, number];
}

export interface MeasureOptions {
  prompts: number[];
  /** Tokens of context (filled by chain 1) before decoding. */
  context: number;
  decodeSteps: number;
  repeats: number;
  /** The precision to load the model at (default: the checkpoint's own). */
  quant?: Precision;
}

/** The value at fraction q (0 … 1) of the sorted values (q = 0.5: the median). */
const quantile = (xs: number[], q: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * q))];
export const median = (xs: number[]): number => quantile(xs, 0.5);
/** The first and third quartiles. */
const quartiles = (xs: number[]): [number, number] => [quantile(xs, 0.25), quantile(xs, 0.75)];

const rssBytes = (): number => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
};

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const r = await fn();
  return [performance.now() - t0, r];
}

/** `count` token ids below the engine's vocabulary, spread by `seed`. */
const tokensOf = (engine: ColmEngine, count: number, seed: number): number[] =>
  Array.from({ length: count }, (_, i) => (i * 7919 + seed * 104729) % engine.runner.config.vocab_size);

const cacheFor = (engine: ColmEngine, tokens: number): KvCache => {
  const c = engine.runner.config;
  return new KvCache(c.n_layers, c.kv_heads, c.head_dim, tokens);
};

/** A cache for decoding `steps` tokens after `context` tokens that chain 1 prefills. */
async function decodeContext(engine: ColmEngine, context: number, steps: number): Promise<KvCache> {
  const cache = cacheFor(engine, context + steps + 1);
  await engineSteps.prefill(engine, tokensOf(engine, context, 2), 1, cache);
  return cache;
}

/** Batch-1 decode tokens/s: `steps` tokens at `chains` chains after the cache's first `context` tokens. */
async function decodeRate(engine: ColmEngine, chains: number, cache: KvCache, context: number, steps: number): Promise<number> {
  const V = engine.runner.config.vocab_size;
  let tok = 1;
  const step = async (s: number): Promise<void> => {
    await engineSteps.decode(engine, tok, chains, cache);
    tok = (tok * 31 + s) % V;
  };
  // Untimed steps first, for up to WARM_MS: after another session ran, its onnxruntime worker thread
  // still spins (tens of ms) on one of the two cores; timing from the first step would charge
  // that to this side.
  cache.truncate(context);
  for (let s = 0, t0 = performance.now(); s < steps && performance.now() - t0 < WARM_MS; s++) await step(s); // within the cache's capacity
  cache.truncate(context);
  const [ms] = await timed(async () => {
    for (let s = 0; s < steps; s++) await step(s);
  });
  return (steps * 1000) / ms;
}

const WARM_MS = 60;

export async function measureModel(dir: string, o: MeasureOptions): Promise<ModelFigures> {
  const rss0 = rssBytes();
  const t0 = performance.now();
  const engine = await loadModel(dir, { quant: o.quant });
  const load_ms = performance.now() - t0;
  const c = engine.runner.config;
  const n = c.nChains;
  // Warm every size once so all of them are ready before memory is read.
  for (let k = 1; k <= n; k++) await engineSteps.prefill(engine, tokensOf(engine, 8, k), k, cacheFor(engine, 8), false);
  // Load-time buffers (checkpoint, graph bytes) are garbage now; collect them before reading RSS.
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("run with node --expose-gc (npm run bench:engine does)");
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 100));
  }
  const rss = rssBytes() - rss0;

  const prefill: Record<string, PrefillFigures> = {};
  for (const T of o.prompts) {
    const prompt = tokensOf(engine, T, 1);
    const full: number[] = [];
    const split: number[] = [];
    let diff = 0;
    // One cache, emptied before each run, as the server's scheduler keeps one for its lifetime: a
    // fresh 32 MiB cache per run would time first-touch page faults (30–90 ms here) that serving
    // never pays. Two untimed runs of each path first: onnxruntime grows its arena for a new prompt
    // length over the first calls (seen here: 850 ms, then 540, then a steady 220 for the same
    // chain-1 prefill; 2990, 3360, then a steady 1100–1300 for the full one).
    const kv = cacheFor(engine, T);
    const run = (chain1: boolean): Promise<Float32Array> => {
      kv.truncate(0);
      return engineSteps.prefill(engine, prompt, n, kv, chain1);
    };
    for (let w = 0; w < 2; w++) {
      await run(false);
      if (n > 1) await run(true);
    }
    for (let r = 0; r < o.repeats; r++) {
      // Full then chain-1, then chain-1 then full: neither path always runs first.
      const paths = n === 1 ? [false] : r % 2 === 0 ? [false, true] : [true, false];
      const logits: Float32Array[] = [];
      for (const chain1 of paths) {
        const [ms, out] = await timed(() => run(chain1));
        (chain1 ? split : full).push(ms);
        logits.push(out);
      }
      if (n > 1) for (let i = 0; i < logits[0].length; i++) diff = Math.max(diff, Math.abs(logits[0][i] - logits[1][i]));
    }
    const speedups = full.map((f, r) => f / split[r]);
    prefill[String(T)] = n > 1 ? { full_ms: median(full), chain1_ms: median(split), speedup: median(speedups), speedup_quartiles: quartiles(speedups), max_abs_diff: diff } : { full_ms: median(full) };
  }

  // Decode: batch 1 with o.context tokens cached (filled by chain 1). Every round runs every chain
  // count, in ascending then descending order, so the machine's drift over minutes lands on all of
  // them and k=1 ÷ k=n is taken within each round.
  const rates: number[][] = Array.from({ length: n }, () => []);
  const base = await decodeContext(engine, o.context, o.decodeSteps);
  for (let r = 0; r < o.repeats; r++) {
    for (let j = 0; j < n; j++) {
      const k = r % 2 === 0 ? j + 1 : n - j;
      rates[k - 1].push(await decodeRate(engine, k, base, o.context, o.decodeSteps));
    }
  }
  await engine.close();
  const decode = Object.fromEntries(rates.map((xs, i) => [String(i + 1), median(xs)]));
  const ratios = rates[0].map((x, r) => x / rates[n - 1][r]);
  const kRatio = n > 1 ? { decode_k1_over_kn: median(ratios), decode_k1_over_kn_quartiles: quartiles(ratios) } : {};
  return { weight_bytes: engine.runner.weightBytes, rss_over_weight_bytes: rss / engine.runner.weightBytes, load_ms, prefill, decode_tokens_per_s: decode, ...kRatio };
}

export interface PairedDecode {
  /** Batch-1 decode tokens/s of each side: the median over rounds. */
  a_tokens_per_s: number;
  b_tokens_per_s: number;
  /** The median over rounds of a's rate ÷ b's rate in the same round, and its quartiles. */
  a_over_b: number;
  a_over_b_quartiles: [number, number];
  rounds: number;
}

/**
 * Batch-1 decode of two checkpoints (each at its own chain count) in alternating rounds, both
 * loaded at once, so a slow spell of a shared machine (this one's speed drifts by 20–30% over
 * minutes) lands on both sides of each round's ratio instead of on whichever ran then.
 */
export async function pairedDecode(a: { dir: string; chains: number }, b: { dir: string; chains: number }, o: { context: number; steps: number; rounds: number }): Promise<PairedDecode> {
  const sides: { engine: ColmEngine; cache: KvCache; chains: number }[] = [];
  for (const side of [a, b]) {
    const engine = await loadModel(side.dir);
    sides.push({ engine, cache: await decodeContext(engine, o.context, o.steps), chains: side.chains });
  }
  const rate = (s: (typeof sides)[number]): Promise<number> => decodeRate(s.engine, s.chains, s.cache, o.context, o.steps);
  for (const s of sides) await rate(s); // warm-up
  const ra: number[] = [];
  const rb: number[] = [];
  for (let r = 0; r < o.rounds; r++) {
    // a then b, then b then a: neither side always runs first after the switch.
    if (r % 2 === 0) {
      ra.push(await rate(sides[0]));
      rb.push(await rate(sides[1]));
    } else {
      rb.push(await rate(sides[1]));
      ra.push(await rate(sides[0]));
    }
  }
  for (const s of sides) await s.engine.close();
  const ratios = ra.map((x, i) => x / rb[i]);
  return { a_tokens_per_s: median(ra), b_tokens_per_s: median(rb), a_over_b: median(ratios), a_over_b_quartiles: quartiles(ratios), rounds: o.rounds };
}

/** The fields engine.json and engine-q8/q4.json share: a model's figures at prompt length `prompt`. */
export function engineFields(m: ModelFigures, prompt: number) {
  const p = m.prefill[String(prompt)];
  return {
    prefill_speedup: p.speedup,
    prefill_speedup_quartiles: p.speedup_quartiles,
    prefill_max_abs_diff: p.max_abs_diff,
    full_prefill_ms: p.full_ms,
    chain1_prefill_ms: p.chain1_ms,
    decode_tokens_per_s: m.decode_tokens_per_s,
    decode_ratio_k1_over_k4: m.decode_k1_over_kn,
    decode_ratio_k1_over_k4_quartiles: m.decode_k1_over_kn_quartiles,
    rss_over_weight_bytes: m.rss_over_weight_bytes,
    weight_bytes: m.weight_bytes,
    load_ms: m.load_ms,
    prefill_by_length: m.prefill,
  };
}
