// What a CoLM-Air forward pass must compute and read, counted from the config alone: matrix FLOPs
// of a call and weight + KV-cache bytes of a decode step, for sub-model k (a dense model is the
// one-chain case, k = 1). Used to turn measured times into MFU and roofline fractions.
//
// Counting rules (spec §3): a chain linear's output chain i reads input chains 1 … i, i.e. block
// W_i of shape [a_1+…+a_i, b_i]; sub-model k runs output chains 1 … k only, so it reads the blocks
// on and below the chain diagonal of its first k chains. K/V projections read chain 1 only. The
// head of sub-model k reads columns 1 … d_k of every vocab row. A multiply-add is 2 FLOPs.
import type { ColmConfig } from "../models/config.ts";

const FLOAT_BYTES = 4;

/** Σ_{i≤k} (a_1+…+a_i) · b_i: weights of a chain linear's first k output chains (spec §3, chain linear). */
function chainLinearParams(inPrefix: readonly number[], outWidths: readonly number[], k: number): number {
  let n = 0;
  for (let i = 1; i <= k; i++) n += inPrefix[i] * outWidths[i - 1];
  return n;
}

/**
 * Matrix weights of one layer that sub-model k multiplies every token by: q and o (chain linears
 * between hidden and head chains, both c_i wide), K and V (chain 1 only: [c_1, kv_heads·hd] each),
 * gate and up (hidden → FFN chains), down (FFN → hidden chains). Spec §3, attention and SwiGLU.
 */
export function layerMatrixParams(c: ColmConfig, k: number): number {
  const qo = 2 * chainLinearParams(c.dk, c.chainWidths, k);
  const kv = 2 * c.chainWidths[0] * c.kvWidth;
  const gateUp = 2 * chainLinearParams(c.dk, c.ffn_chain_dims, k);
  const down = chainLinearParams(c.fk, c.chainWidths, k);
  return qo + kv + gateUp + down;
}

/** Head weights sub-model k reads per logits row: H[:, :d_k], V · d_k (spec §3, head). */
export const headParams = (c: ColmConfig, k: number): number => c.vocab_size * c.dk[k];

/** KV-cache bytes per cached token: 2 · L · kv_heads · hd floats (spec §5.6). */
export const kvBytesPerToken = (c: ColmConfig): number => FLOAT_BYTES * 2 * c.n_layers * c.kvWidth;

/**
 * Bytes one batch-1 decode step at sub-model k must read: every matrix weight it multiplies by
 * (L · layerMatrixParams + the head), the RMSNorm gains of its chains (2 per layer + final) and
 * one embedding row (d_k each), plus the shared KV cache of `context` tokens read once (spec §5.6;
 * every chain's heads attend over the same chain-1 keys/values, so the necessary traffic is one
 * read of the cache, whatever k is).
 */
export function decodeBytesPerToken(c: ColmConfig, k: number, context: number): number {
  const weights = c.n_layers * (layerMatrixParams(c, k) + 2 * c.dk[k]) + headParams(c, k) + 2 * c.dk[k];
  return FLOAT_BYTES * weights + kvBytesPerToken(c) * context;
}

export interface CallShape {
  /** New tokens in the call. */
  tokens: number;
  /** Tokens already cached before them. */
  past: number;
  /** Chains run (sub-model k). */
  chains: number;
  /** Rows whose logits are computed (1 for the last prompt token, 0 for a KV-only chunk). */
  logitsRows: number;
}

/**
 * Matrix FLOPs of one call: 2 · tokens · (L · layerMatrixParams(k)) for the linears; attention
 * scores QKᵀ and the weighted sum PV, 2 · hd each per (query head, query, visible key), over the
 * causal pairs only (query t of the call sees past + t keys, t = 1 … tokens), for the h_1+…+h_k
 * query heads of every layer; 2 · V · d_k per logits row for the head. Element-wise work (norms,
 * rotary, softmax, SwiGLU gating) is left out, as MFU conventionally does.
 */
export function callFlops(c: ColmConfig, s: CallShape): number {
  const linears = 2 * s.tokens * c.n_layers * layerMatrixParams(c, s.chains);
  const causalPairs = s.tokens * s.past + (s.tokens * (s.tokens + 1)) / 2;
  const attention = c.n_layers * c.hk[s.chains] * 4 * c.head_dim * causalPairs;
  const head = 2 * s.logitsRows * headParams(c, s.chains);
  return linears + attention + head;
}

/** FLOPs of prefilling a `tokens`-long prompt at sub-model k in one call, logits for the last token. */
export const prefillFlops = (c: ColmConfig, tokens: number, k: number): number =>
  callFlops(c, { tokens, past: 0, chains: k, logitsRows: 1 });

/**
 * FLOPs of chain-1 prefill (spec §5.4): tokens 1 … T-1 through chain 1 with no logits, then the
 * last token at sub-model k against the T-1 cached tokens, with its logits.
 */
export const chain1PrefillFlops = (c: ColmConfig, tokens: number, k: number): number =>
  callFlops(c, { tokens: tokens - 1, past: 0, chains: 1, logitsRows: 0 }) + callFlops(c, { tokens: 1, past: tokens - 1, chains: k, logitsRows: 1 });
