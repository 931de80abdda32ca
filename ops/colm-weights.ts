// The checkpoint's weights as the graph reads them: every chain linear split into its per-chain
// blocks W_i ([d_i, out_i], on and below the chain diagonal only), every norm gain into per-chain
// gains, the embedding and head into per-chain column blocks, and the rotary tables. Each is
// registered once, in the root graph, under a name the forward steps read:
//   embed.c{i} [V, c_i]          head.c{i} [V, c_i] (absent when tied)      norm.c{i} [c_i]
//   l{l}.attn_norm.c{i} [c_i]    l{l}.q.c{i} [d_i, h_i·hd]   l{l}.k, l{l}.v [c_1, kv·hd]
//   l{l}.o.c{i} [d_i, c_i]       l{l}.ffn_norm.c{i} [c_i]    l{l}.gate.c{i}, l{l}.up.c{i} [d_i, f_i]
//   l{l}.down.c{i} [f_1+…+f_i, c_i]                          rope.cos, rope.sin [max_position, hd/2]
// A quantized checkpoint's matrices are registered under the same names (with `.scales` beside
// them), as stored: out × in, blocked along in (models/quantized.ts); its head always has its own
// head.c{i}, as MatMulNBits and GatherBlockQuantized want the bytes in different shapes.
import type { Checkpoint, ChainLinear, ColmWeights } from "../models/checkpoint.ts";
import { quantizedLayout, type QuantizedWeights } from "../models/quantized.ts";
import type { ColmConfig } from "../models/config.ts";
import type { GraphBuilder } from "./graph.ts";

/** Columns [c0, c1) of a row-major [rows, cols] matrix. */
function columns(x: Float32Array, rows: number, cols: number, c0: number, c1: number): Float32Array {
  const out = new Float32Array(rows * (c1 - c0));
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * cols + c0, r * cols + c1), r * (c1 - c0));
  return out;
}

/** Registers every weight once, in the per-chain form the forward steps read. */
export function registerWeights(root: GraphBuilder, ckpt: Checkpoint): void {
  const c = ckpt.config;
  const w = ckpt.weights;
  const { dk } = c;
  const gains = (name: string, g: Float32Array): void => {
    for (let i = 0; i < c.nChains; i++) root.weight(`${name}.c${i + 1}`, [c.chainWidths[i]], g.slice(dk[i], dk[i + 1]));
  };
  if (ckpt.quantized) registerQuantized(root, c, ckpt.quantized);
  else registerFloat(root, c, w);
  w.layers.forEach((L, l) => {
    gains(`l${l}.attn_norm`, L.attnNorm);
    gains(`l${l}.ffn_norm`, L.ffnNorm);
  });
  gains("norm", w.norm);
  const { cos, sin } = ropeTables(c);
  root.weight("rope.cos", [c.max_position, c.head_dim / 2], cos);
  root.weight("rope.sin", [c.max_position, c.head_dim / 2], sin);
}

/**
 * The attention scale 1/sqrt(hd) is folded into the queries (rotary embedding is linear, so
 * rope(s·q) = s·rope(q)); exact when hd is a power of 4, and it spares every q·Kᵀ a scaling pass.
 */
const queryScale = (c: ColmConfig): number => 1 / Math.sqrt(c.head_dim);

function registerFloat(root: GraphBuilder, c: ColmConfig, w: ColmWeights): void {
  const { dk, fk, kvWidth, vocab_size: V, hidden: D } = c;
  const linear = (name: string, blocks: ChainLinear, inPrefix: number[], scale = 1): void => {
    for (let i = 0; i < c.nChains; i++) {
      const block = scale === 1 ? blocks[i] : blocks[i].map((v) => v * scale);
      root.weight(`${name}.c${i + 1}`, [inPrefix[i + 1], blocks[i].length / inPrefix[i + 1]], block);
    }
  };
  for (let i = 0; i < c.nChains; i++) {
    root.weight(`embed.c${i + 1}`, [V, c.chainWidths[i]], columns(w.embed, V, D, dk[i], dk[i + 1]));
    if (!c.tie_embeddings) root.weight(`head.c${i + 1}`, [V, c.chainWidths[i]], columns(w.head, V, D, dk[i], dk[i + 1]));
  }
  w.layers.forEach((L, l) => {
    const p = `l${l}`;
    const c1 = c.chainWidths[0];
    linear(`${p}.q`, L.q, dk, queryScale(c));
    root.weight(`${p}.k`, [c1, kvWidth], L.k);
    root.weight(`${p}.v`, [c1, kvWidth], L.v);
    linear(`${p}.o`, L.o, dk);
    linear(`${p}.gate`, L.gate, dk);
    linear(`${p}.up`, L.up, dk);
    linear(`${p}.down`, L.down, fk);
  });
}

/** Every quantized matrix once; a tied embedding's bytes also as the head (the two kernels want two shapes). */
function registerQuantized(root: GraphBuilder, c: ColmConfig, q: QuantizedWeights): void {
  for (const s of quantizedLayout(c)) {
    const m = q.matrices.get(s.name)!;
    const i = s.chain;
    if (s.tensor === "embed") {
      root.quantizedWeight(`embed.c${i}`, m, "gather");
      if (c.tie_embeddings) root.quantizedWeight(`head.c${i}`, m, "matmul");
    } else if (s.tensor === "head") root.quantizedWeight(`head.c${i}`, m, "matmul");
    else if (s.tensor === "k" || s.tensor === "v") root.quantizedWeight(`l${s.layer}.${s.tensor}`, m, "matmul");
    else if (s.tensor === "q") root.quantizedWeight(`l${s.layer}.q.c${i}`, { ...m, scales: m.scales.map((x) => x * queryScale(c)) }, "matmul");
    else root.quantizedWeight(`l${s.layer}.${s.tensor}.c${i}`, m, "matmul");
  }
}

/** Rotary tables for every position, computed in float64: [max_position, hd/2] each. */
function ropeTables(c: ColmConfig): { cos: Float32Array; sin: Float32Array } {
  const hd = c.head_dim;
  const cos = new Float32Array(c.max_position * (hd / 2));
  const sin = new Float32Array(cos.length);
  for (let pos = 0; pos < c.max_position; pos++) {
    for (let j = 0; j < hd / 2; j++) {
      const angle = pos * Math.pow(c.rope_theta, (-2 * j) / hd);
      cos[pos * (hd / 2) + j] = Math.cos(angle);
      sin[pos * (hd / 2) + j] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
