// Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a draft model proposes γ tokens,
// the target model scores all of them in one call, and this rule keeps the longest prefix the
// target agrees with plus one token of its own — so what comes out is distributed exactly as the
// target's own samples, whatever the draft proposed.
//
//   draft token d_i ~ q_i                               (the draft's distribution at position i)
//   accept d_i with probability min(1, p_i(d_i) / q_i(d_i))   (p_i: the target's, same context)
//   first rejection at i → one token from norm(max(0, p_i − q_i)), and the round ends
//   all γ accepted      → one token from p_{γ+1}
//
// Both distributions are the request's sampler output (logit_bias, penalties with the context up
// to that position, temperature, top-k, top-p, min-p), so the rule reproduces exactly the
// distribution plain decoding samples from. Greedy requests need no probabilities: a draft is
// accepted when it is the target's argmax, and the first disagreement emits the target's argmax —
// token for token what plain greedy decoding emits.
import type { SampledToken, Sampler } from "./sampling.ts";

/** One row's drafts: tokens d_1 … d_γ and, for a sampled (non-greedy) request, each q_i. */
export interface Draft {
  tokens: number[];
  /** q_1 … q_γ (null for greedy requests: the rule then compares argmaxes). */
  probs: Float32Array[] | null;
}

export function emptyDraft(sampler: Sampler): Draft {
  return { tokens: [], probs: sampler.greedy ? null : [] };
}

/**
 * Appends the next draft token, chosen from the draft model's `logits` the way the request's own
 * sampler would choose it (context: `generated` then the drafts so far).
 */
export function extendDraft(draft: Draft, sampler: Sampler, logits: Float32Array, prompt: readonly number[], generated: readonly number[]): number {
  const context = generated.concat(draft.tokens);
  let token: number;
  if (draft.probs) {
    const q = sampler.distribution(logits, prompt, context, new Float32Array(sampler.vocabSize));
    token = sampler.drawFrom(q);
    draft.probs.push(q);
  } else {
    token = sampler.pick(logits, prompt, context);
  }
  draft.tokens.push(token);
  return token;
}

export interface Verdict {
  /** The tokens to emit: the accepted drafts, then the target's own token (1 … γ+1 tokens). */
  tokens: SampledToken[];
  /** Drafts accepted (0 … γ). */
  accepted: number;
}

/**
 * Applies the rule to one row. `target` holds the target model's logits at the γ+1 positions of
 * the last emitted token and the γ drafts ([γ+1, V], flattened). Logprobs in the returned tokens
 * are the target's (as plain decoding reports them).
 */
export function verifyDraft(draft: Draft, sampler: Sampler, target: Float32Array, prompt: readonly number[], generated: readonly number[]): Verdict {
  const V = sampler.vocabSize;
  const tokens: SampledToken[] = [];
  const p = draft.probs ? new Float32Array(V) : null;
  for (let i = 0; i < draft.tokens.length; i++) {
    const logits = target.subarray(i * V, (i + 1) * V);
    const context = generated.concat(draft.tokens.slice(0, i));
    const d = draft.tokens[i];
    if (!p) {
      const own = sampler.sample(logits, prompt, context);
      tokens.push(own);
      if (own.tokenId !== d) return { tokens, accepted: i };
      continue;
    }
    const q = draft.probs![i];
    sampler.distribution(logits, prompt, context, p);
    if (sampler.uniform() * q[d] < p[d]) {
      tokens.push(sampler.score(logits, prompt, context, d));
      continue;
    }
    const x = sampler.drawFrom(residual(p, q, V));
    tokens.push(sampler.score(logits, prompt, context, x));
    return { tokens, accepted: i };
  }
  const last = draft.tokens.length;
  tokens.push(sampler.sample(target.subarray(last * V, (last + 1) * V), prompt, generated.concat(draft.tokens)));
  return { tokens, accepted: last };
}

/**
 * max(0, p − q), in place in `p`, normalised. A rejection implies p(d) < q(d), so some token has
 * p > q and the residual has mass; if rounding left none, p itself is kept (normalised as it is).
 */
export function residual(p: Float32Array, q: Float32Array, V: number): Float32Array {
  let mass = 0;
  for (let i = 0; i < V; i++) {
    const r = p[i] - q[i];
    if (r > 0) mass += r;
  }
  if (!(mass > 0)) return p;
  for (let i = 0; i < V; i++) {
    const r = p[i] - q[i];
    p[i] = r > 0 ? r / mass : 0;
  }
  return p;
}
