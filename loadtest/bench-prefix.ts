// npm run bench:prefix — the prefix cache on bench-m (random weights): time to first token of turn
// 2 of a conversation whose first turn was a 2000-token prompt, with the prefix cache against
// without it (`cache: false` on the same engine, in alternating order), at k=4 and k=1; the hit
// rate, and bytes per cached token (chain 1's keys/values) against a dense model's 2 · L · D · 4.
// Then (unless --load=0) a load test through the real HTTP server on bench-s: every request shares
// one --system-tokens system prompt, open-loop Poisson arrivals at --load × the rate at which the
// server prefills uncached prompts one after another, the same seeded requests with the cache off
// and on: goodput (requests/s whose TTFT meets --slo × an idle uncached TTFT) and TTFT p50/p99.
// Writes loadtest/results/prefix.json.
import { createApp, listeningUrl } from "../server/api/app.ts";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import type { GenerateOptions } from "../server/engine/types.ts";
import { parseConfig } from "../models/config.ts";
import { parseMix } from "./arrivals.ts";
import { runLoad, type LoadOptions } from "./loadgen.ts";
import { BENCH_M, BENCH_S, benchCheckpoint, describeShape } from "./shapes.ts";
import type { RequestRecord } from "./stats.ts";
import { BenchArgs, machine, writeResult } from "./results.ts";

const args = new BenchArgs();
const TURN1 = args.num("turn1", 2000);
const ANSWER = args.num("answer", 32);
const TURN2_NEW = args.num("turn2-new", 40);
const REPEATS = args.num("repeats", 3);
const CHAINS = (args.get("chains") ?? "4,1").split(",").map(Number);
const LOAD = args.num("load", 0.8);
const SYSTEM = args.num("system-tokens", 1500);
const LOAD_REQUESTS = args.num("requests", 32);
const SLO = args.num("slo", 3);

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

/** The load-test figures of one run: goodput against the TTFT SLO, TTFT percentiles. */
function loadFigures(records: RequestRecord[], wallS: number, sloMs: number) {
  const ttft = records.filter((r) => r.ok && r.ttftMs !== undefined).map((r) => r.ttftMs!).sort((a, b) => a - b);
  const at = (p: number) => ttft[Math.min(ttft.length - 1, Math.floor((p / 100) * ttft.length))];
  const good = records.filter((r) => r.ok && r.ttftMs !== undefined && r.ttftMs <= sloMs).length;
  return { requests: records.length, ok: ttft.length, goodput_req_s: good / wallS, slo_met: good / records.length, ttft_p50_ms: at(50), ttft_p99_ms: at(99), wall_s: wallS };
}

/** Every request shares a SYSTEM-token system prompt: the same arrivals with the cache off, then on. */
async function sharedPromptLoad() {
  const served = await loadModel(benchCheckpoint(BENCH_S), { maxBatch: 8, prefixCacheBytes: 2 ** 30 });
  const colm = createApp(served, { maxRunning: 8, maxWaiting: 10_000, log: () => undefined });
  const server = await colm.listen(0, "127.0.0.1");
  const base: LoadOptions = {
    url: listeningUrl(server),
    mode: "sse",
    requests: LOAD_REQUESTS,
    durationS: 600,
    graceS: 300,
    promptTokens: { min: 32, max: 96 },
    sharedPrefixTokens: SYSTEM,
    promptForm: "ids",
    idLow: 0,
    idHigh: BENCH_S.vocab_size,
    maxTokens: { min: 16, max: 16 },
    mix: parseMix("model=c4"),
    seed: 7,
    temperature: 0,
  };
  // An idle uncached request's TTFT sets the arrival rate (the server's uncached prefill rate) and the SLO.
  const idle = await runLoad({ ...base, concurrency: 1, requests: 3, cache: false, seed: 99 });
  const idleTtft = idle.summary.ttftMs.p50;
  const rate = (LOAD * 1000) / idleTtft;
  const sloMs = SLO * idleTtft;
  const off = await runLoad({ ...base, rate, cache: false });
  const on = await runLoad({ ...base, rate });
  const view = (await (await fetch(`${base.url}/v1/cache`)).json()) as { hit_rate: number };
  await colm.close();
  await served.close();
  const figures = {
    shape: describeShape(BENCH_S),
    system_prompt_tokens: SYSTEM,
    own_prompt_tokens: "32–96",
    max_tokens: 16,
    idle_uncached_ttft_ms: idleTtft,
    rate_req_s: rate,
    ttft_slo_ms: sloMs,
    cache_off: loadFigures(off.records, off.summary.wallS, sloMs),
    cache_on: loadFigures(on.records, on.summary.wallS, sloMs),
    hit_rate_cache_on: view.hit_rate,
  };
  const line = (label: string, f: ReturnType<typeof loadFigures>) =>
    `  cache ${label}: goodput ${f.goodput_req_s.toFixed(2)} req/s (${(f.slo_met * 100).toFixed(0)}% within ${sloMs.toFixed(0)} ms), TTFT p50 ${f.ttft_p50_ms.toFixed(0)} ms, p99 ${f.ttft_p99_ms.toFixed(0)} ms`;
  console.log(`shared ${SYSTEM}-token system prompt, ${rate.toFixed(2)} req/s (${LOAD}× the uncached prefill rate), ${LOAD_REQUESTS} requests:`);
  console.log(line("off", figures.cache_off));
  console.log(line("on ", figures.cache_on));
  return figures;
}
const sharedPrompt = LOAD > 0 ? await sharedPromptLoad() : undefined;
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
  ...(sharedPrompt ? { shared_system_prompt_load: sharedPrompt } : {}),
};
console.log(`hit rate ${(result.hit_rate * 100).toFixed(1)}% of looked-up prompt tokens; ${s.bytesPerToken} bytes per cached token (chain 1 only) vs ${denseBytesPerToken} for a dense model of width ${config.hidden} (${result.dense_over_cached_bytes_per_token.toFixed(1)}×)`);
writeResult("prefix", "bench:prefix", result);
