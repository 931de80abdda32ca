// A stack: a run of consecutive chains a … b through every layer, the steps of the forward outline
// in colm-graph.ts (embed, queries, attention, residuals, SwiGLU, head) for those chains. The root
// builds chain 1 alone; the If(chains ≥ 2) branch builds chains 2 … n on what chain 1 left. Chain
// i's linears read x_{≤i}: what the chains before it left at the same point (ChainActivations),
// extended by chain i's own part. Every weight is read once, by one node of one stack.
import type { ColmConfig } from "../models/config.ts";
import { StackAttention } from "./attention.ts";
import { ChainGates } from "./chain-gates.ts";
import type { GraphBuilder } from "./graph.ts";
import type { Shared } from "./graph-inputs.ts";

const MS = "com.microsoft";

/**
 * The residual stream, per chain i: x_i [B·T, c_i], and x̂_i, the next layer's attention norm of it
 * (made with x by one fused node; absent after the last layer, whose final norm reads only R rows).
 */
export interface Stream {
  x: string[];
  normed: string[];
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

type Prefix = "attnIn" | "heads" | "ffnIn" | "act";
type Head = { logits: string | undefined; hidden: string | undefined };

export class LayerStack {
  /** What this stack's chains leave, for a stack after it. */
  private readonly acts: ChainActivations = { attnIn: [], heads: [], ffnIn: [], act: [], hidden: "", logits: "" };
  private readonly gates: ChainGates;
  private readonly attn: StackAttention;

  constructor(
    /** The graph the stack is built in: the root (chain 1) or the If(chains ≥ 2) branch. */
    readonly g: GraphBuilder,
    readonly c: ColmConfig,
    private readonly s: Shared,
    readonly chains: readonly number[],
    /** What the chains before this stack left (none for chain 1's stack). */
    private readonly before: ChainActivations | undefined,
  ) {
    this.gates = new ChainGates(g, s, chains[0]);
    this.attn = new StackAttention(g, c, s, this.gates, chains);
  }

  /** Chain 1's stack makes every layer's keys and values, which every chain reads. */
  get makesKeysValues(): boolean {
    return this.chains[0] === 1;
  }

  /** x⁰_i = E[token, d_{i-1}:d_i] and layer 0's attention norm of it, [B·T, c_i] per chain. */
  embed(): Stream {
    const { g, s } = this;
    const out: Stream = { x: [], normed: [] };
    for (const i of this.chains) {
      out.x[i] = g.gatherRows(`embed.c${i}`, this.gates.gate(g, s.tokens, i, s.BT));
      out.normed[i] = this.norm(out.x[i], `l0.attn_norm.c${i}`);
    }
    return out;
  }

  /** Chain 1's keys and values at layer l, from x̂_1 (spec §3, CoLM-Air: every chain attends to these). */
  keysValues(l: number, x: Stream): void {
    this.s.kv.push(this.attn.keysValues(x.normed[1], l));
  }

  /** q_i = x̂_{≤i} · Wq_i per chain, [B·T, h_i·hd]. */
  queries(b: GraphBuilder, l: number, normed: string[]): string[] {
    const q: string[] = [];
    for (const i of this.chains) q[i] = b.matmul(this.extend(b, "attnIn", l, normed[i], i), `l${l}.q.c${i}`);
    return q;
  }

  /** Causal attention of every chain's queries to chain 1's keys and values, per chain [B·T, h_i·hd]. */
  attention(b: GraphBuilder, l: number, q: string[]): string[] {
    return this.attn.heads(b, l, q);
  }

  /** h_i = x_i + heads_{≤i} · Wo_i, with ĥ_i = ChainNorm₂(h)_i from the same fused node: [B·T, c_i] each. */
  attnResidual(b: GraphBuilder, l: number, i: number, x: string, heads: string): { h: string; normed: string } {
    const delta = b.matmul(this.extend(b, "heads", l, heads, i), `l${l}.o.c${i}`);
    const [normed, h] = this.addNorm(b, x, delta, `l${l}.ffn_norm.c${i}`);
    return { h, normed };
  }

  /** a_i = silu(ĥ_{≤i} · Wgate_i) ⊙ (ĥ_{≤i} · Wup_i), [B·T, f_i]. */
  swiglu(b: GraphBuilder, l: number, i: number, normed: string): string {
    const ffnIn = this.extend(b, "ffnIn", l, normed, i);
    const gate = b.matmul(ffnIn, `l${l}.gate.c${i}`);
    const up = b.matmul(ffnIn, `l${l}.up.c${i}`);
    return b.op("Mul", [b.op("QuickGelu", [gate], { alpha: { float: 1 } }, MS), up]); // QuickGelu(α=1) is silu
  }

  /** x_i = h_i + a_{≤i} · Wdown_i, [B·T, c_i], with layer l+1's attention norm of it (none after the last layer). */
  ffnResidual(b: GraphBuilder, l: number, i: number, h: string, a: string): { x: string; normed?: string } {
    const down = b.matmul(this.extend(b, "act", l, a, i), `l${l}.down.c${i}`);
    if (l + 1 === this.c.n_layers) return { x: b.op("Add", [h, down]) };
    const [normed, x] = this.addNorm(b, h, down, `l${l + 1}.attn_norm.c${i}`);
    return { x, normed };
  }

  /**
   * Chain 1's last block (after its keys and values, made before it), only when something reads
   * it: the logits of requested rows, or chains ≥ 2. A prompt chunk that only fills the cache skips
   * it. `block` builds it in the branch it is given.
   */
  chain1LastBlockWhenRead(l: number, block: (b: GraphBuilder) => Stream): Stream {
    const { c, s, acts } = this;
    const root = this.g;
    const wanted = root.subgraph(`chain_1_layer_${l}`);
    const x = block(wanted);
    const made = [x.x[1], acts.heads[l], acts.ffnIn[l], acts.act[l]];
    made.forEach((v) => wanted.branchOutput(v));
    const skip = root.subgraph(`chain_1_layer_${l}_skip`);
    for (const cols of [c.chainWidths[0], c.chain_heads[0] * c.head_dim, c.chainWidths[0], c.ffn_chain_dims[0]]) {
      skip.branchOutput(skip.op("Reshape", [skip.float([]), skip.int64([0, cols])])); // [0, cols]: nobody reads it
    }
    const rowsWanted = root.op("Greater", [root.op("Squeeze", [s.R, root.int64([0])]), root.int64([0], true)]);
    const needed = root.op("Or", [rowsWanted, root.op("Greater", [s.chains, root.int64([1], true)])]);
    const out: Stream = { x: [], normed: [] };
    [out.x[1], acts.heads[l], acts.ffnIn[l], acts.act[l]] = root.ops("If", [needed], made.length, { then_branch: { graph: wanted.proto() }, else_branch: { graph: skip.proto() } });
    return out;
  }

  /**
   * The final chain norm and the head, for the requested rows only: y_i = ChainNorm_final(x^L)_i
   * [R, c_i], logits_k = Σ_{i≤k} y_i · H_iᵀ [R, V]. Rows that asked for fewer than i chains keep
   * the logits of chains 1 … i-1 (chain causality: more chains never change a smaller sub-model's
   * output). Returns what the stack leaves, with logits and the pre-norm hidden state [R, d_k].
   */
  head(x: Stream): ChainActivations {
    let out: Head = { logits: this.before?.logits, hidden: this.before?.hidden };
    for (const i of this.chains) out = this.gates.always(i) ? this.headOf(i, x.x[i], out) : this.gatedHeadOf(i, x.x[i], out);
    this.acts.logits = out.logits!;
    this.acts.hidden = out.hidden!;
    return this.acts;
  }

  /** Chain i's head on all R rows. A single-chain model's are made under the graph's output names. */
  private headOf(i: number, x: string, { logits, hidden }: Head): Head {
    const { g, s } = this;
    const named = (name: string): number | string[] => (this.c.nChains === 1 ? [name] : 1);
    const mine = g.ops("Gather", [x, s.rows], named("hidden"), { axis: 0 })[0]; // [R, c_i]
    const y = this.norm(mine, `norm.c${i}`);
    const out = g.matmulTransposed(y, this.headWeight(i), logits, named("logits"));
    return {
      logits: logits ? g.op("Where", [g.op("Less", [s.rowChains, g.int64([i], true)]), logits, out]) : out,
      hidden: hidden ? g.op("Concat", [hidden, mine], { axis: 1 }) : mine,
    };
  }

  /** Chain i's head when it may not run: on the first R_i rows (R or 0), leaving the rest as they were. */
  private gatedHeadOf(i: number, x: string, { logits, hidden }: Head): Head {
    const { g, s, gates } = this;
    const Ri = gates.count(i, s.R);
    const mine = g.op("Gather", [x, gates.gate(g, s.rows, i, s.R)], { axis: 0 }); // [R_i, c_i]
    const top = gates.gate(g, logits!, i, s.R);
    const out = g.matmulTransposed(this.norm(mine, `norm.c${i}`), this.headWeight(i), top);
    const kept = g.op("Where", [g.op("Less", [gates.gate(g, s.rowChains, i, s.R), g.int64([i], true)]), top, out]);
    const rest = g.op("Slice", [logits!, Ri, g.int64([Number.MAX_SAFE_INTEGER]), g.int64([0])]); // rows past R_i: untouched
    const logitsOut = g.op("Concat", [kept, rest], { axis: 0 });
    // [R, c_i] when it runs, [R, 0] when not: hidden stays [R, d_k].
    const width = g.op("Where", [gates.running(i), g.int64([this.c.chainWidths[i - 1]]), g.int64([0])]);
    const mineOrNone = g.op("Reshape", [mine, g.op("Concat", [s.R, width], { axis: 0 })], { allowzero: 1 });
    return { logits: logitsOut, hidden: g.op("Concat", [hidden!, mineOrNone], { axis: 1 }) };
  }

  /** H_i: the embedding's columns when tied, unless the head has its own (a quantized model's, laid out for MatMulNBits). */
  private headWeight(i: number): string {
    return this.g.hasWeight(`head.c${i}`) ? `head.c${i}` : `embed.c${i}`;
  }

  /** Extends x_{≤i-1}, the `key` value at layer l, by chain i's `mine` to x_{≤i}; returns it. */
  private extend(b: GraphBuilder, key: Prefix, l: number, mine: string, i: number): string {
    const earlier = this.acts[key][l] ?? this.before?.[key][l];
    return (this.acts[key][l] = this.gates.upTo(b, earlier, mine, i));
  }

  /** Chain RMSNorm of one chain: x_i / sqrt(mean(x_i²) + eps) · g_i. */
  private norm(x: string, weight: string): string {
    return this.g.op("SimplifiedLayerNormalization", [x, weight], { axis: -1, epsilon: { float: this.c.norm_eps } });
  }

  /**
   * The residual sum r = x + delta and its chain RMSNorm, in one fused node (a batch-1 decode step
   * runs a thousand small nodes or more, each with a fixed cost of its own): [norm, r].
   */
  private addNorm(b: GraphBuilder, x: string, delta: string, weight: string): [string, string] {
    const [normed, , , sum] = b.ops("SkipSimplifiedLayerNormalization", [delta, x, weight], 4, { epsilon: { float: this.c.norm_eps } }, MS);
    return [normed, sum];
  }
}
