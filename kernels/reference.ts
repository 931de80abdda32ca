// Plain-TypeScript forward pass of CoLM-Air (spec §3), written for clarity, not speed: the
// oracle the onnxruntime graphs are tested against. Sub-model k computes chains 1 … k only.
import type { ColmConfig } from "../models/config.ts";
import type { ChainLinear, ColmWeights } from "../models/checkpoint.ts";

export interface ReferenceOutput {
  /** [T, V] logits of sub-model k at every position. */
  logits: Float32Array;
  /** [T, d_k] final hidden state (before the final norm). */
  hidden: Float32Array;
  /** Per layer, [T, kv_heads·hd] rotated keys and values (what the KV cache holds). */
  keys: Float32Array[];
  values: Float32Array[];
}

/** Chain linear: output chain i is x_{≤i} · W_i. x is [T, inPrefix[k]]. */
export function chainLinear(x: Float32Array, T: number, w: ChainLinear, inPrefix: number[], k: number): Float32Array {
  const inW = inPrefix[k];
  const outWidths = w.slice(0, k).map((wi, i) => wi.length / inPrefix[i + 1]);
  const outTotal = outWidths.reduce((a, b) => a + b, 0);
  const y = new Float32Array(T * outTotal);
  let o0 = 0;
  for (let i = 0; i < k; i++) {
    const di = inPrefix[i + 1];
    const oi = outWidths[i];
    for (let t = 0; t < T; t++) {
      for (let c = 0; c < oi; c++) {
        let s = 0;
        for (let j = 0; j < di; j++) s += x[t * inW + j] * w[i][j * oi + c];
        y[t * outTotal + o0 + c] = s;
      }
    }
    o0 += oi;
  }
  return y;
}

/** Chain RMSNorm: each chain normalised on its own, then scaled by its gain. */
export function chainRmsNorm(x: Float32Array, T: number, gain: Float32Array, prefix: number[], k: number, eps: number): Float32Array {
  const W = prefix[k];
  const y = new Float32Array(x.length);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < k; i++) {
      let ss = 0;
      for (let j = prefix[i]; j < prefix[i + 1]; j++) ss += x[t * W + j] ** 2;
      const inv = 1 / Math.sqrt(ss / (prefix[i + 1] - prefix[i]) + eps);
      for (let j = prefix[i]; j < prefix[i + 1]; j++) y[t * W + j] = x[t * W + j] * inv * gain[j];
    }
  }
  return y;
}

/** Rotary embedding, rotate-half convention, applied in place to `heads` heads of width hd. */
export function rope(x: Float32Array, T: number, heads: number, hd: number, pos0: number, theta: number): void {
  const half = hd / 2;
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < half; j++) {
      const angle = (pos0 + t) * Math.pow(theta, (-2 * j) / hd);
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      for (let h = 0; h < heads; h++) {
        const base = (t * heads + h) * hd;
        const a = x[base + j];
        const b = x[base + j + half];
        x[base + j] = a * cos - b * sin;
        x[base + j + half] = b * cos + a * sin;
      }
    }
  }
}

const silu = (v: number): number => v / (1 + Math.exp(-v));

/** Full forward of sub-model k over `tokens` (positions 0 … T-1). */
export function referenceForward(config: ColmConfig, w: ColmWeights, tokens: number[], k: number): ReferenceOutput {
  const { dk, fk, hk, head_dim: hd, kv_heads: kvh, hidden: D, vocab_size: V } = config;
  const T = tokens.length;
  const dK = dk[k];
  const c1 = config.chainWidths[0];
  const eps = config.norm_eps;

  // Embedding: sub-model k reads E[:, :d_k].
  let x: Float32Array = new Float32Array(T * dK);
  tokens.forEach((tok, t) => x.set(w.embed.subarray(tok * D, tok * D + dK), t * dK));

  const keys: Float32Array[] = [];
  const values: Float32Array[] = [];
  for (const layer of w.layers) {
    // Attention: queries from chains ≤ k, keys/values from chain 1 only.
    const xn = chainRmsNorm(x, T, layer.attnNorm, dk, k, eps);
    const q = chainLinear(xn, T, layer.q, dk, k); // [T, hk[k]·hd], heads chain after chain
    const x1 = new Float32Array(T * c1);
    for (let t = 0; t < T; t++) x1.set(xn.subarray(t * dK, t * dK + c1), t * c1);
    const K = chainLinear(x1, T, [layer.k], [0, c1], 1);
    const Vv = chainLinear(x1, T, [layer.v], [0, c1], 1);
    rope(q, T, hk[k], hd, 0, config.rope_theta);
    rope(K, T, kvh, hd, 0, config.rope_theta);
    keys.push(K);
    values.push(Vv);

    const att = new Float32Array(T * hk[k] * hd);
    const scores = new Float64Array(T);
    for (let i = 0; i < k; i++) {
      const group = config.chain_heads[i] / kvh; // heads of chain i per kv head
      for (let m = 0; m < config.chain_heads[i]; m++) {
        const head = hk[i] + m;
        const kvHead = Math.floor(m / group);
        for (let t = 0; t < T; t++) {
          let max = -Infinity;
          for (let s = 0; s <= t; s++) {
            let dot = 0;
            for (let j = 0; j < hd; j++) dot += q[(t * hk[k] + head) * hd + j] * K[(s * kvh + kvHead) * hd + j];
            scores[s] = dot / Math.sqrt(hd);
            max = Math.max(max, scores[s]);
          }
          let sum = 0;
          for (let s = 0; s <= t; s++) sum += scores[s] = Math.exp(scores[s] - max);
          for (let s = 0; s <= t; s++) {
            const p = scores[s] / sum;
            for (let j = 0; j < hd; j++) att[(t * hk[k] + head) * hd + j] += p * Vv[(s * kvh + kvHead) * hd + j];
          }
        }
      }
    }
    const h = chainLinear(att, T, layer.o, dk, k);
    for (let j = 0; j < x.length; j++) h[j] += x[j];

    // SwiGLU feed-forward.
    const hn = chainRmsNorm(h, T, layer.ffnNorm, dk, k, eps);
    const gate = chainLinear(hn, T, layer.gate, dk, k);
    const up = chainLinear(hn, T, layer.up, dk, k);
    for (let j = 0; j < gate.length; j++) gate[j] = silu(gate[j]) * up[j];
    const ffn = chainLinear(gate, T, layer.down, fk, k);
    for (let j = 0; j < h.length; j++) h[j] += ffn[j];
    x = h;
  }

  // Head: logits_k = y_{≤k} · H[:, :d_k]ᵀ.
  const y = chainRmsNorm(x, T, w.norm, dk, k, eps);
  const logits = new Float32Array(T * V);
  for (let t = 0; t < T; t++) {
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let j = 0; j < dK; j++) s += y[t * dK + j] * w.head[v * D + j];
      logits[t * V + v] = s;
    }
  }
  return { logits, hidden: x, keys, values };
}
