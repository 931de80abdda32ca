// npm run bench:prefix — the prefix cache on bench-m (random weights): time to first token of turn
// 2 of a conversation whose first turn was a 2000-token prompt, with the prefix cache against
// without it (`cache: false` on the same engine, in alternating order), at k=4 and k=1; the hit
// rate, and bytes per cached token (chain 1's keys/values) against a dense model's 2 · L · D · 4.
// Writes loadtest/results/prefix.json.
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import type { GenerateOptions } from "../server/engine/types.ts";
import { parseConfig } from "../models/config.ts";
import { BENCH_M, benchCheckpoint, describeShape } from "./shapes.ts";
import { BenchArgs, machine, writeResult } from "./results.ts";

const args = new BenchArgs();
const TURN1 = args.num("turn1", 2000);
const ANSWER = args.num("answer", 32);
const TURN2_NEW = args.num("turn2-new", 40);
const REPEATS = args.num("repeats", 3);
const CHAINS = (args.get("chains") ?? "4,1").split(",").map(Number);

const config = parseConfig(BENCH_M);
const engine = await loadModel(benchCheckpoint(BENCH_M), { prefixCacheBytes: 4 * 2 ** 30 });
const V = BENCH_M.vocab_size;
let seed = 1;
const tokens = (n: number): number[] => {
  const s = seed++;
  return Array.from({ length: n }, (_, j) => (s * 7919 + j * 104729 + ((j * j) % 997)) % V);
};

/** Runs a greedy generation; returns its time to first token (ms), its tokens and cached prompt tokens. */
async function timed(e: ColmEngine, prompt: number[], options: Partial<GenerateOptions>): Promise<{ ttftMs: number; ids: number[]; cached: number }> {
  const t0 = performance.now();
  let ttftMs = NaN;
  const ids: number[] = [];
  const it = e.generate(prompt, { maxTokens: 4, sampling: { temperature: 0 }, stopOnEos: false, ...options });
  for (let step = await it.next(); ; step = await it.next()) {
    if (step.done) return { ttftMs, ids, cached: step.value.cachedTokens };
    if (ids.length === 0) ttftMs = performance.now() - t0;
    ids.push(step.value.tokenId);
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

await timed(engine, tokens(64), { chains: 4, cache: false }); // onnxruntime's first call is slow
const figures: Record<string, unknown> = {};
const ratios: Record<string, number> = {};
for (const k of CHAINS) {
  const on: number[] = [];
  const off: number[] = [];
  const turn1: number[] = [];
  let cached = 0;
  let prompt2 = 0;
  for (let r = 0; r < REPEATS; r++) {
    const first = tokens(TURN1);
    const answer = await timed(engine, first, { chains: k, maxTokens: ANSWER });
    turn1.push(answer.ttftMs);
    const second = [...first, ...answer.ids, ...tokens(TURN2_NEW)];
    // Alternate which goes first, so neither gets the warmer machine every time.
    const runs = r % 2 ? ["on", "off"] : ["off", "on"];
    for (const which of runs) {
      const t = await timed(engine, second, { chains: k, cache: which === "on" });
      if (which === "on") {
        on.push(t.ttftMs);
        cached = t.cached;
      } else off.push(t.ttftMs);
      if (which === "off" && t.cached !== 0) throw new Error("cache: false read the cache");
    }
    prompt2 = second.length;
  }
  const ratio = median(off) / median(on);
  ratios[`k${k}`] = ratio;
  figures[`k${k}`] = {
    turn1_ttft_ms: median(turn1),
    turn2_prompt_tokens: prompt2,
    turn2_cached_tokens: cached,
    turn2_ttft_ms_cache_off: median(off),
    turn2_ttft_ms_cache_on: median(on),
    turn2_ttft_off_over_on: ratio,
    runs_ms: { off, on },
  };
  console.log(`k=${k}: turn-2 TTFT (${prompt2} prompt tokens, ${cached} cached) ${median(off).toFixed(1)} ms without the cache, ${median(on).toFixed(1)} ms with it: ${ratio.toFixed(1)}×`);
}
const s = engine.prefixCache!.stats();
await engine.close();
const denseBytesPerToken = 2 * config.n_layers * config.hidden * 4;
const result = {
  shape: describeShape(BENCH_M),
  threads: machine().nproc,
  turn1_prompt_tokens: TURN1,
  turn1_answer_tokens: ANSWER,
  turn2_new_tokens: TURN2_NEW,
  repeats: REPEATS,
  by_chains: figures,
  turn2_ttft_ratio: ratios,
  hit_rate: s.hitTokens / s.queryTokens,
  cache: { block_tokens: s.blockTokens, blocks: s.blocks, bytes: s.bytes, evicted_blocks: s.evictedBlocks },
  bytes_per_cached_token: s.bytesPerToken,
  dense_bytes_per_token: denseBytesPerToken,
  dense_over_cached_bytes_per_token: denseBytesPerToken / s.bytesPerToken,
};
console.log(`hit rate ${(result.hit_rate * 100).toFixed(1)}% of looked-up prompt tokens; ${s.bytesPerToken} bytes per cached token (chain 1 only) vs ${denseBytesPerToken} for a dense model of width ${config.hidden} (${result.dense_over_cached_bytes_per_token.toFixed(1)}×)`);
writeResult("prefix", "bench:prefix", result);
