// The layers of a CoLM-Air graph (spec §3), built layer by layer for a run of consecutive chains:
// chain 1 in the root graph, chains 2 … n in its If(chains ≥ 2) branch (see colm-graph.ts).
import type { ColmConfig } from "../models/config.ts";
import type { GraphBuilder } from "./graph.ts";

const MS = "com.microsoft";

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

/**
 * What chains 1 … i leave at each layer for the chains after them: the inputs of chain i's chain
 * linears, x_{≤i}, which chain i+1 extends with its own chain by one Concat; and the head so far.
 */
export interface ChainActivations {
  attnIn: string[]; // normed attention inputs x̂_{≤i}, [B·T, d_i]
  heads: string[]; // attention outputs of chains 1 … i's heads, [B·T, (h_1+…+h_i)·hd]
  ffnIn: string[]; // normed FFN inputs ĥ_{≤i}, [B·T, d_i]
  act: string[]; // SwiGLU activations a_{≤i}, [B·T, f_1+…+f_i]
  hidden: string; // final hidden state x^L_{≤i} of the requested rows, [R, d_i]
  logits: string; // Σ_{j≤i} y_j · H_jᵀ, [R, V]
}

/**
 * The values one attention over a run of chains with equal head counts reads, made once per graph:
 * the run's heads stack along the rows (chain after chain), so its n running chains attend as n
 * times the batch, and the layer's cache is read once for all of them.
 */
interface Run {
  chains: number[];
  heads: number;
  group: number; // heads / kv_heads
  stacked: boolean; // more than one chain: n is known at run time only
  n: string; // int64 [1]: how many of the run's chains the call runs (only when stacked)
  positions: string; // [n·B, T]
  seqlensK: string; // int32 [n·B]
  mask: string; // [n·group·T, T]
  q3: string; // the shape [-1, T, heads·hd]: stacked queries [n·B·T, ·] as [n·B, T, ·]
  q6: string; // the shape [-1, B, T, kv, group, hd]
  kvRepeats: string; // Tile repeats [n, 1, 1]: chain 1's keys / values once per running chain (only when stacked)
  out6: string; // the shape [0, kv, -1, group, T, hd]
  sizes: string; // int64 [run length]: each chain's rows (B·T when it runs, else 0; only when stacked)
}

/**
 * Chains a … b of every layer (spec §3), layer by layer, given what chains 1 … a-1 left at each
 * layer (`before`). The root builds chain 1 alone (the chain-1 model, which also makes every layer's
 * keys and values); the If(chains ≥ 2) branch builds chains 2 … n. A chain from 3 on runs on all
 * B·T rows when the call asks for it and on none otherwise: its nodes then see empty tensors and
 * cost ~0.35 µs each (measured), while an If per chain section cost ~11 µs skipped and, two deep,
 * would run its weights unpacked. Every weight is read once, by one node of this stack.
 */
export class LayerStack {
  private readonly memo = new Map<string, string>();
  private readonly runs: Run[];

  constructor(
    private readonly g: GraphBuilder,
    private readonly c: ColmConfig,
    private readonly s: Shared,
    private readonly chains: readonly number[],
    private readonly before: ChainActivations | undefined,
  ) {
    const groups: number[][] = [];
    for (const i of chains) {
      const last = groups.at(-1);
      if (last && c.chain_heads[last[0] - 1] === c.chain_heads[i - 1]) last.push(i);
      else groups.push([i]);
    }
    this.runs = groups.map((run) => this.makeRun(run));
  }

  private once(key: string, make: () => string): string {
    if (!this.memo.has(key)) this.memo.set(key, make());
    return this.memo.get(key)!;
  }

  /**
   * Chain i runs on every call that reaches this stack: its first chain does (the root's chain 1;
   * chain a of a stack built in If(chains ≥ a)); the ones after it are gated by row count.
   */
  private always(i: number): boolean {
    return i <= this.chains[0];
  }

  /** bool: the call runs at least i chains. */
  private running(i: number): string {
    return this.once(`running${i}`, () => this.g.op("Greater", [this.s.chains, this.g.int64([i - 1], true)]));
  }

  /** int64 [1]: `n` when chain i runs, else 0. */
  private count(i: number, n: string): string {
    return this.once(`count${i}:${n}`, () => this.g.op("Where", [this.running(i), n, this.g.int64([0])]));
  }

  /** The first `count(i, n)` rows of x: all of them when chain i runs, none otherwise. */
  private gate(b: GraphBuilder, x: string, i: number, n: string): string {
    return this.always(i) ? x : b.op("Slice", [x, b.int64([0]), this.count(i, n), b.int64([0])]);
  }

  /** x_{≤i}: the earlier chains' value at the same point (on chain i's rows), then chain i's. */
  private upTo(b: GraphBuilder, before: string | undefined, mine: string, i: number): string {
    return before === undefined ? mine : b.op("Concat", [this.gate(b, before, i, this.s.BT), mine], { axis: 1 });
  }

  private makeRun(chains: number[]): Run {
    const { g, c, s } = this;
    const hd = c.head_dim;
    const kvh = c.kv_heads;
    const heads = c.chain_heads[chains[0] - 1];
    const group = heads / kvh;
    const shapes = {
      q3: g.op("Concat", [g.int64([-1]), s.T, g.int64([heads * hd])], { axis: 0 }),
      q6: g.op("Concat", [g.int64([-1]), s.B, s.T, g.int64([kvh, group, hd])], { axis: 0 }),
      out6: g.op("Concat", [g.int64([0, kvh, -1, group]), s.T, g.int64([hd])], { axis: 0 }),
    };
    if (chains.length === 1) {
      return { chains, heads, group, stacked: false, n: "", positions: s.positions, seqlensK: s.seqlensK, mask: s.maskNew(group), sizes: "", kvRepeats: "", ...shapes };
    }
    // The run's chains that the call runs: clamp(chains - (a - 1), 0, length), a its first chain.
    const clamped = g.op("Max", [g.op("Min", [g.op("Sub", [s.chains, g.int64([chains[0] - 1], true)]), g.int64([chains.length], true)]), g.int64([0], true)]);
    const n = g.op("Unsqueeze", [clamped, g.int64([0])]);
    const byRows = g.op("Concat", [n, g.int64([1])], { axis: 0 }); // Tile repeats [n, 1]
    return {
      chains,
      heads,
      group,
      stacked: true,
      n,
      positions: g.op("Tile", [s.positions, byRows]),
      seqlensK: g.op("Tile", [s.seqlensK, n]),
      mask: g.op("Tile", [s.maskNew(group), byRows]),
      kvRepeats: g.op("Concat", [n, g.int64([1, 1])], { axis: 0 }),
      sizes: g.op("Concat", chains.map((i) => (this.always(i) ? s.BT : this.count(i, s.BT))), { axis: 0 }),
      ...shapes,
    };
  }

  /** Chain RMSNorm of one chain: x_i / sqrt(mean(x_i²) + eps) · g_i. */
  private norm(x: string, weight: string): string {
    return this.g.op("SimplifiedLayerNormalization", [x, weight], { axis: -1, epsilon: { float: this.c.norm_eps } });
  }

  /**
   * The residual sum r = x + delta and its chain RMSNorm, in one fused node (a batch-1 decode
   * step runs a thousand small nodes or more, each with a microsecond or so of its own): [norm, r].
   */
  private addNorm(b: GraphBuilder, x: string, delta: string, weight: string): [string, string] {
    const [normed, , , sum] = b.ops("SkipSimplifiedLayerNormalization", [delta, x, weight], 4, { epsilon: { float: this.c.norm_eps } }, MS);
    return [normed, sum];
  }

  /** Chain 1's keys and values at layer l (spec §3, CoLM-Air: every chain attends to these). */
  private keysValues(xn1: string, l: number): LayerKv {
    const { g, c, s } = this;
    const kvh = c.kv_heads;
    const bt = this.once("bt", () => g.op("Concat", [s.B, s.T, g.int64([-1])], { axis: 0 })); // [B·T, n] → [B, T, n]
    const keys = g.op("RotaryEmbedding", [g.op("Reshape", [g.op("MatMul", [xn1, `l${l}.k`]), bt]), s.positions, "rope.cos", "rope.sin"], { interleaved: 0, num_heads: kvh }, MS);
    const values = g.op("Reshape", [g.op("MatMul", [xn1, `l${l}.v`]), bt]);
    // Made under their output names: a renaming Identity would copy every prompt's keys and values.
    const byKv = (x: string, name: string): string => g.ops("Transpose", [g.op("Reshape", [x, g.int64([0, 0, kvh, c.head_dim])])], [name], { perm: [0, 2, 1, 3] })[0];
    return { keys, values, keyHeads: byKv(keys, `new_key_${l}`), valueHeads: byKv(values, `new_value_${l}`) };
  }

  /**
   * Causal attention of a run's chains at layer l: queries x̂_{≤i} · Wq_i per chain ([rows, h·hd],
   * scaled by 1/sqrt(hd), see registerWeights) → per chain [rows, h·hd]. Head m of chain i reads kv
   * head floor(m / group): the usual grouped-query layout within each chain (spec §3).
   */
  private attention(b: GraphBuilder, run: Run, qs: string[], l: number): string[] {
    const { c, s } = this;
    const hd = c.head_dim;
    const kvh = c.kv_heads;
    const kv = s.kv[l];
    const stacked = qs.length > 1 ? b.op("Concat", qs, { axis: 0 }) : qs[0]; // [n·B·T, h·hd]
    const q = b.op("RotaryEmbedding", [b.op("Reshape", [stacked, run.q3]), run.positions, "rope.cos", "rope.sin"], { interleaved: 0, num_heads: run.heads }, MS); // [n·B, T, h·hd]
    // A fresh prompt: one fused causal kernel, no [T, T] score matrix through memory, the run's
    // chains as n times the batch. Only its first output is declared: asked for present keys/values
    // too, the kernel zero-fills and copies them (the cache already has them, from new_key / new_value).
    const fresh = b.subgraph(`fresh_${run.chains[0]}_${l}`);
    const perRow = (x: string): string => (run.stacked ? fresh.op("Tile", [x, run.kvRepeats]) : x);
    const [out] = fresh.ops("GroupQueryAttention", [q, perRow(kv.keys), perRow(kv.values), "", "", run.seqlensK, s.totalLength], 1, { num_heads: run.heads, kv_num_heads: kvh, scale: { float: 1 } }, MS);
    fresh.branchOutput(fresh.op("Reshape", [out, fresh.int64([-1, run.heads * hd])]));
    // Decode and later chunks: the cache is read in place, the new tokens are attended beside it.
    // Query rows regroup by kv head: [n, B, T, kv, group, hd] → [B, kv, n·group·T, hd].
    const cached = b.subgraph(`cached_${run.chains[0]}_${l}`);
    const qHeads = cached.op("Reshape", [cached.op("Transpose", [cached.op("Reshape", [q, run.q6])], { perm: [1, 3, 0, 4, 2, 5] }), cached.int64([0, kvh, -1, hd])]);
    const scoresPast = cached.op("Add", [cached.op("FusedMatMul", [qHeads, s.pastKey[l]], { transB: 1 }, MS), s.maskPast]); // [B, kv, rows, C]
    const scoresNew = cached.op("Add", [cached.op("FusedMatMul", [qHeads, kv.keyHeads], { transB: 1 }, MS), run.mask]); // [B, kv, rows, T]
    const probs = cached.op("Softmax", [cached.op("Concat", [scoresPast, scoresNew], { axis: -1 })], { axis: -1 });
    const [probsPast, probsNew] = cached.ops("Split", [probs, s.splitPastNew], 2, { axis: -1 });
    const heads = cached.op("Add", [cached.op("MatMul", [probsPast, s.pastValue[l]]), cached.op("MatMul", [probsNew, kv.valueHeads])]);
    const back = cached.op("Transpose", [cached.op("Reshape", [heads, run.out6])], { perm: [2, 0, 4, 1, 3, 5] }); // [n, B, T, kv, group, hd]
    cached.branchOutput(cached.op("Reshape", [back, cached.int64([-1, run.heads * hd])]));
    const [all] = b.ops("If", [s.fresh], 1, { then_branch: { graph: fresh.proto() }, else_branch: { graph: cached.proto() } });
    return run.stacked ? b.ops("Split", [all, run.sizes], qs.length, { axis: 0 }) : [all];
  }

  /** A run's attention, inside If(chains ≥ a) when its first chain a may not run (then every output is empty). */
  private runAttention(b: GraphBuilder, run: Run, qs: string[], l: number): string[] {
    const a = run.chains[0];
    if (this.always(a)) return this.attention(b, run, qs, l);
    const then = b.subgraph(`attn_${a}_${l}`);
    this.attention(then, run, qs, l).forEach((h) => then.branchOutput(h));
    const skip = b.subgraph(`skip_attn_${a}_${l}`);
    qs.forEach((q) => skip.branchOutput(q)); // [0, h·hd]: the queries of chains that do not run
    return b.ops("If", [this.running(a)], qs.length, { then_branch: { graph: then.proto() }, else_branch: { graph: skip.proto() } });
  }

  /** Layer l of the stack's chains: attention, then SwiGLU, leaving x (and its norm x̂) for layer l+1. */
  private layer(g: GraphBuilder, l: number, x: string[], xn: string[], acts: ChainActivations): void {
    const { c, chains, before } = this;
    const L = c.n_layers;
    const p = `l${l}`;
    // Attention: h_i = x_i + heads_{≤i} · Wo_i, with heads from queries x̂_{≤i} · Wq_i.
    let attnIn = before?.attnIn[l];
    const q: string[] = [];
    for (const i of chains) {
      attnIn = this.upTo(g, attnIn, xn[i], i);
      q[i] = g.op("MatMul", [attnIn, `${p}.q.c${i}`]);
    }
    acts.attnIn[l] = attnIn!;
    const heads: string[] = [];
    for (const run of this.runs) this.runAttention(g, run, run.chains.map((i) => q[i]), l).forEach((h, j) => (heads[run.chains[j]] = h));
    // SwiGLU: a_i = silu(ĥ_{≤i} · Wgate_i) ⊙ (ĥ_{≤i} · Wup_i); x_i ← h_i + a_{≤i} · Wdown_i.
    let headsUpTo = before?.heads[l];
    let ffnIn = before?.ffnIn[l];
    let act = before?.act[l];
    for (const i of chains) {
      headsUpTo = this.upTo(g, headsUpTo, heads[i], i);
      const [hn, h] = this.addNorm(g, x[i], g.op("MatMul", [headsUpTo, `${p}.o.c${i}`]), `${p}.ffn_norm.c${i}`);
      ffnIn = this.upTo(g, ffnIn, hn, i);
      const gate = g.op("MatMul", [ffnIn, `${p}.gate.c${i}`]);
      const up = g.op("MatMul", [ffnIn, `${p}.up.c${i}`]);
      act = this.upTo(g, act, g.op("Mul", [g.op("QuickGelu", [gate], { alpha: { float: 1 } }, MS), up]), i); // QuickGelu(α=1) is silu
      const down = g.op("MatMul", [act, `${p}.down.c${i}`]);
      if (l + 1 < L) [xn[i], x[i]] = this.addNorm(g, h, down, `l${l + 1}.attn_norm.c${i}`);
      else x[i] = g.op("Add", [h, down]);
    }
    acts.heads[l] = headsUpTo!;
    acts.ffnIn[l] = ffnIn!;
    acts.act[l] = act!;
  }

  /**
   * Chain 1's last layer after its keys and values, only when something reads it: the logits of
   * requested rows, or chains ≥ 2. A prompt chunk that only fills the cache (chain 1, no logits)
   * skips it: 1/L of its work.
   */
  private lastLayerOnDemand(l: number, x: string[], xn: string[], acts: ChainActivations): void {
    const { c, s } = this;
    const root = this.g;
    const wanted = root.subgraph(`chain_1_layer_${l}`);
    this.layer(wanted, l, x, xn, acts);
    const made = [x[1], acts.heads[l], acts.ffnIn[l], acts.act[l]];
    made.forEach((v) => wanted.branchOutput(v));
    const skip = root.subgraph(`chain_1_layer_${l}_skip`);
    for (const cols of [c.chainWidths[0], c.chain_heads[0] * c.head_dim, c.chainWidths[0], c.ffn_chain_dims[0]]) {
      skip.branchOutput(skip.op("Reshape", [skip.float([]), skip.int64([0, cols])])); // [0, cols]: nobody reads it
    }
    const rowsWanted = root.op("Greater", [root.op("Squeeze", [s.R, root.int64([0])]), root.int64([0], true)]);
    const needed = root.op("Or", [rowsWanted, root.op("Greater", [s.chains, root.int64([1], true)])]);
    [x[1], acts.heads[l], acts.ffnIn[l], acts.act[l]] = root.ops("If", [needed], made.length, { then_branch: { graph: wanted.proto() }, else_branch: { graph: skip.proto() } });
  }

  /** Builds every layer and the head of the stack's chains. */
  build(tiedHead: boolean): ChainActivations {
    const { g, c, s, chains, before } = this;
    const L = c.n_layers;
    const acts: ChainActivations = { attnIn: [], heads: [], ffnIn: [], act: [], hidden: "", logits: "" };
    const x: string[] = [];
    const xn: string[] = [];
    for (const i of chains) {
      x[i] = g.op("Gather", [`embed.c${i}`, this.gate(g, s.tokens, i, s.BT)], { axis: 0 }); // x⁰_i = E[token, d_{i-1}:d_i]
      xn[i] = this.norm(x[i], `l0.attn_norm.c${i}`);
    }
    for (let l = 0; l < L; l++) {
      if (chains[0] === 1) s.kv.push(this.keysValues(xn[1], l)); // chain 1 makes the keys and values every chain shares
      if (chains[0] === 1 && l === L - 1) this.lastLayerOnDemand(l, x, xn, acts);
      else this.layer(g, l, x, xn, acts);
    }
    // Head: logits_k = Σ_{i≤k} y_i · H_iᵀ, for the requested rows only. Rows that asked for fewer
    // than i chains keep the logits of chains 1 … i-1 (chain causality: more chains never change a
    // smaller sub-model's output). A single-chain model's are made under the graph's output names.
    const named = (name: string): number | string[] => (c.nChains === 1 ? [name] : 1);
    let logits = before?.logits;
    let hidden = before?.hidden;
    for (const i of chains) {
      const head = `${tiedHead ? "embed" : "head"}.c${i}`;
      if (this.always(i)) {
        const mine = g.ops("Gather", [x[i], s.rows], named("hidden"), { axis: 0 })[0];
        const y = this.norm(mine, `norm.c${i}`);
        const out = g.ops("Gemm", logits ? [y, head, logits] : [y, head], named("logits"), { transB: 1 })[0];
        logits = logits ? g.op("Where", [g.op("Less", [s.rowChains, g.int64([i], true)]), logits, out]) : out;
        hidden = hidden ? g.op("Concat", [hidden, mine], { axis: 1 }) : mine;
        continue;
      }
      // A chain that may not run works on the first R_i rows (R or 0) and leaves the rest as they were.
      const Ri = this.count(i, s.R);
      const mine = g.op("Gather", [x[i], this.gate(g, s.rows, i, s.R)], { axis: 0 }); // [R_i, c_i]
      const top = this.gate(g, logits!, i, s.R);
      const out = g.op("Gemm", [this.norm(mine, `norm.c${i}`), head, top], { transB: 1 });
      const kept = g.op("Where", [g.op("Less", [this.gate(g, s.rowChains, i, s.R), g.int64([i], true)]), top, out]);
      logits = g.op("Concat", [kept, g.op("Slice", [logits!, Ri, g.int64([Number.MAX_SAFE_INTEGER]), g.int64([0])])], { axis: 0 });
      // [R, c_i] when it runs, [R, 0] when not: hidden stays [R, d_k].
      const width = g.op("Where", [this.running(i), g.int64([c.chainWidths[i - 1]]), g.int64([0])]);
      hidden = g.op("Concat", [hidden!, g.op("Reshape", [mine, g.op("Concat", [s.R, width], { axis: 0 })], { allowzero: 1 })], { axis: 1 });
    }
    acts.logits = logits!;
    acts.hidden = hidden!;
    return acts;
  }
}

