// npm run bench:engine -- --quant q8|q4: bench:engine's figures for bench-m quantized (the random
// checkpoint of bench:engine, quantized by `npm run quantize` on first use), k=4 decode against the
// float32 model in alternating rounds of one run, and llama.cpp on shape M at the same precision.
// Writes loadtest/results/engine-q8.json / engine-q4.json.
import { BENCH_M, benchCheckpoint, describeShape, quantizedBenchCheckpoint } from "./shapes.ts";
import { engineFields, measureModel, pairedDecode } from "./engine-figures.ts";
import { machine, writeResult } from "./results.ts";

/** llama.cpp on shape M, one llama-bench run over F32, Q8_0 and Q4_0 files (loadtest/README.md, "llama.cpp anchors"). */
const LLAMA_CPP_M_QUANT = {
  f32: { prefill_512_tok_s: 237, prefill_2048_tok_s: 192, decode_tok_s: 29.9 },
  q8: { prefill_512_tok_s: 330, prefill_2048_tok_s: 217, decode_tok_s: 73.9 },
  q4: { prefill_512_tok_s: 412, prefill_2048_tok_s: 279, decode_tok_s: 103.2 },
};

export interface QuantBenchOptions {
  prompt: number;
  prompts: number[];
  context: number;
  steps: number;
  repeats: number;
  rounds: number;
}

export async function benchQuantized(precision: "q8" | "q4", o: QuantBenchOptions): Promise<void> {
  const dir = quantizedBenchCheckpoint(BENCH_M, precision);
  const q = await measureModel(dir, { prompts: o.prompts, context: o.context, decodeSteps: o.steps, repeats: o.repeats });
  const k = BENCH_M.chain_heads.length;
  // k=4 quantized against k=4 float32, alternating rounds in this process: the ratio the issue asks for.
  const paired = await pairedDecode({ dir, chains: k }, { dir: benchCheckpoint(BENCH_M), chains: k }, { context: o.context, steps: o.steps, rounds: o.rounds });
  const anchor = LLAMA_CPP_M_QUANT[precision];
  const d = q.decode_tokens_per_s;
  const ttft2048 = q.prefill["2048"]?.chain1_ms;
  const result = {
    shape: describeShape(BENCH_M),
    precision,
    prompt_tokens: o.prompt,
    prefill_lengths: o.prompts,
    decode_context_tokens: o.context,
    repeats: o.repeats,
    ...engineFields(q, o.prompt),
    decode_k4_over_f32: paired.a_over_b,
    decode_k4_over_f32_quartiles: paired.a_over_b_quartiles,
    decode_k4_vs_f32_paired: { quantized_tokens_per_s: paired.a_tokens_per_s, f32_tokens_per_s: paired.b_tokens_per_s, rounds: paired.rounds },
    vs_llama_cpp_m: {
      anchors: { precision, ...anchor, f32_same_run: LLAMA_CPP_M_QUANT.f32 },
      ttft_2048_ms: ttft2048,
      ttft_2048_speedup_vs_llama_cpp_prefill: ttft2048 === undefined ? undefined : ((2048 / anchor.prefill_2048_tok_s) * 1000) / ttft2048,
      decode_k4_over_llama_cpp: d[String(k)] / anchor.decode_tok_s,
    },
  };
  const f = (x: number | undefined, digits = 0): string => (x === undefined ? "–" : x.toFixed(digits)).padStart(9);
  const llama = precision === "q4" ? "Q4_0" : "Q8_0";
  console.log(
    [
      `${result.shape} at ${precision}; ${o.repeats} repeats, medians; ${machine().nproc} threads`,
      `${"prefill, logits for the last token".padEnd(44)}${o.prompts.map((t) => f(t)).join("")}`,
      `${"  full 4-chain prefill (ms)".padEnd(44)}${o.prompts.map((t) => f(q.prefill[String(t)].full_ms)).join("")}`,
      `${"  chain-1 prefill + last token k=4 (ms)".padEnd(44)}${o.prompts.map((t) => f(q.prefill[String(t)].chain1_ms)).join("")}`,
      `${"  speedup (median of per-repeat ratios)".padEnd(44)}${o.prompts.map((t) => f(q.prefill[String(t)].speedup, 2)).join("")}`,
      `${"decode tok/s, batch 1, " + o.context + " tokens of context"}`.padEnd(44) + ["k=1", "k=2", "k=3", "k=4"].map((h) => h.padStart(9)).join(""),
      "".padEnd(44) + [1, 2, 3, 4].map((j) => f(d[String(j)], 1)).join(""),
      `k=4 ${precision} vs k=4 f32, alternating rounds: ${paired.a_tokens_per_s.toFixed(1)} vs ${paired.b_tokens_per_s.toFixed(1)} tok/s = ${paired.a_over_b.toFixed(2)}× (median of ${paired.rounds} rounds; quartiles ${paired.a_over_b_quartiles.map((x) => x.toFixed(2)).join("–")})`,
      `vs llama.cpp ${llama} on shape M (${anchor.decode_tok_s} tok/s decode, ${anchor.prefill_2048_tok_s} tok/s prefill 2048): k=4 decode ${result.vs_llama_cpp_m.decode_k4_over_llama_cpp.toFixed(2)}×, 2048-token TTFT ${ttft2048?.toFixed(0) ?? "–"} ms = ${result.vs_llama_cpp_m.ttft_2048_speedup_vs_llama_cpp_prefill?.toFixed(1) ?? "–"}× shorter`,
      `resident memory / weight bytes: ${q.rss_over_weight_bytes.toFixed(2)} (${(q.weight_bytes / 2 ** 20).toFixed(0)} MiB of quantized weights, every size ready)`,
    ].join("\n"),
  );
  writeResult(`engine-${precision}`, "bench:engine", result);
}
