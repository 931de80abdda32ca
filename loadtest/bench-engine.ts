// npm run bench:engine — engine benchmark on bench-m (spec-conformant random checkpoints):
// chain-1 prefill speedup, decode tokens/s per chain count, resident memory per weight byte,
// and the same figures for a dense model of the same full width. Writes loadtest/results/engine.json.
import { existsSync, mkdirSync, writeFileSync, readFileSync } from "node:fs";
import { cpus, availableParallelism } from "node:os";
import { join } from "node:path";
import type { ColmConfigJson } from "../models/config.ts";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { writeRandomCheckpoint } from "../models/random.ts";
import { KvCache } from "../kernels/kv-cache.ts";
import { ModelRunner } from "../ops/runner.ts";

const BENCH_M: ColmConfigJson = {
  architecture: "colm-air",
  name: "bench-m",
  vocab_size: 32000,
  n_layers: 16,
  head_dim: 64,
  chain_heads: [4, 4, 4, 4],
  kv_heads: 4,
  ffn_chain_dims: [704, 704, 704, 704],
  rope_theta: 10000,
  norm_eps: 1e-5,
  max_position: 4096,
  tie_embeddings: false,
};
const DENSE_M: ColmConfigJson = { ...BENCH_M, name: "dense-m", chain_heads: [16], ffn_chain_dims: [2816] };

const args = new Map(process.argv.slice(2).map((a) => a.replace(/^--/, "").split("=") as [string, string]));
const PROMPT = Number(args.get("prompt") ?? 1024);
const CONTEXT = Number(args.get("context") ?? 512);
const DECODE_STEPS = Number(args.get("steps") ?? 24);
const REPEATS = Number(args.get("repeats") ?? 3);

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rssBytes = (): number => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
};

function checkpoint(config: ColmConfigJson): string {
  const dir = join(".cache", "bench", String(config.name));
  if (!existsSync(join(dir, "model.safetensors"))) {
    console.error(`writing random checkpoint ${dir} …`);
    writeRandomCheckpoint(dir, config, 1234);
  }
  return dir;
}

const tokensOf = (n: number, seed: number): number[] => Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % 32000);

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const r = await fn();
  return [performance.now() - t0, r];
}

interface ModelFigures {
  weight_bytes: number;
  rss_over_weight_bytes: number;
  full_prefill_ms: number;
  chain1_prefill_ms?: number;
  prefill_speedup?: number;
  prefill_max_abs_diff?: number;
  decode_tokens_per_s: Record<string, number>;
}

async function measure(config: ColmConfigJson): Promise<ModelFigures> {
  const dir = checkpoint(config);
  const rss0 = rssBytes();
  let ckpt: ReturnType<typeof loadCheckpoint> | null = loadCheckpoint(dir);
  const runner = await ModelRunner.create(ckpt, {});
  const c = ckpt.config;
  const n = c.nChains;
  ckpt = null;
  const fresh = (): KvCache => new KvCache(c.n_layers, c.kv_heads, c.head_dim, PROMPT + 8);

  // Warm every size once so all of them are ready before memory is read.
  for (let k = 1; k <= n; k++) await runner.step(tokensOf(8, k), k, fresh(), [7]);
  (globalThis as { gc?: () => void }).gc?.();
  const rss = rssBytes() - rss0;

  const prompt = tokensOf(PROMPT, 1);
  const last = [PROMPT - 1];
  const full: number[] = [];
  const split: number[] = [];
  let diff = 0;
  for (let r = 0; r < REPEATS; r++) {
    const [tf, a] = await timed(() => runner.step(prompt, n, fresh(), last));
    full.push(tf);
    if (n > 1) {
      const [ts, b] = await timed(async () => {
        const cache = fresh();
        const pre = await runner.step(prompt.slice(0, -1), 1, cache, []);
        cache.append(pre.newKeys, pre.newValues, PROMPT - 1);
        return runner.step(prompt.slice(-1), n, cache, [0]);
      });
      split.push(ts);
      for (let i = 0; i < a.logits.length; i++) diff = Math.max(diff, Math.abs(a.logits[i] - b.logits[i]));
    }
  }

  // Decode: batch 1 with CONTEXT tokens cached (filled by chain 1).
  const decode: Record<string, number> = {};
  const base = new KvCache(c.n_layers, c.kv_heads, c.head_dim, CONTEXT + DECODE_STEPS + 1);
  const pre = await runner.step(tokensOf(CONTEXT, 2), 1, base, []);
  base.append(pre.newKeys, pre.newValues, CONTEXT);
  for (let k = 1; k <= n; k++) {
    const rates: number[] = [];
    for (let r = 0; r < REPEATS; r++) {
      base.truncate(CONTEXT);
      const [ms] = await timed(async () => {
        let tok = 1;
        for (let s = 0; s < DECODE_STEPS; s++) {
          const out = await runner.step([tok], k, base, [0]);
          base.append(out.newKeys, out.newValues, 1);
          tok = (tok * 31 + s) % 32000;
        }
      });
      rates.push((DECODE_STEPS * 1000) / ms);
    }
    decode[String(k)] = median(rates);
  }
  await runner.close();
  const figures: ModelFigures = {
    weight_bytes: runner.weightBytes,
    rss_over_weight_bytes: rss / runner.weightBytes,
    full_prefill_ms: median(full),
    decode_tokens_per_s: decode,
  };
  if (n > 1) {
    figures.chain1_prefill_ms = median(split);
    figures.prefill_speedup = median(full) / median(split);
    figures.prefill_max_abs_diff = diff;
  }
  return figures;
}

const which = args.get("model") ?? "both";
const colm = which !== "dense" ? await measure(BENCH_M) : undefined;
const dense = which !== "colm" ? await measure(DENSE_M) : undefined;

const result: Record<string, unknown> = {
  machine: { nproc: availableParallelism(), cpu: cpus()[0]?.model ?? "unknown" },
  shape: "bench-m: V 32000, D 1024 (4 chains of 256), 16 layers, head_dim 64, kv_heads 4, FFN 4×704",
  prompt_tokens: PROMPT,
  decode_context_tokens: CONTEXT,
  repeats: REPEATS,
  command: `npm run bench:engine -- ${process.argv.slice(2).join(" ")}`.trim(),
};
if (colm) {
  const d = colm.decode_tokens_per_s;
  Object.assign(result, {
    prefill_speedup: colm.prefill_speedup,
    prefill_max_abs_diff: colm.prefill_max_abs_diff,
    full_prefill_ms: colm.full_prefill_ms,
    chain1_prefill_ms: colm.chain1_prefill_ms,
    ttft_tokens_per_s_chain1: (PROMPT * 1000) / colm.chain1_prefill_ms!,
    decode_tokens_per_s: d,
    decode_ratio_k1_over_k4: d["1"] / d["4"],
    rss_over_weight_bytes: colm.rss_over_weight_bytes,
    weight_bytes: colm.weight_bytes,
  });
}
if (dense) {
  Object.assign(result, { dense });
  if (colm) {
    Object.assign(result, {
      prefill_speedup_vs_dense: dense.full_prefill_ms / colm.chain1_prefill_ms!,
      decode_k4_over_dense: colm.decode_tokens_per_s["4"] / dense.decode_tokens_per_s["1"],
    });
  }
}
mkdirSync("loadtest/results", { recursive: true });
writeFileSync("loadtest/results/engine.json", JSON.stringify(result, null, 2) + "\n");
console.log(JSON.stringify(result, null, 2));
