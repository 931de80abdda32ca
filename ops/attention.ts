// Attention of a stack's chains (spec §3, CoLM-Air): keys and values come from chain 1 only, and
// one attention per layer serves every chain of a run (consecutive chains with equal head counts):
// the run's queries stack along the rows, chain after chain, so its n running chains attend as n
// times the batch and the layer's cache is read once for all of them. A fresh prompt (empty cache)
// takes onnxruntime's fused causal kernel; later steps read the cache buffers in place.
import type { ColmConfig } from "../models/config.ts";
import type { ChainGates } from "./chain-gates.ts";
import type { GraphBuilder } from "./graph.ts";
import type { LayerKv, Shared } from "./graph-inputs.ts";

const MS = "com.microsoft";

/** The values one attention over a run of chains reads, made once per graph. */
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

export class StackAttention {
  private readonly runs: Run[];

  constructor(
    private readonly g: GraphBuilder,
    private readonly c: ColmConfig,
    private readonly s: Shared,
    private readonly gates: ChainGates,
    chains: readonly number[],
  ) {
    const groups: number[][] = [];
    for (const i of chains) {
      const last = groups.at(-1);
      if (last && c.chain_heads[last[0] - 1] === c.chain_heads[i - 1]) last.push(i);
      else groups.push([i]);
    }
    this.runs = groups.map((run) => this.makeRun(run));
  }

  /** Chain 1's keys and values at layer l, from its normed input x̂_1 [B·T, c_1]: every chain attends to these. */
  keysValues(xn1: string, l: number): LayerKv {
    const { g, c, s } = this;
    const kvh = c.kv_heads;
    const bt = this.gates.once("bt", () => g.op("Concat", [s.B, s.T, g.int64([-1])], { axis: 0 })); // [B·T, n] → [B, T, n]
    const keys = g.op("RotaryEmbedding", [g.op("Reshape", [g.matmul(xn1, `l${l}.k`), bt]), s.positions, "rope.cos", "rope.sin"], { interleaved: 0, num_heads: kvh }, MS);
    const values = g.op("Reshape", [g.matmul(xn1, `l${l}.v`), bt]);
    // Made under their output names: a renaming Identity would copy every prompt's keys and values.
    const byKv = (x: string, name: string): string => g.ops("Transpose", [g.op("Reshape", [x, g.int64([0, 0, kvh, c.head_dim])])], [name], { perm: [0, 2, 1, 3] })[0];
    return { keys, values, keyHeads: byKv(keys, `new_key_${l}`), valueHeads: byKv(values, `new_value_${l}`) };
  }

  /** Every chain's attention output at layer l from its queries q[i], per chain i [B·T, h_i·hd]. */
  heads(b: GraphBuilder, l: number, q: string[]): string[] {
    const heads: string[] = [];
    for (const run of this.runs) this.runAttention(b, run, run.chains.map((i) => q[i]), l).forEach((h, j) => (heads[run.chains[j]] = h));
    return heads;
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
      sizes: g.op("Concat", chains.map((i) => (this.gates.always(i) ? s.BT : this.gates.count(i, s.BT))), { axis: 0 }),
      ...shapes,
    };
  }

  /** A run's attention, inside If(chains ≥ a) when its first chain a may not run (then every output is empty). */
  private runAttention(b: GraphBuilder, run: Run, qs: string[], l: number): string[] {
    const a = run.chains[0];
    if (this.gates.always(a)) return this.attention(b, run, qs, l);
    const then = b.subgraph(`attn_${a}_${l}`);
    this.attention(then, run, qs, l).forEach((h) => then.branchOutput(h));
    const skip = b.subgraph(`skip_attn_${a}_${l}`);
    qs.forEach((q) => skip.branchOutput(q)); // [0, h·hd]: the queries of chains that do not run
    return b.ops("If", [this.gates.running(a)], qs.length, { then_branch: { graph: then.proto() }, else_branch: { graph: skip.proto() } });
  }

  /**
   * Causal attention of a run's chains at layer l: queries per chain [B·T, h·hd] (scaled by
   * 1/sqrt(hd) in their weights) → per chain [B·T, h·hd]. Head m of chain i reads kv head
   * floor(m / group): the usual grouped-query layout within each chain (spec §3).
   */
  private attention(b: GraphBuilder, run: Run, qs: string[], l: number): string[] {
    const stacked = qs.length > 1 ? b.op("Concat", qs, { axis: 0 }) : qs[0]; // [n·B·T, h·hd]
    const q = b.op("RotaryEmbedding", [b.op("Reshape", [stacked, run.q3]), run.positions, "rope.cos", "rope.sin"], { interleaved: 0, num_heads: run.heads }, MS); // [n·B, T, h·hd]
    const fresh = this.fusedKernel(b, run, q, l);
    const cached = this.cachePath(b, run, q, l);
    const [all] = b.ops("If", [this.s.fresh], 1, { then_branch: { graph: fresh.proto() }, else_branch: { graph: cached.proto() } });
    return run.stacked ? b.ops("Split", [all, run.sizes], qs.length, { axis: 0 }) : [all]; // [n·B·T, h·hd] → per chain
  }

  /**
   * A fresh prompt: one fused causal kernel, no [T, T] score matrix through memory, the run's chains
   * as n times the batch. Only its first output is declared: asked for present keys and values too,
   * the kernel zero-fills and copies them (the cache gets them from new_key / new_value).
   */
  private fusedKernel(b: GraphBuilder, run: Run, q: string, l: number): GraphBuilder {
    const kv = this.s.kv[l];
    const fresh = b.subgraph(`fresh_${run.chains[0]}_${l}`);
    const perRow = (x: string): string => (run.stacked ? fresh.op("Tile", [x, run.kvRepeats]) : x);
    const [out] = fresh.ops("GroupQueryAttention", [q, perRow(kv.keys), perRow(kv.values), "", "", run.seqlensK, this.s.totalLength], 1, { num_heads: run.heads, kv_num_heads: this.c.kv_heads, scale: { float: 1 } }, MS);
    fresh.branchOutput(fresh.op("Reshape", [out, fresh.int64([-1, run.heads * this.c.head_dim])]));
    return fresh;
  }

  /**
   * Decode and later chunks: the cache is read in place, the new tokens are attended beside it, one
   * softmax over both. Query rows regroup by kv head: [n, B, T, kv, group, hd] → [B, kv, n·group·T, hd].
   */
  private cachePath(b: GraphBuilder, run: Run, q: string, l: number): GraphBuilder {
    const { c, s } = this;
    const hd = c.head_dim;
    const kv = s.kv[l];
    const cached = b.subgraph(`cached_${run.chains[0]}_${l}`);
    const qHeads = cached.op("Reshape", [cached.op("Transpose", [cached.op("Reshape", [q, run.q6])], { perm: [1, 3, 0, 4, 2, 5] }), cached.int64([0, c.kv_heads, -1, hd])]);
    const scoresPast = cached.op("Add", [cached.op("FusedMatMul", [qHeads, s.pastKey[l]], { transB: 1 }, MS), s.maskPast]); // [B, kv, rows, C]
    const scoresNew = cached.op("Add", [cached.op("FusedMatMul", [qHeads, kv.keyHeads], { transB: 1 }, MS), run.mask]); // [B, kv, rows, T]
    const probs = cached.op("Softmax", [cached.op("Concat", [scoresPast, scoresNew], { axis: -1 })], { axis: -1 });
    const [probsPast, probsNew] = cached.ops("Split", [probs, s.splitPastNew], 2, { axis: -1 });
    const heads = cached.op("Add", [cached.op("MatMul", [probsPast, s.pastValue[l]]), cached.op("MatMul", [probsNew, kv.valueHeads])]);
    const back = cached.op("Transpose", [cached.op("Reshape", [heads, run.out6])], { perm: [2, 0, 4, 1, 3, 5] }); // [n, B, T, kv, group, hd]
    cached.branchOutput(cached.op("Reshape", [back, cached.int64([-1, run.heads * hd])]));
    return cached;
  }
}
