// One generation on the engine, shared by every front end: runs the engine's iterator, lets the
// generation's ChainControl switch the chain count between tokens, and records its metrics (TTFT,
// TPOT, end-to-end, token counts, switches, latency-budget misses).
import type { ChainControl } from "../engine/chain-control.ts";
import type { Engine, FinishReason, GeneratedToken, GenerationSummary, PromptLogprob, SamplingOptions, SpeculativeOptions } from "../engine/types.ts";
import type { LatencyBudget } from "../policy/latency-router.ts";
import type { Metrics } from "./metrics.ts";

export interface GenerationSpec {
  prompt: number[];
  maxTokens: number;
  sampling: SamplingOptions;
  stop?: string[];
  control: ChainControl;
  latencyBudget?: LatencyBudget;
  /** performance.now() when the request arrived (TTFT and end-to-end are measured from it). */
  arrivedAt: number;
  /** Top-N alternatives of every prompt token's logprob (echo with logprobs); undefined: none. */
  promptLogprobs?: number;
  /** Prefix cache on (default) or off, and the salt blocks are shared under. */
  cache?: boolean;
  cacheSalt?: string;
  /** Self-speculative decoding (undefined: plain decoding). */
  speculative?: SpeculativeOptions;
  signal: AbortSignal;
}

/** What a generation reports as it runs: its prompt's logprobs (once, first), then each token. */
export interface GenerationListener {
  prompt?(logprobs: PromptLogprob[]): void | Promise<void>;
  token(tok: GeneratedToken): void | Promise<void>;
}

/** A part of a latency budget that a finished generation overran. */
export type BudgetPart = "ttft" | "tpot" | "total";

export interface GenerationResult {
  tokens: GeneratedToken[];
  /** Completion text: every token's released text plus the flushed tail. */
  text: string;
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens served by the prefix cache. */
  cachedTokens: number;
  /** Chain count of each generated token. */
  chainsPerToken: number[];
  /** Chain count of the last token (or the starting count if none was generated). */
  finalChains: number;
  /** The parts of the request's latency budget this generation missed (empty: none, or no budget). */
  budgetMissed: BudgetPart[];
  /** The prompt's logprobs, when the spec asked for them (the first entry is null). */
  promptLogprobs?: PromptLogprob[];
  summary: GenerationSummary | null;
}

export interface GenerationContext {
  engine(): Engine;
  readonly metrics: Metrics;
}

/** When a generation's tokens came out (performance.now()). */
interface Timing {
  firstAt?: number;
  lastAt?: number;
  endAt: number;
}

function isAbortError(err: unknown, signal: AbortSignal): boolean {
  return signal.aborted || (err as { name?: string } | null)?.name === "AbortError";
}

/** Per-token metrics, and the router's lesson: the interval between two tokens at a count. */
function observeToken(metrics: Metrics, spec: GenerationSpec, tok: GeneratedToken, prev: number | undefined, timing: Timing): void {
  const now = performance.now();
  if (timing.firstAt === undefined) {
    timing.firstAt = now;
    metrics.ttft.observe({ chains: String(tok.chains) }, (now - spec.arrivedAt) / 1000);
  }
  if (timing.lastAt !== undefined) spec.control.onInterval?.(tok.chains, now - timing.lastAt);
  timing.lastAt = now;
  if (prev !== undefined && prev !== tok.chains) metrics.chainSwitches.inc({ from: String(prev), to: String(tok.chains) });
  metrics.generationTokens.inc({ chains: String(tok.chains) });
}

function missedParts(b: LatencyBudget, spec: GenerationSpec, t: Timing, tpotMs: number | undefined): BudgetPart[] {
  const missed: BudgetPart[] = [];
  if (b.ttft_ms !== undefined && t.firstAt !== undefined && t.firstAt - spec.arrivedAt > b.ttft_ms) missed.push("ttft");
  if (b.tpot_ms !== undefined && tpotMs !== undefined && tpotMs > b.tpot_ms) missed.push("tpot");
  if (b.total_ms !== undefined && t.endAt - spec.arrivedAt > b.total_ms) missed.push("total");
  return missed;
}

/** Metrics of a generation that ended (not failed); returns the budget parts it missed. */
function observeEnd(metrics: Metrics, spec: GenerationSpec, r: Omit<GenerationResult, "budgetMissed" | "text" | "tokens">, startChains: number, tokens: number, t: Timing): BudgetPart[] {
  const chainsLabel = { chains: String(r.finalChains) };
  metrics.generations.inc({ finish_reason: r.finishReason });
  metrics.promptTokens.inc({ chains: String(startChains) }, spec.prompt.length);
  metrics.e2e.observe(chainsLabel, (t.endAt - spec.arrivedAt) / 1000);
  let tpotMs: number | undefined;
  if (t.firstAt !== undefined && t.lastAt !== undefined && tokens >= 2) {
    tpotMs = (t.lastAt - t.firstAt) / (tokens - 1);
    metrics.tpot.observe(chainsLabel, tpotMs / 1000);
  }
  const s = r.summary;
  if (s && s.prefillMs > 0 && s.promptTokens > 0) metrics.prefillTps.observe(s.promptTokens / (s.prefillMs / 1000));
  if (!spec.latencyBudget || r.finishReason === "cancelled") return [];
  const missed = missedParts(spec.latencyBudget, spec, t, tpotMs);
  for (const part of missed) metrics.budgetMisses.inc({ budget: part });
  return missed;
}

/**
 * Run one generation to the end. The listener is awaited for every token (a slow consumer slows the
 * generation down rather than buffering). Throws when the engine fails (not when it is aborted:
 * an aborted generation resolves with finishReason "cancelled").
 */
export async function runGeneration(
  ctx: GenerationContext,
  spec: GenerationSpec,
  listener: GenerationListener,
): Promise<GenerationResult> {
  const startChains = spec.control.current;
  const tokens: GeneratedToken[] = [];
  const chainsPerToken: number[] = [];
  const timing: Timing = { endAt: 0 };
  let text = "";
  let summary: GenerationSummary | null = null;
  let promptLogprobs: PromptLogprob[] | undefined;
  let promptDelivered = false;
  const iter = ctx.engine().generate(spec.prompt, {
    chooseChains: spec.control.choose,
    sampling: spec.sampling,
    maxTokens: spec.maxTokens,
    stop: spec.stop && spec.stop.length > 0 ? spec.stop : undefined,
    signal: spec.signal,
    cache: spec.cache,
    ...(spec.cacheSalt !== undefined ? { cacheSalt: spec.cacheSalt } : {}),
    ...(spec.speculative ? { speculative: spec.speculative } : {}),
    ...(spec.promptLogprobs !== undefined ? { promptLogprobs: spec.promptLogprobs, onPromptLogprobs: (lps: PromptLogprob[]) => (promptLogprobs = lps) } : {}),
  });
  try {
    for (let step = await iter.next(); ; step = await iter.next()) {
      // The engine reports the prompt's logprobs inside the call that brings the first token (or the end).
      if (promptLogprobs && !promptDelivered) {
        promptDelivered = true;
        await listener.prompt?.(promptLogprobs);
      }
      if (step.done) {
        summary = step.value;
        text += summary.tailText;
        break;
      }
      const tok = step.value;
      observeToken(ctx.metrics, spec, tok, chainsPerToken[chainsPerToken.length - 1], timing);
      tokens.push(tok);
      chainsPerToken.push(tok.chains);
      text += tok.text;
      await listener.token(tok);
    }
  } catch (err) {
    if (!isAbortError(err, spec.signal)) {
      ctx.metrics.generations.inc({ finish_reason: "error" });
      throw err;
    }
  } finally {
    // Stopped early (abort or error): make sure the engine frees the sequence.
    if (!summary) await iter.return(undefined as never).catch(() => undefined);
  }
  timing.endAt = performance.now();
  const ended = {
    finishReason: summary?.finishReason ?? ("cancelled" as const),
    promptTokens: summary?.promptTokens ?? spec.prompt.length,
    completionTokens: summary?.completionTokens ?? tokens.length,
    cachedTokens: summary?.cachedTokens ?? 0,
    chainsPerToken,
    finalChains: chainsPerToken[chainsPerToken.length - 1] ?? startChains,
    summary,
  };
  const budgetMissed = observeEnd(ctx.metrics, spec, ended, startChains, tokens.length, timing);
  return { ...ended, tokens, text, budgetMissed, ...(promptLogprobs ? { promptLogprobs } : {}) };
}

/**
 * Run several generations concurrently (the choices of one request). If one fails, the others
 * are aborted and the first error is rethrown.
 */
export async function runChoices(
  ctx: GenerationContext,
  specs: ReadonlyArray<Omit<GenerationSpec, "signal">>,
  signal: AbortSignal,
  listener: { prompt?(choice: number, logprobs: PromptLogprob[]): void | Promise<void>; token(choice: number, tok: GeneratedToken): void | Promise<void> },
): Promise<GenerationResult[]> {
  const group = new AbortController();
  const forward = () => group.abort(signal.reason);
  if (signal.aborted) forward();
  else signal.addEventListener("abort", forward, { once: true });
  try {
    return await Promise.all(
      specs.map((spec, i) =>
        runGeneration(ctx, { ...spec, signal: group.signal }, { prompt: (lps) => listener.prompt?.(i, lps), token: (tok) => listener.token(i, tok) }).catch((err) => {
          group.abort(err);
          throw err;
        }),
      ),
    );
  } finally {
    signal.removeEventListener("abort", forward);
  }
}
