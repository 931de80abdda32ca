// Self-speculative decoding: sub-model k_d (default 1) drafts γ tokens, the generation's own count
// k verifies them in one call, and kernels/speculative.ts keeps what k agrees with. The draft
// needs no model or cache of its own: every key and value comes from chain 1 (spec §5.3), so the
// drafts' keys/values are those k would have written, and a rejected draft only shortens the row.
//
// One round over rows firstRow … firstRow+B-1 (same k, k_d and γ), each row's last emitted token
// t0 not yet in the cache (its length L):
//   γ draft steps at k_d:  [t0] → d1, [d1] → d2, … (each a batched decode step, cache grows)
//   verify at k:           [t0, d1 … dγ] at positions L … L+γ in one call, logits at every one
//   settle:                accept d1 … dj, emit them and one token of k's own; keep L+j+1 entries
// The verify call writes the γ+1 positions' keys/values again (the rows are cut back to L first):
// a call at k runs chain 1 over its tokens anyway, since chains 2 … k read its activations.
import type { KvCache } from "../../kernels/kv-cache.ts";
import type { ModelRunner } from "../../ops/runner.ts";
import type { Sequence } from "./sequence.ts";
import type { StepStats } from "./types.ts";

/** Most draft tokens a round may have (a request's `max_draft`). */
export const MAX_DRAFT_TOKENS = 16;

export interface RoundPlan {
  chains: number;
  draftChains: number;
  /** γ ≥ 1. */
  drafts: number;
  /** Sampled rather than greedy rows (kept apart: their acceptance differs). */
  sampled: boolean;
}

export async function speculativeRound(
  runner: ModelRunner,
  cache: KvCache,
  rows: readonly Sequence[],
  firstRow: number,
  plan: RoundPlan,
  report: (s: StepStats) => void,
): Promise<void> {
  const B = rows.length;
  const V = runner.config.vocab_size;
  const all = rows.map((_, i) => i);
  const start = rows.map((_, i) => cache.lengths[firstRow + i]);
  const drafts = rows.map((s) => s.startDraft());
  let next = rows.map((s) => s.lastToken);
  for (let i = 0; i < plan.drafts; i++) {
    const t0 = performance.now();
    const out = await runner.stepRows(next.map((t) => [t]), plan.draftChains, cache, all, firstRow);
    cache.append(out.newKeys, out.newValues, 1, firstRow, B);
    report({ kind: "draft", rows: B, tokens: B, chains: plan.draftChains, ms: performance.now() - t0 });
    next = rows.map((s, r) => s.extendDraft(drafts[r], out.logits.subarray(r * V, (r + 1) * V)));
  }

  const T = plan.drafts + 1;
  rows.forEach((_, r) => cache.truncate(start[r], firstRow + r));
  const t0 = performance.now();
  const tokens = rows.map((s, r) => [s.lastToken, ...drafts[r].tokens]);
  const out = await runner.stepRows(tokens, plan.chains, cache, Array.from({ length: B * T }, (_, i) => i), firstRow);
  cache.append(out.newKeys, out.newValues, T, firstRow, B);
  const ms = performance.now() - t0;

  let accepted = 0;
  let rejected = 0;
  rows.forEach((s, r) => {
    const j = s.settleDraft(drafts[r], out.logits.subarray(r * T * V, (r + 1) * T * V), start[r]);
    accepted += j;
    if (j < plan.drafts) rejected++;
    // Keep t0 … dj; a generation that ended on an accepted draft keeps only what it emitted.
    cache.truncate(Math.min(start[r] + j + 1, s.prompt.length + s.generated.length), firstRow + r);
  });
  report({ kind: "verify", rows: B, tokens: B * T, chains: plan.chains, ms, speculation: { draftChains: plan.draftChains, drafted: B * plan.drafts, accepted, rejected, sampled: plan.sampled } });
}
