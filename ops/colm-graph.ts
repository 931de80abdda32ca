// Builds the ONNX graph of a CoLM-Air checkpoint: one graph, one copy of every weight, serving
// every chain count. The root computes what all sizes share (rotary tables, causal mask) and
// dispatches on the `chains` input through nested If nodes; branch k is sub-model k (spec §3),
// reading the shared initializers. Chain linears multiply only blocks on/below the diagonal.
//
// Inputs:  tokens int64 [T]; chains int64 scalar; logits_rows int64 [R] (rows whose logits are
//          wanted; empty for a KV-only prefill); past_key_l / past_value_l float [P, kv_heads·hd].
// Outputs: logits [R, V]; hidden [R, d_k] (final hidden state, pre-norm);
//          new_key_l / new_value_l [T, kv_heads·hd] (rotated keys and values of the new tokens).
import type { Checkpoint, ChainLinear } from "../models/checkpoint.ts";
import type { ColmConfig } from "../models/config.ts";
import { DataType, GraphBuilder } from "./graph.ts";

const F = DataType.FLOAT;

/** [r, a] ‖ [r, b] → [r, a + b] (fusing matrices that read the same input). */
function hcat(parts: { data: Float32Array; cols: number }[], rows: number): Float32Array {
  const total = parts.reduce((s, p) => s + p.cols, 0);
  const out = new Float32Array(rows * total);
  let c0 = 0;
  for (const p of parts) {
    for (let r = 0; r < rows; r++) out.set(p.data.subarray(r * p.cols, (r + 1) * p.cols), r * total + c0);
    c0 += p.cols;
  }
  return out;
}

/** Columns [c0, c1) of a row-major [rows, cols] matrix. */
function columns(x: Float32Array, rows: number, cols: number, c0: number, c1: number): Float32Array {
  const out = new Float32Array(rows * (c1 - c0));
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * cols + c0, r * cols + c1), r * (c1 - c0));
  return out;
}

/** Registers every weight once, in the per-chain form the branches read. */
function registerWeights(root: GraphBuilder, ckpt: Checkpoint): void {
  const c = ckpt.config;
  const w = ckpt.weights;
  const { dk, fk, kvWidth, vocab_size: V, hidden: D } = c;
  const width = (i: number): number => c.chainWidths[i];
  const gains = (name: string, g: Float32Array): void => {
    for (let i = 0; i < c.nChains; i++) root.weight(`${name}.c${i + 1}`, [width(i)], g.slice(dk[i], dk[i + 1]));
  };
  const linear = (name: string, blocks: ChainLinear, inPrefix: number[], from = 0): void => {
    for (let i = from; i < c.nChains; i++) {
      root.weight(`${name}.c${i + 1}`, [inPrefix[i + 1], blocks[i].length / inPrefix[i + 1]], blocks[i]);
    }
  };
  for (let i = 0; i < c.nChains; i++) {
    root.weight(`embed.c${i + 1}`, [V, width(i)], columns(w.embed, V, D, dk[i], dk[i + 1]));
    if (!c.tie_embeddings) root.weight(`head.c${i + 1}`, [V, width(i)], columns(w.head, V, D, dk[i], dk[i + 1]));
  }
  w.layers.forEach((L, l) => {
    const p = `l${l}`;
    gains(`${p}.attn_norm`, L.attnNorm);
    // Chain 1's query block, the keys and the values all read x_1: one fused matrix.
    const c1 = width(0);
    root.weight(`${p}.qkv`, [c1, c1 + 2 * kvWidth], hcat([{ data: L.q[0], cols: c1 }, { data: L.k, cols: kvWidth }, { data: L.v, cols: kvWidth }], c1));
    linear(`${p}.q`, L.q, dk, 1);
    linear(`${p}.o`, L.o, dk);
    gains(`${p}.ffn_norm`, L.ffnNorm);
    for (let i = 0; i < c.nChains; i++) {
      const fi = c.ffn_chain_dims[i];
      root.weight(`${p}.gate_up.c${i + 1}`, [dk[i + 1], 2 * fi], hcat([{ data: L.gate[i], cols: fi }, { data: L.up[i], cols: fi }], dk[i + 1]));
    }
    linear(`${p}.down`, L.down, fk);
  });
  gains("norm", w.norm);
}

/** Values the root computes once per call and every branch reads. */
interface Shared {
  tokens: string;
  rows: string;
  cos4: string; // [T, 1, 1, hd] for queries [T, kv, G, hd]
  sin4: string;
  cos3: string; // [T, 1, hd] for keys [T, kv, hd]
  sin3: string;
  mask: string; // [T, S] additive causal mask
  pastKey: string[];
  pastValue: string[];
}

class ChainModel {
  constructor(
    private readonly g: GraphBuilder,
    private readonly c: ColmConfig,
    private readonly k: number,
  ) {}

  /** x_{≤i}: the first d_i (or prefix[i]) columns of x. */
  private prefix(x: string, prefix: number[], i: number): string {
    if (i === this.k) return x;
    return this.g.op("Slice", [x, this.g.int64([0]), this.g.int64([prefix[i]]), this.g.int64([1])]);
  }

  private concat(parts: string[], axis: number): string {
    return parts.length === 1 ? parts[0] : this.g.op("Concat", parts, { axis });
  }

  /** Chain linear: y_i = x_{≤i} · W_i for i = 1 … k, concatenated. */
  chainLinear(x: string, name: string, inPrefix: number[]): string {
    const ys: string[] = [];
    for (let i = 1; i <= this.k; i++) ys.push(this.g.op("MatMul", [this.prefix(x, inPrefix, i), `${name}.c${i}`]));
    return this.concat(ys, 1);
  }

  /** Chain RMSNorm: y_i = x_i / sqrt(mean(x_i²) + eps) · g_i, each chain on its own. */
  chainNorm(x: string, name: string): string {
    const { g, k } = this;
    const widths = this.c.chainWidths.slice(0, k);
    const gain = this.concat(widths.map((_, i) => `${name}.c${i + 1}`), 0);
    const rms = (v: string): string => {
      const ms = g.op("ReduceMean", [g.op("Mul", [v, v])], { axes: [-1], keepdims: 1 });
      return g.op("Mul", [v, g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [ms, g.float([this.c.norm_eps], true)])])])]);
    };
    let normed: string;
    if (widths.every((w) => w === widths[0])) {
      // Equal chains: view [T, k, c] and normalise the last axis, one op per step for all chains.
      const grouped = g.op("Reshape", [x, g.int64([0, k, widths[0]])]);
      normed = g.op("Reshape", [rms(grouped), g.int64([0, this.c.dk[k]])]);
    } else {
      const parts = g.ops("Split", [x, g.int64(widths)], k, { axis: 1 });
      normed = this.concat(parts.map(rms), 1);
    }
    return g.op("Mul", [normed, gain]);
  }

  /** Rotary embedding, rotate-half convention: x·cos + rotate_half(x)·sin. */
  rope(x: string, cos: string, sin: string): string {
    const g = this.g;
    const half = this.c.head_dim / 2;
    const [a, b] = g.ops("Split", [x, g.int64([half, half])], 2, { axis: -1 });
    const rotated = g.op("Concat", [g.op("Neg", [b]), a], { axis: -1 });
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])]);
  }

  /** One block; returns the new hidden state and this layer's new keys and values. */
  block(x: string, l: number, s: Shared, maskG: string): { x: string; key: string; value: string } {
    const { g, c, k } = this;
    const { dk, fk, head_dim: hd, kv_heads: kvh, kvWidth } = c;
    const p = `l${l}`;
    const groups = c.chain_heads.slice(0, k).map((h) => h / kvh); // query heads per kv head, per chain
    const G = groups.reduce((a, b) => a + b, 0);

    // Attention. Queries: chain linear; keys and values: chain 1 only (fused with q's chain 1).
    const xn = this.chainNorm(x, `${p}.attn_norm`);
    const [q1, keyNew, valueNew] = g.ops("Split", [g.op("MatMul", [this.prefix(xn, dk, 1), `${p}.qkv`]), g.int64([c.chainWidths[0], kvWidth, kvWidth])], 3, { axis: 1 });
    const qs = [q1];
    for (let i = 2; i <= k; i++) qs.push(g.op("MatMul", [this.prefix(xn, dk, i), `${p}.q.c${i}`]));
    // Per-chain grouped-query sharing: head m of chain i reads kv head floor(m / g_i), so chain i's
    // heads view as [T, kv, g_i, hd]; stacking chains on axis 2 groups every query by its kv head.
    const q = this.concat(qs.map((qi, i) => g.op("Reshape", [qi, g.int64([0, kvh, groups[i], hd])])), 2);
    const qRot = g.op("Mul", [this.rope(q, s.cos4, s.sin4), g.float([1 / Math.sqrt(hd)], true)]);
    const qHeads = g.op("Reshape", [g.op("Transpose", [qRot], { perm: [1, 2, 0, 3] }), g.int64([kvh, -1, hd])]); // [kv, G·T, hd]

    const keyRot = this.rope(g.op("Reshape", [keyNew, g.int64([0, kvh, hd])]), s.cos3, s.sin3); // [T, kv, hd]
    const kvView = (past: string): string => g.op("Reshape", [past, g.int64([0, kvh, hd])]);
    const keys = g.op("Concat", [kvView(s.pastKey[l]), keyRot], { axis: 0 }); // [S, kv, hd]
    const values = g.op("Concat", [kvView(s.pastValue[l]), g.op("Reshape", [valueNew, g.int64([0, kvh, hd])])], { axis: 0 });
    const scores = g.op("MatMul", [qHeads, g.op("Transpose", [keys], { perm: [1, 2, 0] })]); // [kv, G·T, S]
    const probs = g.op("Softmax", [g.op("Add", [scores, maskG])], { axis: -1 });
    const heads = g.op("MatMul", [probs, g.op("Transpose", [values], { perm: [1, 0, 2] })]); // [kv, G·T, hd]
    const byChain = g.op("Reshape", [heads, g.int64([kvh, G, -1, hd])]);
    const chainParts = k === 1 ? [byChain] : g.ops("Split", [byChain, g.int64(groups)], k, { axis: 1 });
    const attn = this.concat(
      chainParts.map((part, i) => g.op("Reshape", [g.op("Transpose", [part], { perm: [2, 0, 1, 3] }), g.int64([-1, c.chain_heads[i] * hd])])),
      1,
    ); // [T, d_k], head chains in chain order
    const h = g.op("Add", [x, this.chainLinear(attn, `${p}.o`, dk)]);

    // SwiGLU feed-forward: a_i = silu(gate_i) ⊙ up_i, gate and up fused per chain.
    const hn = this.chainNorm(h, `${p}.ffn_norm`);
    const acts: string[] = [];
    for (let i = 1; i <= k; i++) {
      const fi = c.ffn_chain_dims[i - 1];
      const [gate, up] = g.ops("Split", [g.op("MatMul", [this.prefix(hn, dk, i), `${p}.gate_up.c${i}`]), g.int64([fi, fi])], 2, { axis: 1 });
      acts.push(g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]));
    }
    const out = g.op("Add", [h, this.chainLinear(this.concat(acts, 1), `${p}.down`, fk)]);
    return { x: out, key: g.op("Reshape", [keyRot, g.int64([0, kvWidth])]), value: valueNew };
  }

  /** Sub-model k: embedding, L blocks, head for the requested rows. Declares the branch outputs. */
  build(s: Shared, tiedHead: boolean, outName: (name: string) => string): void {
    const { g, c, k } = this;
    const G = c.chain_heads.slice(0, k).reduce((a, h) => a + h / c.kv_heads, 0);
    const maskG = G === 1 ? s.mask : g.op("Tile", [s.mask, g.int64([G, 1])]); // rows are (group, t)

    let x = this.concat(
      Array.from({ length: k }, (_, i) => g.op("Gather", [`embed.c${i + 1}`, s.tokens], { axis: 0 })),
      1,
    );
    const keys: string[] = [];
    const values: string[] = [];
    for (let l = 0; l < c.n_layers; l++) {
      const b = this.block(x, l, s, maskG);
      x = b.x;
      keys.push(b.key);
      values.push(b.value);
    }
    // Head: logits_k = y_{≤k} · H[:, :d_k]ᵀ = Σ_i y_i · H_iᵀ, for the requested rows only.
    const hidden = g.op("Gather", [x, s.rows], { axis: 0 });
    const y = this.chainNorm(hidden, "norm");
    let logits = "";
    for (let i = 1; i <= k; i++) {
      const yi = k === 1 ? y : g.op("Slice", [y, g.int64([c.dk[i - 1]]), g.int64([c.dk[i]]), g.int64([1])]);
      const head = `${tiedHead ? "embed" : "head"}.c${i}`;
      logits = g.op("Gemm", i === 1 ? [yi, head] : [yi, head, logits], { transB: 1 });
    }
    g.output(outName("logits"), logits);
    g.output(outName("hidden"), hidden);
    for (let l = 0; l < c.n_layers; l++) {
      g.output(outName(`new_key_${l}`), keys[l]);
      g.output(outName(`new_value_${l}`), values[l]);
    }
  }
}

export const graphOutputNames = (c: ColmConfig): string[] => [
  "logits",
  "hidden",
  ...Array.from({ length: c.n_layers }, (_, l) => [`new_key_${l}`, `new_value_${l}`]).flat(),
];

export interface BuiltGraph {
  model: Uint8Array;
  /** Bytes of the float32 initializers (each weight once). */
  weightBytes: number;
}

export function buildColmGraph(ckpt: Checkpoint): BuiltGraph {
  const c = ckpt.config;
  const root = new GraphBuilder("colm-air");
  registerWeights(root, ckpt);
  const g = root;
  const hd = c.head_dim;
  const tokens = g.input("tokens", DataType.INT64, ["T"]);
  const chains = g.input("chains", DataType.INT64, []);
  const rows = g.input("logits_rows", DataType.INT64, ["R"]);
  const pastKey: string[] = [];
  const pastValue: string[] = [];
  for (let l = 0; l < c.n_layers; l++) {
    pastKey.push(g.input(`past_key_${l}`, F, ["P", c.kvWidth]));
    pastValue.push(g.input(`past_value_${l}`, F, ["P", c.kvWidth]));
  }

  // Positions P … P+T-1 continue the cache; rotary angles are computed in float64.
  const scalarDim = (x: string): string => g.op("Gather", [g.op("Shape", [x]), g.int64([0], true)], { axis: 0 });
  const P = scalarDim(pastKey[0]);
  const S = g.op("Add", [P, scalarDim(tokens)]);
  const positions = g.op("Range", [P, S, g.int64([1], true)]);
  const posCol = g.op("Unsqueeze", [positions, g.int64([1])]); // [T, 1]
  const invFreq = Array.from({ length: hd / 2 }, (_, j) => Math.pow(c.rope_theta, (-2 * j) / hd));
  const freqs = g.op("Mul", [g.op("Cast", [posCol], { to: DataType.DOUBLE }), g.double(invFreq)]);
  const angles = g.op("Concat", [freqs, freqs], { axis: 1 }); // [T, hd]
  const cos = g.op("Cast", [g.op("Cos", [angles])], { to: F });
  const sin = g.op("Cast", [g.op("Sin", [angles])], { to: F });
  const keyPos = g.op("Unsqueeze", [g.op("Range", [g.int64([0], true), S, g.int64([1], true)]), g.int64([0])]); // [1, S]
  const mask = g.op("Where", [g.op("Greater", [keyPos, posCol]), g.float([-Infinity], true), g.float([0], true)]);
  const shared: Shared = {
    tokens,
    rows,
    cos4: g.op("Unsqueeze", [cos, g.int64([1, 2])]),
    sin4: g.op("Unsqueeze", [sin, g.int64([1, 2])]),
    cos3: g.op("Unsqueeze", [cos, g.int64([1])]),
    sin3: g.op("Unsqueeze", [sin, g.int64([1])]),
    mask,
    pastKey,
    pastValue,
  };

  // Dispatch: If(chains == 1, branch 1, If(chains == 2, branch 2, … branch n)).
  const outNames = graphOutputNames(c);
  const branch = (k: number): GraphBuilder => {
    const sub = g.subgraph(`chains_${k}`);
    new ChainModel(sub, c, k).build(shared, c.tie_embeddings, (n) => `b${k}.${n}`);
    return sub;
  };
  const dispatch = (parent: GraphBuilder, k: number): string[] => {
    const cond = parent.op("Equal", [chains, parent.int64([k], true)]);
    let elseGraph: GraphBuilder;
    if (k + 1 === c.nChains) {
      elseGraph = branch(k + 1);
    } else {
      elseGraph = parent.subgraph(`dispatch_${k + 1}`);
      dispatch(elseGraph, k + 1).forEach((v, i) => elseGraph.output(`d${k + 1}.${outNames[i]}`, v));
    }
    return parent.ops("If", [cond], outNames.length, {
      then_branch: { graph: branch(k).proto() },
      else_branch: { graph: elseGraph.proto() },
    });
  };
  if (c.nChains === 1) {
    new ChainModel(g, c, 1).build(shared, c.tie_embeddings, (n) => n); // a dense model: nothing to dispatch
  } else {
    dispatch(g, 1).forEach((v, i) => g.output(outNames[i], v));
  }
  return { model: g.model(), weightBytes: g.weightBytes };
}
