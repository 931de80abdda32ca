// Builds the ONNX graph of a CoLM-Air checkpoint: one graph, one copy of every weight, serving
// every chain count. Chain causality (spec §1) lets the graph run chain by chain: pass i computes
// output chain i of every layer, reading what passes 1 … i-1 left at each layer. Pass 1 (the
// chain-1 model, which also yields every layer's keys and values) always runs; pass i runs
// inside If(chains ≥ i), after pass i-1. So sub-model k costs exactly passes 1 … k, each
// weight block W_i belongs to exactly one node (onnxruntime prepacks it once), and only the
// blocks on and below the chain diagonal exist. Attention of a fresh prompt (empty cache) runs in
// one fused causal kernel (GroupQueryAttention); later steps read the cache buffers in place.
//
// A call runs B sequences ("rows") of T new tokens each; token (b, t) is flattened to b·T + t.
// Inputs:  tokens int64 [B, T]; chains int64 scalar (passes to run); logits_rows int64 [R] (flattened
//          tokens whose logits are wanted; empty for a KV-only prefill); logits_chains int64 [R]
//          (the sub-model, ≤ chains, whose logits each of those rows gets); past_length int64 [B];
//          past_key_l / past_value_l float [B, kv_heads, C, hd], the rows' cache buffers (C ≥ P_b
//          slots, the first P_b of row b valid).
// Outputs: logits [R, V]; hidden [R, d_k] (final hidden state, pre-norm);
//          new_key_l / new_value_l [B, kv_heads, T, hd] (rotated keys and values of the new tokens,
//          head-major like the cache, so appending them is one block copy per row and head).
import type { Checkpoint, ChainLinear } from "../models/checkpoint.ts";
import type { ColmConfig } from "../models/config.ts";
import { DataType, GraphBuilder } from "./graph.ts";

const F = DataType.FLOAT;
const MS = "com.microsoft";

/** Columns [c0, c1) of a row-major [rows, cols] matrix. */
function columns(x: Float32Array, rows: number, cols: number, c0: number, c1: number): Float32Array {
  const out = new Float32Array(rows * (c1 - c0));
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * cols + c0, r * cols + c1), r * (c1 - c0));
  return out;
}

/** Registers every weight once, in the per-chain form the passes read. */
function registerWeights(root: GraphBuilder, ckpt: Checkpoint): void {
  const c = ckpt.config;
  const w = ckpt.weights;
  const { dk, fk, kvWidth, vocab_size: V, hidden: D } = c;
  const gains = (name: string, g: Float32Array): void => {
    for (let i = 0; i < c.nChains; i++) root.weight(`${name}.c${i + 1}`, [c.chainWidths[i]], g.slice(dk[i], dk[i + 1]));
  };
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
    gains(`${p}.attn_norm`, L.attnNorm);
    // The attention scale 1/sqrt(hd) is folded into the queries (rotary embedding is linear, so
    // rope(s·q) = s·rope(q)); exact when hd is a power of 4, and it spares every q·Kᵀ a scaling
    // pass (measured: a scaled q·Kᵀ makes a decode attention block 28 µs instead of 22).
    linear(`${p}.q`, L.q, dk, 1 / Math.sqrt(c.head_dim));
    root.weight(`${p}.k`, [c1, kvWidth], L.k);
    root.weight(`${p}.v`, [c1, kvWidth], L.v);
    linear(`${p}.o`, L.o, dk);
    gains(`${p}.ffn_norm`, L.ffnNorm);
    linear(`${p}.gate`, L.gate, dk);
    linear(`${p}.up`, L.up, dk);
    linear(`${p}.down`, L.down, fk);
  });
  gains("norm", w.norm);
  // Rotary tables for every position, computed in float64: [max_position, hd/2].
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
  root.weight("rope.cos", [c.max_position, hd / 2], cos);
  root.weight("rope.sin", [c.max_position, hd / 2], sin);
}

/** Values the root computes once per call and every pass reads. */
interface Shared {
  tokens: string; // [B·T]
  rows: string;
  bt: string; // the shape [B, T, -1], to view [B·T, n] activations per row
  positions: string; // [B, T] int64
  fresh: string; // bool: every P_b = 0, the caches are empty (prompts' first chunks)
  seqlensK: string; // int32 [B]: T - 1 (GroupQueryAttention's convention), for fresh prompts
  totalLength: string; // int32: T
  /** [group·T, T] additive causal mask among a row's new tokens, for query rows (g, t). */
  maskNew: (group: number) => string;
  maskPast: string; // [B, 1, 1, C] additive mask hiding cache slots ≥ P_b
  splitPastNew: string; // [C, T]
  pastKey: string[];
  pastValue: string[];
  /** Rotated keys / values of the new tokens, [B, T, kv·hd], per layer (made by pass 1). */
  keys: string[];
  values: string[];
  /** The same as [B, kv, T, hd], for the cache path of every pass. */
  keyHeads: string[];
  valueHeads: string[];
}

/**
 * What passes 1 … i leave at each layer for the passes after them: the inputs of pass i's chain
 * linears, x_{≤i}, so pass i+1 extends each with its own chain by one Concat.
 */
interface ChainActivations {
  attnIn: string[]; // normed attention inputs x̂_{≤i}, [T, d_i]
  heads: string[]; // attention outputs of chains 1 … i's heads, [T, (h_1+…+h_i)·hd]
  ffnIn: string[]; // normed FFN inputs ĥ_{≤i}, [T, d_i]
  act: string[]; // SwiGLU activations a_{≤i}, [T, f_1+…+f_i]
  hidden: string; // final hidden state x^L_{≤i} of the requested rows, [R, d_i]
  logits: string; // Σ_{j≤i} y_j · H_jᵀ, [R, V]
}

/** Pass i: output chain i of every layer (spec §3), given the chains before it. */
class ChainPass {
  private readonly acts: ChainActivations = { attnIn: [], heads: [], ffnIn: [], act: [], hidden: "", logits: "" };

  constructor(
    private readonly g: GraphBuilder,
    private readonly c: ColmConfig,
    private readonly i: number,
    private readonly before: ChainActivations | undefined,
  ) {}

  /** x_{≤i}: the earlier chains' values at the same point, then this chain's. */
  private upTo(pick: (a: ChainActivations) => string, mine: string): string {
    return this.before ? this.g.op("Concat", [pick(this.before), mine], { axis: 1 }) : mine;
  }

  /** Chain RMSNorm of chain i on its own: x_i / sqrt(mean(x_i²) + eps) · g_i. */
  private norm(x: string, name: string): string {
    return this.g.op("SimplifiedLayerNormalization", [x, `${name}.c${this.i}`], { axis: -1, epsilon: { float: this.c.norm_eps } });
  }

  /**
   * The residual sum r = x + delta and its chain RMSNorm, in one fused node (a batch-1 decode
   * step runs thousands of small nodes, and each costs a few microseconds of its own): [norm, r].
   */
  private addNorm(x: string, delta: string, name: string): [string, string] {
    const [normed, , , sum] = this.g.ops("SkipSimplifiedLayerNormalization", [delta, x, `${name}.c${this.i}`], 4, { epsilon: { float: this.c.norm_eps } }, MS);
    return [normed, sum];
  }

  /** Rotary embedding (rotate-half) of [B·T, heads·hd] at the shared positions → [B, T, heads·hd]. */
  private rope(x: string, heads: number, s: Shared): string {
    const g = this.g;
    const x3 = g.op("Reshape", [x, s.bt]);
    return g.op("RotaryEmbedding", [x3, s.positions, "rope.cos", "rope.sin"], { interleaved: 0, num_heads: heads }, MS);
  }

  /**
   * Causal attention of chain i's heads (rotated queries [B, T, h_i·hd]) over the shared keys and
   * values → [B·T, h_i·hd]. Head m of chain i reads kv head floor(m / (h_i / kv_heads)), which is
   * the usual grouped-query layout for chain i's heads alone.
   */
  private attention(q: string, l: number, s: Shared): string {
    const { g, c, i } = this;
    const heads = c.chain_heads[i - 1];
    // A fresh prompt: one fused causal kernel, no [T, T] score matrix through memory. Only its
    // first output is declared: asked for present keys/values too, the kernel zero-fills and copies
    // them for every head (the cache already has them, from new_key / new_value).
    const fresh = g.subgraph(`fresh_${i}_${l}`);
    const [out] = fresh.ops("GroupQueryAttention", [q, s.keys[l], s.values[l], "", "", s.seqlensK, s.totalLength], 1, { num_heads: heads, kv_num_heads: c.kv_heads, scale: { float: 1 } }, MS);
    fresh.branchOutput(fresh.op("Reshape", [out, fresh.int64([-1, heads * c.head_dim])]));
    // Decode and later chunks: the cache is read in place, the new tokens are attended beside it.
    const cached = g.subgraph(`cached_${i}_${l}`);
    cached.branchOutput(this.cacheAttention(cached, q, l, s));
    return g.ops("If", [s.fresh], 1, { then_branch: { graph: fresh.proto() }, else_branch: { graph: cached.proto() } })[0];
  }

  /**
   * Attention over each row's cache ([B, kv, C, hd], slots ≥ P_b masked) and its new tokens, with
   * plain ops. Queries regroup by kv head: [B, T, kv, group, hd] → [B, kv, group·T, hd].
   */
  private cacheAttention(g: GraphBuilder, q: string, l: number, s: Shared): string {
    const { c } = this;
    const hd = c.head_dim;
    const kvh = c.kv_heads;
    const group = c.chain_heads[this.i - 1] / kvh;
    const qByKv = g.op("Transpose", [g.op("Reshape", [q, g.int64([0, 0, kvh, group, hd])])], { perm: [0, 2, 3, 1, 4] });
    const qHeads = g.op("Reshape", [qByKv, g.int64([0, kvh, -1, hd])]); // [B, kv, group·T, hd]
    const transB = { transB: 1 }; // queries come scaled by 1/sqrt(hd) (see registerWeights)
    const scoresPast = g.op("Add", [g.op("FusedMatMul", [qHeads, s.pastKey[l]], transB, MS), s.maskPast]); // [B, kv, group·T, C]
    const scoresNew = g.op("Add", [g.op("FusedMatMul", [qHeads, s.keyHeads[l]], transB, MS), s.maskNew(group)]); // [B, kv, group·T, T]
    const probs = g.op("Softmax", [g.op("Concat", [scoresPast, scoresNew], { axis: -1 })], { axis: -1 });
    const [probsPast, probsNew] = g.ops("Split", [probs, s.splitPastNew], 2, { axis: -1 });
    const out = g.op("Add", [g.op("MatMul", [probsPast, s.pastValue[l]]), g.op("MatMul", [probsNew, s.valueHeads[l]])]);
    const byGroup = g.op("Reshape", [out, g.int64([0, kvh, group, -1, hd])]); // [B, kv, group, T, hd]
    return g.op("Reshape", [g.op("Transpose", [byGroup], { perm: [0, 3, 1, 2, 4] }), g.int64([-1, group * kvh * hd])]);
  }

  /** Runs the pass; pass 1 also makes (and publishes in `s`) every layer's keys and values. */
  build(s: Shared, tiedHead: boolean): { acts: ChainActivations; newKeys: string[]; newValues: string[] } {
    const { g, c, i } = this;
    const kvh = c.kv_heads;
    const newKeys: string[] = [];
    const newValues: string[] = [];

    let x = g.op("Gather", [`embed.c${i}`, s.tokens], { axis: 0 }); // x⁰_i = E[token, d_{i-1}:d_i]
    let xn = this.norm(x, "l0.attn_norm");
    for (let l = 0; l < c.n_layers; l++) {
      const p = `l${l}`;
      // Attention: h_i = x_i + (heads_{≤i} · Wo_i), heads from queries x̂_{≤i} · Wq_i (x̂_i = norm(x_i)).
      if (i === 1) {
        // Chain 1 also makes the keys and values every chain shares (spec §3, CoLM-Air).
        const keyRot = this.rope(g.op("MatMul", [xn, `${p}.k`]), kvh, s);
        const value = g.op("MatMul", [xn, `${p}.v`]);
        const value3 = g.op("Reshape", [value, s.bt]);
        // Made under their output names: a renaming Identity would copy every prompt's keys and values.
        const byKv = (x: string, name: string): string => g.ops("Transpose", [g.op("Reshape", [x, g.int64([0, 0, kvh, c.head_dim])])], [name], { perm: [0, 2, 1, 3] })[0];
        s.keys.push(keyRot);
        s.values.push(value3);
        s.keyHeads.push(byKv(keyRot, `new_key_${l}`));
        s.valueHeads.push(byKv(value3, `new_value_${l}`));
        newKeys.push(s.keyHeads[l]);
        newValues.push(s.valueHeads[l]);
      }
      const attnIn = this.acts.attnIn[l] = this.upTo((a) => a.attnIn[l], xn);
      const q = g.op("MatMul", [attnIn, `${p}.q.c${i}`]);
      const heads = this.acts.heads[l] = this.upTo((a) => a.heads[l], this.attention(this.rope(q, c.chain_heads[i - 1], s), l, s));
      const [hn, h] = this.addNorm(x, g.op("MatMul", [heads, `${p}.o.c${i}`]), `${p}.ffn_norm`);

      // SwiGLU: a_i = silu(ĥ_{≤i} · Wgate_i) ⊙ (ĥ_{≤i} · Wup_i); x_i ← h_i + a_{≤i} · Wdown_i.
      const ffnIn = this.acts.ffnIn[l] = this.upTo((a) => a.ffnIn[l], hn);
      const gate = g.op("MatMul", [ffnIn, `${p}.gate.c${i}`]);
      const up = g.op("MatMul", [ffnIn, `${p}.up.c${i}`]);
      const act = g.op("Mul", [g.op("QuickGelu", [gate], { alpha: { float: 1 } }, MS), up]); // QuickGelu(α=1) is silu
      const down = g.op("MatMul", [this.acts.act[l] = this.upTo((a) => a.act[l], act), `${p}.down.c${i}`]);
      if (l + 1 < c.n_layers) [xn, x] = this.addNorm(h, down, `l${l + 1}.attn_norm`);
      else x = g.op("Add", [h, down]);
    }
    // Head: logits_k = Σ_{i≤k} y_i · H_iᵀ, for the requested rows only. A single-chain model's are
    // made under the graph's output names (no renaming Identity).
    const out = (name: string): number | string[] => (c.nChains === 1 ? [name] : 1);
    const hidden = g.ops("Gather", [x, s.rows], out("hidden"), { axis: 0 })[0];
    this.acts.hidden = this.upTo((a) => a.hidden, hidden);
    const y = this.norm(hidden, "norm");
    const head = `${tiedHead ? "embed" : "head"}.c${i}`;
    const prev = this.before;
    this.acts.logits = g.ops("Gemm", prev ? [y, head, prev.logits] : [y, head], out("logits"), { transB: 1 })[0];
    return { acts: this.acts, newKeys, newValues };
  }
}

/** The serialized ONNX model (ModelProto) of a checkpoint. */
export function buildColmGraph(ckpt: Checkpoint): Uint8Array {
  return colmGraph(ckpt).model();
}

/** The graph of a checkpoint, before serialization (tests inspect who reads each weight). */
export function colmGraph(ckpt: Checkpoint): GraphBuilder {
  const c = ckpt.config;
  const g = new GraphBuilder("colm-air");
  registerWeights(g, ckpt);
  const tokens = g.input("tokens", DataType.INT64, ["B", "T"]);
  const chains = g.input("chains", DataType.INT64, []);
  const rows = g.input("logits_rows", DataType.INT64, ["R"]);
  const rowChains = g.op("Unsqueeze", [g.input("logits_chains", DataType.INT64, ["R"]), g.int64([1])]); // [R, 1]
  const P = g.input("past_length", DataType.INT64, ["B"]);
  const pastKey: string[] = [];
  const pastValue: string[] = [];
  for (let l = 0; l < c.n_layers; l++) {
    pastKey.push(g.input(`past_key_${l}`, F, ["B", c.kv_heads, "C", c.head_dim]));
    pastValue.push(g.input(`past_value_${l}`, F, ["B", c.kv_heads, "C", c.head_dim]));
  }

  // Positions P_b … P_b+T-1 continue each row's cache; masks hide future new tokens and unused slots.
  const dim = (x: string, axis: number): string => g.op("Gather", [g.op("Shape", [x]), g.int64([axis], true)], { axis: 0 });
  const B = dim(tokens, 0);
  const T = dim(tokens, 1);
  const C = dim(pastKey[0], 2);
  const asVector = (x: string): string => g.op("Unsqueeze", [x, g.int64([0])]);
  const zero = g.int64([0], true);
  const one = g.int64([1], true);
  // A large finite negative rather than -inf: onnxruntime's broadcast Add is ~3× slower on infinities,
  // and exp(-1e9 - max) is exactly 0 in float32 all the same.
  const blocked = (hide: string): string => g.op("Mul", [g.op("Cast", [hide], { to: F }), g.float([-1e9], true)]);
  const newIdx = g.op("Range", [zero, T, one]);
  const slot = g.op("Unsqueeze", [g.op("Range", [zero, C, one]), g.int64([0])]); // [1, C]
  const pastCol = g.op("Unsqueeze", [P, g.int64([1])]); // [B, 1]
  const fresh = g.op("Equal", [g.op("ReduceMax", [P], { keepdims: 0 }), zero]);
  // One causal mask per query-group size, made once in the root rather than in every attention, and
  // only read by the cache path: for a fresh prompt it is empty ([0, 0], not [T, T] made for nothing).
  const maskIdx = g.op("Range", [zero, g.op("Where", [fresh, zero, T]), one]);
  const maskNew = new Map<number, string>([[1, blocked(g.op("Greater", [g.op("Unsqueeze", [maskIdx, g.int64([0])]), g.op("Unsqueeze", [maskIdx, g.int64([1])])]))]]);
  for (const h of c.chain_heads) {
    const group = h / c.kv_heads;
    if (!maskNew.has(group)) maskNew.set(group, g.op("Tile", [maskNew.get(1)!, g.int64([group, 1])]));
  }
  const shared: Shared = {
    tokens: g.op("Reshape", [tokens, g.int64([-1])]),
    rows,
    bt: g.op("Concat", [asVector(B), asVector(T), g.int64([-1])], { axis: 0 }),
    positions: g.op("Add", [g.op("Unsqueeze", [newIdx, g.int64([0])]), pastCol]),
    fresh,
    seqlensK: g.op("Cast", [g.op("Expand", [g.op("Sub", [T, one]), asVector(B)])], { to: DataType.INT32 }),
    totalLength: g.op("Cast", [T], { to: DataType.INT32 }),
    maskNew: (group) => maskNew.get(group)!,
    maskPast: g.op("Unsqueeze", [blocked(g.op("Not", [g.op("Less", [slot, pastCol])])), g.int64([1, 2])]),
    splitPastNew: g.op("Concat", [asVector(C), asVector(T)], { axis: 0 }),
    pastKey,
    pastValue,
    keys: [],
    values: [],
    keyHeads: [],
    valueHeads: [],
  };

  const first = new ChainPass(g, c, 1, undefined).build(shared, c.tie_embeddings);
  first.newKeys.forEach((k, l) => g.output(`new_key_${l}`, k));
  first.newValues.forEach((v, l) => g.output(`new_value_${l}`, v));

  // Pass i runs inside If(chains ≥ i) in the root graph, one If after another rather than nested:
  // onnxruntime runs the MatMuls of an If nested two deep or more 1.6–2× slower (measured: their
  // weights stream at 23 GB/s instead of 39), so every pass sits at depth ≤ 1. The If publishes
  // what the next pass reads; when it is skipped, so are the Ifs after it, and its else branch
  // returns the logits and hidden state so far and empty tensors for the rest (one Split node).
  const L = c.n_layers;
  const empty = c.nChains > 2 ? g.float([]) : ""; // [0]: what a skip branch returns for values nobody will read
  let done = first.acts;
  for (let i = 2; i <= c.nChains; i++) {
    const last = i === c.nChains;
    const published = (a: ChainActivations): string[] => [a.logits, a.hidden, ...(last ? [] : [...a.attnIn, ...a.heads, ...a.ffnIn, ...a.act])];
    const run = g.subgraph(`chain_${i}`);
    const pass = new ChainPass(run, c, i, done).build(shared, c.tie_embeddings);
    // Rows that asked for fewer than i chains keep the logits of passes 1 … i-1 (chain causality:
    // running more chains never changes the smaller sub-model's output).
    const fewer = run.op("Less", [rowChains, run.int64([i], true)]);
    pass.acts.logits = run.op("Where", [fewer, done.logits, pass.acts.logits]);
    const values = published(pass.acts);
    values.forEach((v) => run.branchOutput(v));
    const skip = g.subgraph(`skip_${i}`);
    skip.branchOutput(done.logits);
    skip.branchOutput(done.hidden);
    if (!last) skip.ops("Split", [empty, skip.int64(new Array<number>(4 * L).fill(0))], 4 * L, { axis: 0 }).forEach((v) => skip.branchOutput(v));
    const more = g.op("Greater", [chains, g.int64([i - 1], true)]);
    const outs = g.ops("If", [more], last ? ["logits", "hidden"] : values.length, { then_branch: { graph: run.proto() }, else_branch: { graph: skip.proto() } });
    const part = (j: number): string[] => outs.slice(2 + j * L, 2 + (j + 1) * L);
    done = { logits: outs[0], hidden: outs[1], attnIn: part(0), heads: part(1), ffnIn: part(2), act: part(3) };
  }
  g.output("logits", done.logits);
  g.output("hidden", done.hidden);
  return g;
}
