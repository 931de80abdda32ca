// Which of a stack's chains a call runs, without an If per chain. A stack's first chain always runs
// when the stack does (chain 1 in the root; chain 2 in If(chains ≥ 2)); a chain after it works on
// all its rows when the call asks for it and on none otherwise, so its nodes see empty tensors and
// read no weights. And x_{≤i}, the input of chain i's chain linears: one Concat onto x_{≤i-1}.
import type { GraphBuilder } from "./graph.ts";
import type { Shared } from "./graph-inputs.ts";

export class ChainGates {
  private readonly memo = new Map<string, string>();

  constructor(
    /** The stack's graph, where the gates' own values are made. */
    private readonly g: GraphBuilder,
    private readonly s: Shared,
    /** The stack's first chain. */
    private readonly first: number,
  ) {}

  /** A value made once per stack under `key`. */
  once(key: string, make: () => string): string {
    if (!this.memo.has(key)) this.memo.set(key, make());
    return this.memo.get(key)!;
  }

  /** Chain i runs on every call that reaches this stack. */
  always(i: number): boolean {
    return i <= this.first;
  }

  /** bool: the call runs at least i chains. */
  running(i: number): string {
    return this.once(`running${i}`, () => this.g.op("Greater", [this.s.chains, this.g.int64([i - 1], true)]));
  }

  /** int64 [1]: `n` when chain i runs, else 0. */
  count(i: number, n: string): string {
    return this.once(`count${i}:${n}`, () => this.g.op("Where", [this.running(i), n, this.g.int64([0])]));
  }

  /** The first `count(i, n)` rows of x: all of them when chain i runs, none otherwise. */
  gate(b: GraphBuilder, x: string, i: number, n: string): string {
    return this.always(i) ? x : b.op("Slice", [x, b.int64([0]), this.count(i, n), b.int64([0])]);
  }

  /** x_{≤i}: the earlier chains' value at the same point (on chain i's rows), then chain i's. */
  upTo(b: GraphBuilder, before: string | undefined, mine: string, i: number): string {
    return before === undefined ? mine : b.op("Concat", [this.gate(b, before, i, this.s.BT), mine], { axis: 1 });
  }
}
