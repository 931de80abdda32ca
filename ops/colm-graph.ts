// Builds the ONNX graph of a CoLM-Air checkpoint: one graph, one copy of every weight, serving
// every chain count. Chain causality (spec §1): output chain i of a layer reads only chains ≤ i.
// The root runs the chain-1 model over every layer (it always runs, and makes every layer's keys
// and values); If(chains ≥ 2) then runs chains 2 … n layer by layer, each reading what the chains
// before it left at the same layer. A chain from 3 on works on all rows when the call asks for it
// and on none when it does not, so sub-model k costs chains 1 … k (plus ~0.35 µs per empty node).
// Each weight block W_i belongs to exactly one node, at most one If deep (onnxruntime prepacks
// it once), and only the blocks on and below the chain diagonal exist. Chains 2 … n share one
// attention per layer, so a step reads each layer's cache twice however many chains run. Attention
// of a fresh prompt (empty cache) runs in one fused causal kernel (GroupQueryAttention); later
// steps read the cache buffers in place.
//
// A call runs B sequences ("rows") of T new tokens each; token (b, t) is flattened to b·T + t.
// Inputs:  tokens int64 [B, T]; chains int64 scalar (the chain count to run); logits_rows int64 [R] (flattened
//          tokens whose logits are wanted; empty for a KV-only prefill); logits_chains int64 [R]
//          (the sub-model, ≤ chains, whose logits each of those rows gets); past_length int64 [B];
//          past_key_l / past_value_l float [B, kv_heads, C, hd], the rows' cache buffers (C ≥ P_b
//          slots, the first P_b of row b valid).
// Outputs: logits [R, V]; hidden [R, d_k] (final hidden state, pre-norm);
//          new_key_l / new_value_l [B, kv_heads, T, hd] (rotated keys and values of the new tokens,
//          head-major like the cache, so appending them is one block copy per row and head).
import type { Checkpoint, ChainLinear } from "../models/checkpoint.ts";
import { DataType, GraphBuilder } from "./graph.ts";
import { LayerStack, type Shared } from "./layer-stack.ts";

const F = DataType.FLOAT;

/** Columns [c0, c1) of a row-major [rows, cols] matrix. */
function columns(x: Float32Array, rows: number, cols: number, c0: number, c1: number): Float32Array {
  const out = new Float32Array(rows * (c1 - c0));
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * cols + c0, r * cols + c1), r * (c1 - c0));
  return out;
}

/** Registers every weight once, in the per-chain form the stacks read. */
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
  const asVector = (x: string): string => g.op("Unsqueeze", [x, g.int64([0])]);
  const B = dim(tokens, 0);
  const T = dim(tokens, 1);
  const C = dim(pastKey[0], 2);
  const Bv = asVector(B); // [1]
  const Tv = asVector(T);
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
  const flat = g.op("Reshape", [tokens, g.int64([-1])]);
  const shared: Shared = {
    tokens: flat,
    rows,
    rowChains,
    chains,
    B: Bv,
    T: Tv,
    BT: g.op("Shape", [flat]),
    R: g.op("Shape", [rows]),
    positions: g.op("Add", [g.op("Unsqueeze", [newIdx, g.int64([0])]), pastCol]),
    fresh,
    seqlensK: g.op("Cast", [g.op("Expand", [g.op("Sub", [T, one]), Bv])], { to: DataType.INT32 }),
    totalLength: g.op("Cast", [T], { to: DataType.INT32 }),
    maskNew: (group) => maskNew.get(group)!,
    maskPast: g.op("Unsqueeze", [blocked(g.op("Not", [g.op("Less", [slot, pastCol])])), g.int64([1, 2])]),
    splitPastNew: g.op("Concat", [asVector(C), Tv], { axis: 0 }),
    pastKey,
    pastValue,
    kv: [],
  };

  // Chain 1 in the root: it always runs, and makes every layer's keys and values.
  const first = new LayerStack(g, c, shared, [1], undefined).build(c.tie_embeddings);
  shared.kv.forEach((kv, l) => {
    g.output(`new_key_${l}`, kv.keyHeads);
    g.output(`new_value_${l}`, kv.valueHeads);
  });
  if (c.nChains === 1) {
    g.output("logits", first.logits);
    g.output("hidden", first.hidden);
    return g;
  }
  // Chains 2 … n, layer by layer, in If(chains ≥ 2), one If deep (onnxruntime prepacks a weight
  // only for nodes at most one subgraph below it). One attention per layer serves all their heads
  // (per run of chains with equal head counts), so a call at k chains reads each layer's cache
  // twice, not k times: measured, attention was a quarter of a k=4 decode step.
  const rest = g.subgraph("chains_2_up");
  const more = new LayerStack(rest, c, shared, Array.from({ length: c.nChains - 1 }, (_, j) => j + 2), first).build(c.tie_embeddings);
  rest.branchOutput(more.logits);
  rest.branchOutput(more.hidden);
  const skip = g.subgraph("chain_1_only");
  skip.branchOutput(first.logits);
  skip.branchOutput(first.hidden);
  g.ops("If", [g.op("Greater", [chains, one])], ["logits", "hidden"], { then_branch: { graph: rest.proto() }, else_branch: { graph: skip.proto() } });
  g.output("logits", "logits");
  g.output("hidden", "hidden");
  return g;
}
