// npm run bench:batching — continuous batching on bench-s (random weights): generated tokens/s
// with 1, 4 and 16 concurrent greedy requests through the engine, against the same requests
// served one at a time. Writes loadtest/results/batching.json.
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import { BENCH_S, benchCheckpoint, describeShape } from "./shapes.ts";
import { BenchArgs, writeResult } from "./results.ts";

const args = new BenchArgs();
const PROMPT = args.num("prompt", 128);
const MAX_TOKENS = args.num("max-tokens", 64);
const CHAINS = args.num("chains", 4);

const engine = await loadModel(benchCheckpoint(BENCH_S), { maxBatch: 16 });

const prompt = (i: number): number[] => Array.from({ length: PROMPT }, (_, j) => (i * 131 + j * 17) % BENCH_S.vocab_size);
async function run(e: ColmEngine, i: number): Promise<number> {
  let n = 0;
  for await (const _ of e.generate(prompt(i), { chains: CHAINS, maxTokens: MAX_TOKENS, sampling: { temperature: 0 }, stopOnEos: false })) n++;
  return n;
}

const figures: Record<string, { concurrent_tok_s: number; sequential_tok_s: number; ratio: number }> = {};
for (const c of [1, 4, 16]) {
  let t0 = performance.now();
  let tokens = 0;
  for (let i = 0; i < c; i++) tokens += await run(engine, i);
  const sequential = (tokens * 1000) / (performance.now() - t0);
  t0 = performance.now();
  tokens = (await Promise.all(Array.from({ length: c }, (_, i) => run(engine, i)))).reduce((a, b) => a + b, 0);
  const concurrent = (tokens * 1000) / (performance.now() - t0);
  figures[String(c)] = { concurrent_tok_s: concurrent, sequential_tok_s: sequential, ratio: concurrent / sequential };
  console.log(`concurrency ${String(c).padStart(2)}: ${concurrent.toFixed(0).padStart(6)} tok/s batched vs ${sequential.toFixed(0).padStart(5)} one at a time (${(concurrent / sequential).toFixed(2)}×)`);
}
await engine.close();
const result = {
  shape: describeShape(BENCH_S),
  prompt_tokens: PROMPT,
  max_tokens: MAX_TOKENS,
  chains: CHAINS,
  throughput: figures,
  throughput_ratio_c16: figures["16"].ratio,
};
writeResult("batching", "bench:batching", result);
