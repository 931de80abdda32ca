// Single model calls on a loaded engine, for the benchmarks only (the server never calls them):
// a prompt's prefill into a one-row cache, and one decode step against it.
import type { KvCache } from "../kernels/kv-cache.ts";
import type { ColmEngine } from "../server/engine/engine.ts";
import { prefillRow } from "../server/engine/scheduler.ts";

/** Fills a one-row `cache` with the prompt; returns the last token's logits at `chains` chains. */
export async function prefill(engine: ColmEngine, prompt: readonly number[], chains: number, cache: KvCache, chain1Prefill = true): Promise<Float32Array> {
  return (await prefillRow(engine.runner, cache, 0, prompt, chains, chain1Prefill))!; // no budget: always completes
}

/** Runs one token at `chains` chains against a one-row cache and appends its keys/values. */
export async function decode(engine: ColmEngine, token: number, chains: number, cache: KvCache): Promise<Float32Array> {
  const out = await engine.runner.step([token], chains, cache, [0]);
  cache.append(out.newKeys, out.newValues, 1);
  return out.logits;
}
