// npm run bench:engine — engine benchmark on bench-m (spec-conformant random checkpoints):
// chain-1 prefill speedup, decode tokens/s per chain count, resident memory per weight byte,
// and the same figures for a dense model of the same full width. Writes loadtest/results/engine.json.
// --quant q8|q4: the same for bench-m quantized, against float32 and llama.cpp at that precision
// (loadtest/bench-quant.ts; writes engine-q8.json / engine-q4.json).
import type { ColmConfigJson } from "../models/config.ts";
import { BENCH_M, DENSE_M, benchCheckpoint, describeShape } from "./shapes.ts";
import { engineFields, measureModel, pairedDecode, type ModelFigures, type PairedDecode } from "./engine-figures.ts";
import { BenchArgs, machine, writeResult } from "./results.ts";
import { benchQuantized } from "./bench-quant.ts";

const args = new BenchArgs();
const PROMPT = args.num("prompt", 1024);
const PROMPTS = [...new Set([512, PROMPT, 2048])].sort((a, b) => a - b);
const CONTEXT = args.num("context", 512);
const DECODE_STEPS = args.num("steps", 24);
const REPEATS = args.num("repeats", 7);
const QUANT = args.get("quant") ?? "f32";
if (QUANT !== "f32" && QUANT !== "q8" && QUANT !== "q4") throw new Error(`--quant must be f32, q8 or q4, got ${JSON.stringify(QUANT)}`);
if (QUANT !== "f32") {
  await benchQuantized(QUANT, { prompt: PROMPT, prompts: PROMPTS, context: CONTEXT, steps: DECODE_STEPS, repeats: REPEATS, rounds: args.num("rounds", 12) });
  process.exit(0);
}

const measure = (config: ColmConfigJson): Promise<ModelFigures> =>
  measureModel(benchCheckpoint(config), { prompts: PROMPTS, context: CONTEXT, decodeSteps: DECODE_STEPS, repeats: REPEATS });

const which = args.get("model") ?? "both";
const colm = which !== "dense" ? await measure(BENCH_M) : undefined;
const dense = which !== "colm" ? await measure(DENSE_M) : undefined;

const result: Record<string, unknown> = {
  shape: describeShape(BENCH_M),
  prompt_tokens: PROMPT,
  prefill_lengths: PROMPTS,
  decode_context_tokens: CONTEXT,
  repeats: REPEATS,
};
// What llama.cpp does on this machine for the dense M shape (loadtest/README.md, "llama.cpp anchors").
const LLAMA_CPP_M = { prefill_512_tok_s: 311, prefill_2048_tok_s: 255, decode_tok_s: 37.6, flash_decode_tok_s: 40.8 };
if (colm) {
  const d = colm.decode_tokens_per_s;
  const ttft2048 = colm.prefill["2048"].chain1_ms!;
  Object.assign(result, {
    ...engineFields(colm, PROMPT),
    vs_llama_cpp_m: {
      anchors: LLAMA_CPP_M,
      ttft_2048_ms: ttft2048,
      ttft_2048_speedup_vs_llama_cpp_dense_prefill: (2048 / LLAMA_CPP_M.prefill_2048_tok_s) * 1000 / ttft2048,
      decode_k4_over_llama_cpp: d["4"] / LLAMA_CPP_M.decode_tok_s,
    },
  });
}
let paired: PairedDecode | undefined;
if (dense) {
  // Measured after the CoLM model was released in this same process, the dense model's RSS delta is
  // not its footprint (it came out negative), so it is left out then; bench:alternatives compares
  // memory against dense models, each in its own process.
  Object.assign(result, { dense: colm ? { ...dense, rss_over_weight_bytes: undefined } : dense });
  if (colm) {
    // k=4 against dense decode, measured in alternating rounds (the figures above ran minutes apart).
    const k = BENCH_M.chain_heads.length;
    paired = await pairedDecode({ dir: benchCheckpoint(BENCH_M), chains: k }, { dir: benchCheckpoint(DENSE_M), chains: 1 }, { context: CONTEXT, steps: DECODE_STEPS, rounds: args.num("rounds", 20) });
    Object.assign(result, {
      prefill_speedup_vs_dense: dense.prefill[String(PROMPT)].full_ms / colm.prefill[String(PROMPT)].chain1_ms!,
      decode_k4_over_dense: paired.a_over_b,
      decode_k4_over_dense_quartiles: paired.a_over_b_quartiles,
      decode_k4_vs_dense_paired: { k4_tokens_per_s: paired.a_tokens_per_s, dense_tokens_per_s: paired.b_tokens_per_s, rounds: paired.rounds },
    });
  }
}
// The table a reader compares, then where the JSON went.
const f = (x: number | undefined, digits = 0): string => (x === undefined ? "–" : x.toFixed(digits)).padStart(9);
const rows: string[] = [`${String(result.shape)}; ${REPEATS} repeats, medians; ${machine().nproc} threads`];
rows.push(`${"prefill, logits for the last token".padEnd(44)}${PROMPTS.map((t) => f(t)).join("")}`);
if (colm) {
  rows.push(`${"  CoLM full 4-chain prefill (ms)".padEnd(44)}${PROMPTS.map((t) => f(colm.prefill[String(t)].full_ms)).join("")}`);
  rows.push(`${"  CoLM chain-1 prefill + last token k=4 (ms)".padEnd(44)}${PROMPTS.map((t) => f(colm.prefill[String(t)].chain1_ms)).join("")}`);
  rows.push(`${"  speedup (median of per-repeat ratios)".padEnd(44)}${PROMPTS.map((t) => f(colm.prefill[String(t)].speedup, 2)).join("")}`);
  rows.push(`${"  its quartiles".padEnd(44)}${PROMPTS.map((t) => (colm.prefill[String(t)].speedup_quartiles ?? []).map((x) => x.toFixed(1)).join("–").padStart(9)).join("")}`);
}
if (dense) rows.push(`${"  dense (one chain) prefill (ms)".padEnd(44)}${PROMPTS.map((t) => f(dense.prefill[String(t)].full_ms)).join("")}`);
rows.push(`${"decode tok/s, batch 1, " + CONTEXT + " tokens of context".padEnd(21)}`.padEnd(44) + ["k=1", "k=2", "k=3", "k=4", "dense"].map((h) => h.padStart(9)).join(""));
rows.push("".padEnd(44) + [1, 2, 3, 4].map((k) => f(colm?.decode_tokens_per_s[String(k)], 1)).join("") + f(dense?.decode_tokens_per_s["1"], 1));
if (colm?.decode_k1_over_kn !== undefined) rows.push(`${"  k=1 ÷ k=4, median of per-round ratios".padEnd(44)}${f(colm.decode_k1_over_kn, 2)}  (quartiles ${colm.decode_k1_over_kn_quartiles!.map((x) => x.toFixed(2)).join("–")}, ${REPEATS} rounds running every k)`);
if (paired) rows.push(`${"  alternating rounds, k=4 vs dense".padEnd(44)}${"".padStart(27)}${f(paired.a_tokens_per_s, 1)}${f(paired.b_tokens_per_s, 1)}  (k=4 ÷ dense ${paired.a_over_b.toFixed(2)}, median of ${paired.rounds} rounds; quartiles ${paired.a_over_b_quartiles.map((x) => x.toFixed(2)).join("–")})`);
if (colm) rows.push(`resident memory / weight bytes: ${colm.rss_over_weight_bytes.toFixed(2)} (${(colm.weight_bytes / 2 ** 20).toFixed(0)} MiB of weights, every size ready)`);
console.log(rows.join("\n"));
writeResult("engine", "bench:engine", result);
