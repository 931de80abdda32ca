// npm run bench:spec -- [--dir models/colm-kjv] [--tokens 128] [--prompts 10] [--concurrency 16] [--rounds 2] [--shape bench-m|none]
//
// Self-speculative decoding (issue 18) on a real checkpoint (default: the bundled model), batch 1
// at k = n, with held-out prompts (loadtest/prompts/web-heldout.json: the World English Bible,
// in no training corpus of this project):
//   - decode tokens/s plain vs speculative (fixed draft lengths γ and `auto`), greedy — and the
//     greedy tokens must be identical — and at temperature 0.8;
//   - the acceptance rate of every draft size k_d < k for every k (greedy, γ = 4);
//   - `auto` vs off with `--concurrency` generations at once (it must not slow a full batch down);
// plus the step costs on bench-m (decode at k = 1 and k = 4, verify calls of γ+1 tokens at k = 4)
// and the speedup they imply at the measured acceptance. Decode tokens/s is measured per
// generation from its first token to its last, so prefill is left out of both sides.
// Writes loadtest/results/spec-<model>.json.
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { readConfig } from "../models/config.ts";
import { loadModel, type ColmEngine } from "../server/engine/engine.ts";
import type { GenerateOptions, SamplingOptions, SpeculativeOptions, StepStats } from "../server/engine/types.ts";
import { CostModel, warmUp } from "../server/policy/cost-model.ts";
import { DraftPolicy } from "../server/policy/draft-policy.ts";
import { BENCH_M, benchCheckpoint } from "./shapes.ts";
import { BenchArgs, writeResult } from "./results.ts";
import { median } from "./engine-figures.ts";

const args = new BenchArgs();
const dir = args.get("dir") ?? "models/colm-kjv";
const config = readConfig(join(dir, "config.json"));
const name = config.name ?? basename(dir);
const tokens = args.num("tokens", 128);
const rounds = args.num("rounds", 2);
const concurrency = args.num("concurrency", 16);
const GAMMAS = [1, 2, 3, 4, 6];

const passages = (JSON.parse(readFileSync(join(import.meta.dirname, "prompts", "web-heldout.json"), "utf8")) as { passages: string[] }).passages.slice(0, args.num("prompts", 10));

const engine = await loadModel(dir, { threads: args.num("threads", 2), prefixCacheBytes: 0 });
const n = engine.info.nChains;
const costs = new CostModel({ nChains: n });
const policy = new DraftPolicy({ mode: "auto", nChains: n, costs });
const steps: StepStats[] = [];
engine.onStep((s) => {
  costs.observe(s);
  policy.observe(s);
  steps.push(s);
});

/** Prompt ids (with BOS) that leave room for `tokens` more: a passage's head, cut to fit. */
function promptOf(text: string): number[] {
  const bos = engine.info.bosTokenId;
  const ids = [...(bos !== null && bos !== undefined ? [bos] : []), ...engine.tokenizer.encode(text)];
  return ids.slice(0, Math.min(ids.length, engine.info.maxPosition - tokens - 1));
}
const prompts = passages.map(promptOf);

interface Run {
  ids: number[];
  /** Decode tokens/s: (tokens − 1) / (last token − first token). */
  tps: number;
}

async function generate(e: ColmEngine, prompt: number[], o: Partial<GenerateOptions>): Promise<Run> {
  const ids: number[] = [];
  let first = 0;
  let last = 0;
  for await (const t of e.generate(prompt, { chains: n, maxTokens: tokens, stopOnEos: false, cache: false, sampling: { temperature: 0 }, ...o })) {
    last = performance.now();
    if (!ids.length) first = last;
    ids.push(t.tokenId);
  }
  return { ids, tps: (ids.length - 1) / ((last - first) / 1000) };
}

const fixed = (g: number): SpeculativeOptions => ({ draftChains: 1, draftTokens: g });
const auto = (): SpeculativeOptions => policy.optionsFor(undefined, { temperature: 0 })!;

/** Median tokens/s per variant over prompts × rounds, variants interleaved per prompt (drift hits all alike). */
async function compare(variants: Record<string, SpeculativeOptions | undefined>, sampling: SamplingOptions) {
  const tps: Record<string, number[]> = Object.fromEntries(Object.keys(variants).map((v) => [v, []]));
  let identical = true;
  for (let r = 0; r < rounds; r++) {
    for (const prompt of prompts) {
      let reference: number[] | null = null;
      for (const [v, speculative] of Object.entries(variants)) {
        const run = await generate(engine, prompt, { sampling, ...(speculative ? { speculative } : {}) });
        tps[v].push(run.tps);
        if (sampling.temperature === 0) {
          reference ??= run.ids;
          identical &&= run.ids.join() === reference.join();
        }
      }
    }
  }
  const med = Object.fromEntries(Object.entries(tps).map(([v, xs]) => [v, median(xs)]));
  return { tokens_per_s: med, speedup: Object.fromEntries(Object.entries(med).map(([v, x]) => [v, x / med.plain])), ...(sampling.temperature === 0 ? { greedy_identical: identical } : {}) };
}

/** Acceptance of every (k_d, k), greedy, γ = 4, over the prompts. */
async function acceptance() {
  const out: Array<{ draft_chains: number; chains: number; acceptance: number; accepted_per_draft: number; tokens_per_round: number }> = [];
  for (let k = 2; k <= n; k++) {
    for (let kd = 1; kd < k; kd++) {
      steps.length = 0;
      for (const prompt of prompts) await generate(engine, prompt, { chains: k, speculative: { draftChains: kd, draftTokens: 4 } });
      const v = steps.filter((s) => s.kind === "verify" && s.speculation);
      const acc = v.reduce((a, s) => a + s.speculation!.accepted, 0);
      const rej = v.reduce((a, s) => a + s.speculation!.rejected, 0);
      const drafted = v.reduce((a, s) => a + s.speculation!.drafted, 0);
      out.push({ draft_chains: kd, chains: k, acceptance: acc / (acc + rej), accepted_per_draft: acc / drafted, tokens_per_round: (acc + v.length) / v.length });
    }
  }
  return out;
}

/** `concurrency` greedy generations at once: total tokens/s with auto and with speculation off. */
async function batched() {
  const run = async (speculative: boolean) => {
    const t0 = performance.now();
    const runs = await Promise.all(Array.from({ length: concurrency }, (_, i) => generate(engine, prompts[i % prompts.length], speculative ? { speculative: auto() } : {})));
    return runs.reduce((a, r) => a + r.ids.length, 0) / ((performance.now() - t0) / 1000);
  };
  const off: number[] = [];
  const on: number[] = [];
  for (let r = 0; r < rounds + 1; r++) {
    off.push(await run(false));
    on.push(await run(true));
  }
  return { concurrency, tokens_per_s: { off: median(off), auto: median(on) }, ratio: median(on) / median(off) };
}

/** Step costs of a larger shape (random weights): B = 1 decode at k = 1 and n, verify of γ+1 tokens at n. */
async function stepCosts(dirM: string) {
  const e = await loadModel(dirM, { threads: args.num("threads", 2), prefixCacheBytes: 0 });
  const own: StepStats[] = [];
  e.onStep((s) => own.push(s));
  const prompt = Array.from({ length: 128 }, (_, i) => (i * 7919) % e.info.vocabSize);
  const ms = (kind: string, chains: number, T?: number) => median(own.filter((s) => s.kind === kind && s.chains === chains && (T === undefined || s.tokens === T)).map((s) => s.ms));
  const nM = e.info.nChains;
  for (let r = 0; r < 3; r++) {
    await generate(e, prompt, { chains: 1, maxTokens: 16 });
    await generate(e, prompt, { chains: nM, maxTokens: 16 });
    for (const g of GAMMAS) await generate(e, prompt, { chains: nM, maxTokens: 2 * g + 3, speculative: fixed(g) });
  }
  const figures = { decode_ms: { k1: ms("decode", 1), kn: ms("decode", nM) }, draft_ms: ms("draft", 1), verify_ms: Object.fromEntries(GAMMAS.map((g) => [g, ms("verify", nM, g + 1)])) };
  await e.close();
  return figures;
}

/** Tokens per ms of a round relative to a plain step, from step costs and an acceptance rate. */
function projected(c: { decode_ms: { kn: number }; draft_ms: number; verify_ms: Record<string, number> }, alpha: number) {
  return Object.fromEntries(
    Object.entries(c.verify_ms).map(([g, v]) => {
      const expected = (1 - alpha ** (Number(g) + 1)) / (1 - alpha);
      return [g, (expected / (Number(g) * c.draft_ms + v)) * c.decode_ms.kn];
    }),
  );
}

await warmUp(engine);
const variants: Record<string, SpeculativeOptions | undefined> = { plain: undefined, ...Object.fromEntries(GAMMAS.map((g) => [`gamma${g}`, fixed(g)])), auto: auto() };
console.error(`${name}: batch 1 at k=${n}, ${prompts.length} held-out prompts × ${rounds} rounds, ${tokens} tokens …`);
const greedy = await compare(variants, { temperature: 0 });
const sampled = await compare(variants, { temperature: 0.8 });
const pairs = await acceptance();
const batch = await batched();
const shape = args.get("shape") ?? "bench-m";
const benchM = shape === "none" ? null : await stepCosts(benchCheckpoint(BENCH_M));
const alphaN = pairs.find((p) => p.draft_chains === 1 && p.chains === n)?.acceptance ?? 0;
await engine.close();

const result = {
  model: name,
  chains: n,
  tokens,
  prompts: prompts.length,
  prompt_tokens_median: median(prompts.map((p) => p.length)),
  rounds,
  greedy,
  temperature_0_8: sampled,
  acceptance: pairs,
  auto_at_concurrency: batch,
  ...(benchM ? { bench_m_step_costs: benchM, bench_m_projected_speedup_at_measured_acceptance: { acceptance: alphaN, by_gamma: projected(benchM, alphaN) } } : {}),
};
writeResult(`spec-${name}`, "bench:spec", result);

const fmt = (x: Record<string, number>) => Object.entries(x).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ");
console.log(`${name} k=${n} batch 1, greedy tokens/s: ${fmt(greedy.tokens_per_s)}`);
console.log(`  speedup over plain: ${fmt(greedy.speedup)}; greedy tokens identical: ${greedy.greedy_identical}`);
console.log(`temperature 0.8 speedup: ${fmt(sampled.speedup)}`);
console.log(`acceptance (k_d→k): ${pairs.map((p) => `${p.draft_chains}→${p.chains} ${p.acceptance.toFixed(3)}`).join(", ")}`);
console.log(`${concurrency} concurrent: auto ${batch.tokens_per_s.auto.toFixed(0)} vs off ${batch.tokens_per_s.off.toFixed(0)} tok/s (${batch.ratio.toFixed(2)}×)`);
if (benchM) {
  console.log(`bench-m step ms: decode k=1 ${benchM.decode_ms.k1.toFixed(1)}, k=4 ${benchM.decode_ms.kn.toFixed(1)}, draft ${benchM.draft_ms.toFixed(1)}, verify ${fmt(benchM.verify_ms)}`);
  console.log(`bench-m projected speedup at acceptance ${alphaN.toFixed(3)}: ${fmt(result.bench_m_projected_speedup_at_measured_acceptance!.by_gamma)}`);
}
