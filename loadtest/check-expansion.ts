// Chain-expansion identity through colm-serve's own graph (spec §6, "Chain expansion"): a model
// grown from an old one by new chains, old chains frozen, must give for every k ≤ n_old exactly the
// old model's float32 logits, keys and values (bit for bit: chain causality, and colm-serve never
// multiplies the structurally zero blocks, so the new model's sub-model k runs the same arithmetic).
//
//   node --import tsx loadtest/check-expansion.ts --old DIR --new DIR [--tokens 1024] [--decode 16] [--quant f32|q8|q4 [--block-size B]]
//
// Both folders run through onnxruntime (the server's ModelRunner, float32 unless --quant). Per k:
//   prompt  the whole sequence at k from an empty cache (fresh-prompt attention kernel), logits at
//           every position and every layer's keys/values;
//   decode  chain 1 prefills all but the last --decode tokens, then k decodes them one at a time
//           from the cache (the cache-reading attention), logits at each.
// Prints max |Δ| per k and path; exits 1 unless all are exactly 0 (NaN-free, bit-identical).
// The token sequence is the old model's tokenizer over the repository README, repeated as needed.
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadCheckpoint } from "../models/checkpoint.ts";
import { configAtPrecision, bitsOf, PRECISIONS, type Precision } from "../models/quantized.ts";
import { loadTokenizer } from "../models/tokenizer.ts";
import { quantizeCheckpoint } from "../kernels/quantize.ts";
import { KvCache } from "../kernels/kv-cache.ts";
import { ModelRunner } from "../ops/runner.ts";

export interface ExpansionRow {
  k: number;
  path: "prompt" | "decode";
  /** Logit rows compared. */
  positions: number;
  /** Largest |logit(new) − logit(old)|. */
  maxAbsLogits: number;
  /** Largest |Δ| of any layer's new keys or values (the shared chain-1 cache). */
  maxAbsKv: number;
  /** Every compared float has the same bits (0 and -0 differ; NaN never equal). */
  bitIdentical: boolean;
}

export interface ExpansionReport {
  oldChains: number;
  newChains: number;
  tokens: number;
  precision: Precision;
  rows: ExpansionRow[];
  ok: boolean;
}

async function openRunner(dir: string, precision: Precision | undefined, threads: number, blockSize?: number): Promise<ModelRunner> {
  const ckpt = loadCheckpoint(dir);
  const bits = bitsOf(precision ?? "f32");
  if (bits && ckpt.config.quantization) throw new Error(`${dir} is stored quantized: compare float32 checkpoints (the quantization is done here)`);
  // The server's block size unless told (a chain narrower than 32 needs a smaller one).
  const block = blockSize ?? configAtPrecision(dir, ckpt.config, precision).config.quantization?.block_size;
  const weights = bits ? quantizeCheckpoint(ckpt, bits, block!) : ckpt;
  return ModelRunner.create(weights, { threads, reusedOutputFloats: 0, log: () => {} });
}

function newCache(r: ModelRunner): KvCache {
  return new KvCache(r.config.n_layers, r.config.kv_heads, r.config.head_dim);
}

/** Largest |a − b| and whether every element has the same bit pattern. */
function diff(a: Float32Array, b: Float32Array, acc: { max: number; same: boolean }): void {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  const ia = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ib = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < a.length; i++) {
    if (ia[i] !== ib[i]) {
      acc.same = false;
      const d = Math.abs(a[i] - b[i]);
      acc.max = Math.max(acc.max, Number.isNaN(d) ? Infinity : d);
    }
  }
}

/** A token sequence of `n` ids from text, by the old model's tokenizer. */
export function tokensFromText(dir: string, text: string, n: number): number[] {
  const cfg = loadCheckpoint(dir).config;
  const tok = loadTokenizer(dir, cfg.tokenizer, { bos: cfg.bos_token_id, eos: cfg.eos_token_id });
  const once = tok.encode(text);
  const out = cfg.bos_token_id !== null ? [cfg.bos_token_id] : [];
  while (out.length < n) out.push(...once.slice(0, n - out.length));
  return out;
}

export async function checkExpansion(
  oldDir: string,
  newDir: string,
  tokens: number[],
  options: { decode?: number; precision?: Precision; threads?: number; blockSize?: number } = {},
): Promise<ExpansionReport> {
  const threads = options.threads ?? 1;
  const oldR = await openRunner(oldDir, options.precision, threads, options.blockSize);
  const newR = await openRunner(newDir, options.precision, threads, options.blockSize);
  try {
    const nOld = oldR.config.nChains;
    if (newR.config.nChains <= nOld) throw new Error(`${newDir} has ${newR.config.nChains} chains, not more than ${oldDir}'s ${nOld}`);
    if (tokens.length > oldR.config.max_position) throw new Error(`${tokens.length} tokens exceed max_position ${oldR.config.max_position}`);
    const decode = Math.min(options.decode ?? 16, tokens.length - 1);
    const rows: ExpansionRow[] = [];
    const all = Array.from({ length: tokens.length }, (_, i) => i);
    for (let k = 1; k <= nOld; k++) {
      // prompt path: the whole sequence at k
      const lg = { max: 0, same: true };
      const kv = { max: 0, same: true };
      const a = await oldR.step(tokens, k, newCache(oldR), all);
      const b = await newR.step(tokens, k, newCache(newR), all);
      diff(a.logits, b.logits, lg);
      a.newKeys.forEach((x, l) => diff(x, b.newKeys[l], kv));
      a.newValues.forEach((x, l) => diff(x, b.newValues[l], kv));
      rows.push({ k, path: "prompt", positions: tokens.length, maxAbsLogits: lg.max, maxAbsKv: kv.max, bitIdentical: lg.same && kv.same });

      // decode path: chain-1 prefill, then one token at a time at k from the cache
      const dl = { max: 0, same: true };
      const dkv = { max: 0, same: true };
      const ca = newCache(oldR);
      const cb = newCache(newR);
      const head = tokens.slice(0, tokens.length - decode);
      const pa = await oldR.step(head, 1, ca, []);
      ca.append(pa.newKeys, pa.newValues, head.length);
      const pb = await newR.step(head, 1, cb, []);
      pb.newKeys.forEach((x, l) => diff(x, pa.newKeys[l], dkv));
      cb.append(pb.newKeys, pb.newValues, head.length);
      for (let t = head.length; t < tokens.length; t++) {
        const sa = await oldR.step([tokens[t]], k, ca, [0]);
        ca.append(sa.newKeys, sa.newValues, 1);
        const sb = await newR.step([tokens[t]], k, cb, [0]);
        cb.append(sb.newKeys, sb.newValues, 1);
        diff(sa.logits, sb.logits, dl);
        sa.newKeys.forEach((x, l) => diff(x, sb.newKeys[l], dkv));
        sa.newValues.forEach((x, l) => diff(x, sb.newValues[l], dkv));
      }
      rows.push({ k, path: "decode", positions: decode, maxAbsLogits: dl.max, maxAbsKv: dkv.max, bitIdentical: dl.same && dkv.same });
    }
    return {
      oldChains: nOld,
      newChains: newR.config.nChains,
      tokens: tokens.length,
      precision: options.precision ?? "f32",
      rows,
      ok: rows.every((r) => r.bitIdentical),
    };
  } finally {
    await oldR.close();
    await newR.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      old: { type: "string" },
      new: { type: "string" },
      tokens: { type: "string", default: "1024" },
      decode: { type: "string", default: "16" },
      quant: { type: "string" },
      threads: { type: "string", default: "1" },
      "block-size": { type: "string" },
    },
  });
  if (!values.old || !values.new) {
    console.error("usage: node --import tsx loadtest/check-expansion.ts --old DIR --new DIR [--tokens N] [--decode N] [--quant f32|q8|q4 [--block-size 32]] [--threads N]");
    process.exit(2);
  }
  if (values.quant !== undefined && !PRECISIONS.includes(values.quant as Precision)) throw new Error(`--quant must be one of ${PRECISIONS.join(", ")}`);
  const oldDir = resolve(values.old);
  const newDir = resolve(values.new);
  const readme = readFileSync(join(fileURLToPath(new URL("..", import.meta.url)), "README.md"), "utf8");
  const cfgMax = loadCheckpoint(oldDir).config.max_position;
  const tokens = tokensFromText(oldDir, readme, Math.min(Number(values.tokens), cfgMax));
  const t0 = performance.now();
  const r = await checkExpansion(oldDir, newDir, tokens, {
    decode: Number(values.decode),
    precision: values.quant as Precision | undefined,
    threads: Number(values.threads),
    blockSize: values["block-size"] !== undefined ? Number(values["block-size"]) : undefined,
  });
  console.log(`old ${oldDir} (${r.oldChains} chains) vs new ${newDir} (${r.newChains} chains), ${r.tokens} tokens, ${r.precision}, colm-serve graph`);
  for (const row of r.rows) {
    console.log(
      `k=${row.k} ${row.path.padEnd(6)} ${String(row.positions).padStart(5)} positions: max |Δlogit| ${row.maxAbsLogits.toExponential(2)}, ` +
        `max |Δkv| ${row.maxAbsKv.toExponential(2)}, bit-identical ${row.bitIdentical}`,
    );
  }
  console.log(`${r.ok ? "OK" : "FAILED"}: sub-models 1..${r.oldChains} ${r.ok ? "are" : "are NOT"} bit-identical (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  process.exit(r.ok ? 0 : 1);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    console.error(err);
    process.exit(2);
  });
}
