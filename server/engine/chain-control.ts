// The chain count of one generation, changeable while it runs (LM switching, spec §5.5): the engine
// asks before every token, so a change takes effect at the next token with no recomputation.

/**
 * The chain count a generation runs at, changeable while it runs (WS `switch`, the latency
 * router's load-adaptive policy). The engine calls `choose(index)` before each token; a changed
 * target takes effect there and `onApplied(chains, index)` reports the index of the first token
 * at the new count.
 */
export class ChainControl {
  target: number;
  /** Set by the latency router for a budgeted elastic generation: picks the target before each
   * token from (index, current count). Cleared when a client fixes the size (WS `switch`). */
  policy?: (index: number, current: number) => number;
  /** Told the interval between two consecutive tokens (ms) and the count of the later one: the
   * latency router learns what a token really takes from it. */
  onInterval?: (chains: number, ms: number) => void;
  private last: number;
  private started = false;
  private readonly listeners: Array<(chains: number, atIndex: number) => void> = [];

  constructor(initial: number) {
    this.target = initial;
    this.last = initial;
  }

  /** The count of the last token the engine asked for (before the first token: the target). */
  get current(): number {
    return this.started ? this.last : this.target;
  }

  /** The count the last token ran at (before the first token: the count it starts at). */
  get applied(): number {
    return this.last;
  }

  /** Called with (chains, index of the first token at that count) whenever the count changes. */
  onApplied(fn: (chains: number, atIndex: number) => void): void {
    this.listeners.push(fn);
  }

  readonly choose = (index: number): number => {
    if (this.policy) this.target = this.policy(index, this.current);
    const k = this.target;
    if (k !== this.last) for (const fn of this.listeners) fn(k, index);
    this.last = k;
    this.started = true;
    return k;
  };
}
