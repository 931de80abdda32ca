// The graph's inputs (documented in colm-graph.ts), and what the root derives from them once per
// call for every chain to read: flattened tokens, positions, attention masks, shapes.
import type { ColmConfig } from "../models/config.ts";
import { DataType, type GraphBuilder } from "./graph.ts";

const F = DataType.FLOAT;

/** Values the root computes once per call and every chain reads. */
export interface Shared {
  tokens: string; // [B·T]
  rows: string; // [R]: flattened tokens whose logits are wanted
  rowChains: string; // [R, 1]: the sub-model each of those rows wants
  chains: string; // int64 scalar: the chain count the call runs
  B: string; // int64 [1]
  T: string; // int64 [1]
  BT: string; // int64 [1]: B·T
  R: string; // int64 [1]
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
  /** Chain 1's keys and values per layer (made by the chain-1 stack, read by every chain). */
  kv: LayerKv[];
}

/** Chain 1's new keys and values at one layer, as the fused kernel and the cache path read them. */
export interface LayerKv {
  keys: string; // rotated, [B, T, kv·hd]
  values: string; // [B, T, kv·hd]
  keyHeads: string; // [B, kv, T, hd], the cache's layout (and the new_key output)
  valueHeads: string;
}

interface Inputs {
  tokens: string; // [B, T]
  chains: string;
  rows: string; // [R]
  rowChains: string; // [R, 1]
  P: string; // [B]
  pastKey: string[]; // per layer [B, kv, C, hd]
  pastValue: string[];
}

function declareInputs(g: GraphBuilder, c: ColmConfig): Inputs {
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
  return { tokens, chains, rows, rowChains, P, pastKey, pastValue };
}

/**
 * An additive mask that hides where `hide` is true. A large finite negative rather than -inf:
 * onnxruntime's broadcast Add is much slower on infinities, and exp(-1e9 - max) is exactly 0 in
 * float32 all the same.
 */
function blocked(g: GraphBuilder, hide: string): string {
  return g.op("Mul", [g.op("Cast", [hide], { to: F }), g.float([-1e9], true)]);
}

/**
 * One causal mask among the new tokens per query-group size, made once in the root rather than in
 * every attention. Only the cache path reads it, so for a fresh prompt it is empty ([0, 0], not a
 * [T, T] made for nothing).
 */
function newTokenMasks(g: GraphBuilder, c: ColmConfig, fresh: string, T: string, zero: string, one: string): Map<number, string> {
  const maskIdx = g.op("Range", [zero, g.op("Where", [fresh, zero, T]), one]);
  const causal = g.op("Greater", [g.op("Unsqueeze", [maskIdx, g.int64([0])]), g.op("Unsqueeze", [maskIdx, g.int64([1])])]);
  const maskNew = new Map<number, string>([[1, blocked(g, causal)]]);
  for (const h of c.chain_heads) {
    const group = h / c.kv_heads;
    if (!maskNew.has(group)) maskNew.set(group, g.op("Tile", [maskNew.get(1)!, g.int64([group, 1])]));
  }
  return maskNew;
}

/**
 * The graph's inputs and what every chain reads of them. Positions P_b … P_b+T-1 continue each
 * row's cache; masks hide future new tokens and cache slots past P_b.
 */
export function graphInputs(g: GraphBuilder, c: ColmConfig): Shared {
  const { tokens, chains, rows, rowChains, P, pastKey, pastValue } = declareInputs(g, c);
  const dim = (x: string, axis: number): string => g.op("Gather", [g.op("Shape", [x]), g.int64([axis], true)], { axis: 0 });
  const asVector = (x: string): string => g.op("Unsqueeze", [x, g.int64([0])]);
  const B = dim(tokens, 0);
  const T = dim(tokens, 1);
  const C = dim(pastKey[0], 2);
  const Bv = asVector(B); // [1]
  const Tv = asVector(T);
  const zero = g.int64([0], true);
  const one = g.int64([1], true);
  const newIdx = g.op("Range", [zero, T, one]);
  const slot = g.op("Unsqueeze", [g.op("Range", [zero, C, one]), g.int64([0])]); // [1, C]
  const pastCol = g.op("Unsqueeze", [P, g.int64([1])]); // [B, 1]
  const fresh = g.op("Equal", [g.op("ReduceMax", [P], { keepdims: 0 }), zero]);
  const maskNew = newTokenMasks(g, c, fresh, T, zero, one);
  const flat = g.op("Reshape", [tokens, g.int64([-1])]);
  return {
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
    maskPast: g.op("Unsqueeze", [blocked(g, g.op("Not", [g.op("Less", [slot, pastCol])])), g.int64([1, 2])]),
    splitPastNew: g.op("Concat", [asVector(C), Tv], { axis: 0 }),
    pastKey,
    pastValue,
    kv: [],
  };
}
