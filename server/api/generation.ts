// One generation on the engine, shared by the HTTP and WebSocket front ends: runs the engine's
// iterator, lets a per-generation ChainControl switch the chain count between tokens, and records
// the generation's metrics (TTFT, TPOT, end-to-end, token counts, switches, budget misses).
import type { Engine, FinishReason, GeneratedToken, GenerationSummary, SamplingOptions } from "../engine/types.ts";
import type { Metrics } from "./metrics.ts";
import type { LatencyBudget } from "./schemas.ts";

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

export interface GenerationSpec {
  prompt: number[];
  maxTokens: number;
  sampling: SamplingOptions;
  stop?: string[];
  control: ChainControl;
  latencyBudget?: LatencyBudget;
  /** performance.now() when the request arrived (TTFT and end-to-end are measured from it). */
  arrivedAt: number;
  signal: AbortSignal;
}

export interface GenerationResult {
  tokens: GeneratedToken[];
  /** Completion text: every token's released text plus the flushed tail. */
  text: string;
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** Chain count of each generated token. */
  chainsPerToken: number[];
  /** Chain count of the last token (or the starting count if none was generated). */
  finalChains: number;
  summary: GenerationSummary | null;
}

export interface GenerationContext {
  engine(): Engine;
  metrics: Metrics;
}

function isAbortError(err: unknown, signal: AbortSignal): boolean {
  return signal.aborted || (err as { name?: string } | null)?.name === "AbortError";
}

/**
 * Run one generation to the end. `onToken` is awaited for every token (a slow consumer slows the
 * generation down rather than buffering). Throws when the engine fails (not when it is aborted:
 * an aborted generation resolves with finishReason "cancelled").
 */
export async function runGeneration(
  ctx: GenerationContext,
  spec: GenerationSpec,
  onToken: (tok: GeneratedToken) => void | Promise<void>,
): Promise<GenerationResult> {
  const engine = ctx.engine();
  const metrics = ctx.metrics;
  const startChains = spec.control.current;
  const tokens: GeneratedToken[] = [];
  const chainsPerToken: number[] = [];
  let text = "";
  let firstAt: number | undefined;
  let lastAt: number | undefined;
  let summary: GenerationSummary | null = null;
  let finishReason: FinishReason = "cancelled";
  let failed = false;

  const iter = engine.generate(spec.prompt, {
    chooseChains: spec.control.choose,
    sampling: spec.sampling,
    maxTokens: spec.maxTokens,
    stop: spec.stop && spec.stop.length > 0 ? spec.stop : undefined,
    signal: spec.signal,
  });
  try {
    for (;;) {
      const step = await iter.next();
      if (step.done) {
        summary = step.value;
        finishReason = summary.finishReason;
        text += summary.tailText;
        break;
      }
      const tok = step.value;
      const now = performance.now();
      if (firstAt === undefined) {
        firstAt = now;
        metrics.ttft.observe({ chains: String(tok.chains) }, (now - spec.arrivedAt) / 1000);
      }
      if (lastAt !== undefined) spec.control.onInterval?.(tok.chains, now - lastAt);
      lastAt = now;
      const prev = chainsPerToken[chainsPerToken.length - 1];
      if (prev !== undefined && prev !== tok.chains) metrics.chainSwitches.inc({ from: String(prev), to: String(tok.chains) });
      metrics.generationTokens.inc({ chains: String(tok.chains) });
      tokens.push(tok);
      chainsPerToken.push(tok.chains);
      text += tok.text;
      await onToken(tok);
    }
  } catch (err) {
    if (!isAbortError(err, spec.signal)) {
      failed = true;
      metrics.generations.inc({ finish_reason: "error" });
      throw err;
    }
    finishReason = "cancelled";
  } finally {
    if (!summary) {
      // Stopped early (abort or error): make sure the engine frees the sequence.
      await iter.return(undefined as never).catch(() => undefined);
    }
    if (!failed) {
      const endAt = performance.now();
      const finalChains = chainsPerToken[chainsPerToken.length - 1] ?? startChains;
      const chainsLabel = { chains: String(finalChains) };
      metrics.generations.inc({ finish_reason: finishReason });
      metrics.promptTokens.inc({ chains: String(startChains) }, spec.prompt.length);
      metrics.e2e.observe(chainsLabel, (endAt - spec.arrivedAt) / 1000);
      let tpotMs: number | undefined;
      if (firstAt !== undefined && lastAt !== undefined && tokens.length >= 2) {
        tpotMs = (lastAt - firstAt) / (tokens.length - 1);
        metrics.tpot.observe(chainsLabel, tpotMs / 1000);
      }
      if (summary && summary.prefillMs > 0 && summary.promptTokens > 0) {
        metrics.prefillTps.observe(summary.promptTokens / (summary.prefillMs / 1000));
      }
      const b = spec.latencyBudget;
      if (b && finishReason !== "cancelled") {
        if (b.ttft_ms !== undefined && firstAt !== undefined && firstAt - spec.arrivedAt > b.ttft_ms) metrics.budgetMisses.inc({ budget: "ttft" });
        if (b.tpot_ms !== undefined && tpotMs !== undefined && tpotMs > b.tpot_ms) metrics.budgetMisses.inc({ budget: "tpot" });
        if (b.total_ms !== undefined && endAt - spec.arrivedAt > b.total_ms) metrics.budgetMisses.inc({ budget: "total" });
      }
    }
  }
  return {
    tokens,
    text,
    finishReason,
    promptTokens: summary?.promptTokens ?? spec.prompt.length,
    completionTokens: summary?.completionTokens ?? tokens.length,
    chainsPerToken,
    finalChains: chainsPerToken[chainsPerToken.length - 1] ?? startChains,
    summary,
  };
}

/**
 * Run several generations concurrently (the choices of one request). If one fails, the others
 * are aborted and the first error is rethrown.
 */
export async function runChoices(
  ctx: GenerationContext,
  specs: Array<Omit<GenerationSpec, "signal">>,
  signal: AbortSignal,
  onToken: (choice: number, tok: GeneratedToken) => void | Promise<void>,
): Promise<GenerationResult[]> {
  const group = new AbortController();
  const forward = () => group.abort(signal.reason);
  if (signal.aborted) forward();
  else signal.addEventListener("abort", forward, { once: true });
  try {
    return await Promise.all(
      specs.map((spec, i) =>
        runGeneration(ctx, { ...spec, signal: group.signal }, (tok) => onToken(i, tok)).catch((err) => {
          group.abort(err);
          throw err;
        }),
      ),
    );
  } finally {
    signal.removeEventListener("abort", forward);
  }
}
