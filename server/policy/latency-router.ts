// Latency-budget routing and load-adaptive LM switching (issue 5).
//
// Routing: an elastic request (no `:c<k>`, no `chains`) with a latency_budget gets the largest
// k whose predictions under the current load meet every part of its budget:
//   TTFT  = queue + prefill(T, k)       queue = sequences ahead × (their chain-1 prefill + one step)
//   TPOT  = step_k(B) + overhead        B = the batch it would join (running + ahead + itself, at most
//                                       the capacity); overhead = the loop's time between steps
//   total = TTFT + (max_tokens − 1) · TPOT
// No budget → the largest k. A fixed size → as asked. No k fits → k = 1 (the cheapest model gives
// the budget its best chance; refusing would turn a likely-late answer into a certain failure)
// and a budget miss is counted at once (colm_latency_budget_misses_total{budget="no_fit"}).
//
// Switching: before each token of a budgeted elastic generation, its TPOT limit (tpot_ms, and
// what is left of total_ms spread over the tokens still to come) is compared with step_k(B) at
// the batch size it is in now. Above the limit → down to the largest k that fits (or 1); at most
// `upMargin` × the limit at a larger k → up to the largest such k. The gap between the two
// thresholds and a minimum number of tokens between switches keep a load that hovers around a
// threshold from making the generation flap. Switching needs no recomputation (spec §5.5).
// With `switching: false` a budgeted request keeps its routed k to the end (routing alone; the
// serving sweep compares the two).
import { ChainControl } from "../engine/chain-control.ts";
import type { CostModel, CostPredictor } from "./cost-model.ts";
import { DraftPolicy, type SpeculativeMode } from "./draft-policy.ts";

/** A request's latency budget, each part optional (ms). */
export interface LatencyBudget {
  ttft_ms?: number;
  tpot_ms?: number;
  total_ms?: number;
}

/** What routing needs to know of a request. */
export interface ChainRequest {
  /** Chain count fixed by the request (`model: "<name>:c<k>"` or `chains: k`); undefined = elastic. */
  fixedChains?: number;
  latencyBudget?: LatencyBudget;
  /** Prompt length in tokens and requested completion length. */
  promptTokens: number;
  /** Prompt tokens the prefix cache holds (copied, not prefilled); default 0. */
  cachedTokens?: number;
  maxTokens: number;
}

/** Sequences decoding now, and sequences waiting ahead of a new request (engine + admission). */
export interface LoadSnapshot {
  running: number;
  queued: number;
  /** Most sequences that decode together (the batch a newcomer joins never exceeds it). */
  capacity?: number;
}

export interface HysteresisConfig {
  /** Move up only when the larger k is predicted at ≤ upMargin × the TPOT limit (0 < m ≤ 1). */
  upMargin: number;
  /** Tokens a generation stays at a chain count before it may switch again. */
  minTokensBetweenSwitches: number;
}

export const DEFAULT_HYSTERESIS: HysteresisConfig = { upMargin: 0.8, minTokensBetweenSwitches: 4 };

export interface Prediction {
  ttftMs: number;
  tpotMs: number;
  totalMs: number;
}

export type RouteReason = "fixed" | "no_budget" | "budget" | "no_fit" | "no_costs";

export interface RouteDecision {
  chains: number;
  reason: RouteReason;
  /** Prediction at the chosen k (absent for fixed / no budget / nothing known yet). */
  predicted?: Prediction;
}

/**
 * The least of `cost(j)` over j = k … n: a sub-model is never slower than a model containing it, so
 * what a larger k was measured at bounds k, and a k never seen is bounded by the nearest larger k
 * that has been. Predictions are therefore never cheaper at a larger k. Undefined when nothing ≥ k
 * is known.
 */
function monotoneBound(p: CostPredictor, k: number, cost: (j: number) => number | undefined): number | undefined {
  let best: number | undefined;
  for (let j = k; j <= p.nChains; j++) {
    const ms = cost(j);
    if (ms !== undefined && (best === undefined || ms < best)) best = ms;
  }
  return best;
}

/** Time per output token at k in a batch of `batch`: decode step + the loop's overhead. */
export function stepBound(p: CostPredictor, k: number, batch: number): number | undefined {
  const step = monotoneBound(p, k, (j) => p.decodeStepMs(j, batch));
  return step === undefined ? undefined : step + (p.tokenOverheadMs ?? 0);
}

function prefillBound(p: CostPredictor, promptTokens: number, k: number, cachedTokens = 0): number | undefined {
  return monotoneBound(p, k, (j) => p.prefillMs(promptTokens, j, cachedTokens));
}

/** Predicted TTFT / TPOT / total for a new request served at k under `load` (`cachedTokens` of its prompt in the prefix cache). */
export function predict(p: CostPredictor, k: number, promptTokens: number, maxTokens: number, load: LoadSnapshot, cachedTokens = 0): Prediction | undefined {
  const batch = Math.min(load.running + load.queued + 1, load.capacity ?? Infinity);
  const tpot = stepBound(p, k, batch);
  const prefill = prefillBound(p, promptTokens, k, cachedTokens);
  if (tpot === undefined || prefill === undefined) return undefined;
  // Each sequence ahead is admitted one per scheduler step: its chain-1 prefill, then a step.
  const ahead = (prefillBound(p, promptTokens, 1) ?? prefill) + stepBound(p, 1, batch)!;
  const ttft = load.queued * ahead + prefill;
  return { ttftMs: ttft, tpotMs: tpot, totalMs: ttft + Math.max(0, maxTokens - 1) * tpot };
}

export function meets(pred: Prediction, budget: LatencyBudget): boolean {
  return (
    (budget.ttft_ms === undefined || pred.ttftMs <= budget.ttft_ms) &&
    (budget.tpot_ms === undefined || pred.tpotMs <= budget.tpot_ms) &&
    (budget.total_ms === undefined || pred.totalMs <= budget.total_ms)
  );
}

function hasBudget(b: LatencyBudget | undefined): b is LatencyBudget {
  return b !== undefined && (b.ttft_ms !== undefined || b.tpot_ms !== undefined || b.total_ms !== undefined);
}

/** The routing rule (see the header): pure, so tests drive it with a table of costs and loads. */
export function route(request: ChainRequest, p: CostPredictor, load: LoadSnapshot): RouteDecision {
  const n = p.nChains;
  if (request.fixedChains !== undefined) return { chains: request.fixedChains, reason: "fixed" };
  if (!hasBudget(request.latencyBudget)) return { chains: n, reason: "no_budget" };
  let anyKnown = false;
  for (let k = n; k >= 1; k--) {
    const pred = predict(p, k, request.promptTokens, request.maxTokens, load, request.cachedTokens);
    if (!pred) continue;
    anyKnown = true;
    if (meets(pred, request.latencyBudget)) return { chains: k, reason: "budget", predicted: pred };
  }
  // Nothing measured yet (no warm-up, no traffic): no basis to shrink the model.
  if (!anyKnown) return { chains: n, reason: "no_costs" };
  return { chains: 1, reason: "no_fit", predicted: predict(p, 1, request.promptTokens, request.maxTokens, load, request.cachedTokens) };
}

export interface AdaptiveDeps {
  predictor: CostPredictor;
  /** Rows in the running batch now (the one this generation is in). */
  batch: () => number;
  now: () => number;
  hysteresis: HysteresisConfig;
}

/**
 * The per-token chain policy of one budgeted elastic generation: `choose(index, current)` returns
 * the chain count for token `index` (see the header for the rule). Stateful: remembers the index
 * of its last switch.
 */
export class AdaptiveChains {
  /** Index of the last switch (none yet: the first may come at token 1). */
  private lastSwitchAt = -Infinity;

  constructor(
    private readonly deps: AdaptiveDeps,
    private readonly budget: LatencyBudget,
    private readonly maxTokens: number,
    /** deps.now() when the request arrived (for total_ms). */
    private readonly arrivedAt: number,
  ) {}

  /** The most a token may take from here on to keep the budget (Infinity: unconstrained). */
  tpotLimit(index: number): number {
    let limit = this.budget.tpot_ms ?? Infinity;
    const left = this.maxTokens - index;
    if (this.budget.total_ms !== undefined && left > 0) {
      const remaining = this.arrivedAt + this.budget.total_ms - this.deps.now();
      limit = Math.min(limit, Math.max(0, remaining) / left);
    }
    return limit;
  }

  readonly choose = (index: number, current: number): number => {
    // Token 0 comes out of the prefill at the routed size; switching starts after it.
    if (index === 0 || index - this.lastSwitchAt < this.deps.hysteresis.minTokensBetweenSwitches) return current;
    const p = this.deps.predictor;
    const B = Math.max(1, this.deps.batch());
    const limit = this.tpotLimit(index);
    const at = (k: number) => stepBound(p, k, B);
    let next = current;
    const now = at(current);
    if (now !== undefined && now > limit) {
      next = 1;
      for (let k = current - 1; k >= 1; k--) {
        const ms = at(k);
        if (ms !== undefined && ms <= limit) {
          next = k;
          break;
        }
      }
    } else {
      for (let k = p.nChains; k > current; k--) {
        const ms = at(k);
        if (ms !== undefined && ms <= this.deps.hysteresis.upMargin * limit) {
          next = k;
          break;
        }
      }
    }
    if (next !== current) this.lastSwitchAt = index;
    return next;
  };
}

export interface RouterView {
  object: "router";
  policy: string;
  calibrated: boolean;
  load: LoadSnapshot & { batch: number };
  prefill_ms_per_token: number | null;
  /** Copying a cached prefix into a row, per token (time to first token counts the uncached tokens at prefill_ms_per_token). */
  prefix_copy_ms_per_token: number;
  /** Added to every decode step to predict time per output token. */
  token_overhead_ms: number;
  chains: Array<{ chains: number; tpot_ms: number | null; tpot_ms_b1: number | null; step_fixed_ms: number | null; step_per_row_ms: number | null; observations: number }>;
  hysteresis: { up_margin: number; min_tokens_between_switches: number };
  /** Whether budgeted generations switch size mid-generation. */
  switching: boolean;
  /** Self-speculative decoding: the server's mode and, per (draft count, count) seen, the learnt acceptance. */
  speculation: { mode: SpeculativeMode; max_draft: number; pairs: ReturnType<DraftPolicy["view"]> };
}

export interface LatencyRouterOptions {
  model: CostModel;
  load: () => LoadSnapshot;
  /** Clock in ms (default performance.now). */
  now?: () => number;
  hysteresis?: Partial<HysteresisConfig>;
  /** Re-choose a budgeted generation's chain count while it generates (default true). */
  switching?: boolean;
  /** Self-speculative decoding for requests that do not say (default auto: draft-policy.ts). */
  speculative?: SpeculativeMode;
  /** Largest draft count per round `auto` considers (default AUTO_MAX_DRAFT). */
  maxDraft?: number;
}

/** The app's router: the learnt cost model + the live load + the hysteresis config. */
export class LatencyRouter {
  readonly model: CostModel;
  readonly hysteresis: HysteresisConfig;
  readonly now: () => number;
  private readonly loadSource: () => LoadSnapshot;
  /** Set once the start-up warm-up has run. */
  calibrated = false;
  /**
   * Whether budgeted generations switch size mid-generation; when false they keep the routed k.
   * Mutable so one warmed-up server can be measured both ways; applies to generations routed
   * after the change.
   */
  switching: boolean;
  /** When and how far generations speculate; learns acceptance from the engine's verify calls. */
  readonly drafts: DraftPolicy;

  constructor(opts: LatencyRouterOptions) {
    this.model = opts.model;
    this.drafts = new DraftPolicy({ mode: opts.speculative ?? "auto", nChains: opts.model.nChains, costs: opts.model, maxDraft: opts.maxDraft });
    this.loadSource = opts.load;
    this.now = opts.now ?? (() => performance.now());
    this.hysteresis = { ...DEFAULT_HYSTERESIS, ...opts.hysteresis };
    this.switching = opts.switching ?? true;
  }

  load(): LoadSnapshot {
    return this.loadSource();
  }

  route(request: ChainRequest): RouteDecision {
    return route(request, this.model, this.load());
  }

  /** The per-token policy of a generation routed by `decision`, or undefined when it must keep its size. */
  adaptive(request: ChainRequest, decision: RouteDecision, arrivedAt: number): AdaptiveChains | undefined {
    if (!this.switching || decision.reason === "fixed" || !hasBudget(request.latencyBudget)) return undefined;
    if (request.latencyBudget.tpot_ms === undefined && request.latencyBudget.total_ms === undefined) return undefined;
    const deps: AdaptiveDeps = { predictor: this.model, batch: () => Math.max(1, this.load().running), now: this.now, hysteresis: this.hysteresis };
    return new AdaptiveChains(deps, request.latencyBudget, request.maxTokens, arrivedAt);
  }

  /**
   * Route a request and make the per-choice chain controls: each starts at the routed k, teaches
   * the cost model the token intervals it sees and, for a budgeted elastic request, carries the
   * load-adaptive switching policy.
   */
  plan(request: ChainRequest): ChainPlan {
    const decision = this.route(request);
    const arrivedAt = this.now();
    return {
      chains: decision.chains,
      decision,
      control: () => {
        const control = new ChainControl(decision.chains);
        control.onInterval = (chains, ms) => this.model.observeTokenInterval(chains, Math.max(1, this.load().running), ms);
        const policy = this.adaptive(request, decision, arrivedAt);
        if (policy) control.policy = policy.choose;
        return control;
      },
    };
  }

  view(): RouterView {
    const load = this.load();
    const batch = Math.max(1, load.running);
    const lines = new Map(this.model.decodeLines().map((l) => [l.chains, l]));
    const chains = Array.from({ length: this.model.nChains }, (_, i) => {
      const k = i + 1;
      const line = lines.get(k);
      const tpot = (B: number) => stepBound(this.model, k, B) ?? null;
      return {
        chains: k,
        tpot_ms: tpot(batch),
        tpot_ms_b1: tpot(1),
        step_fixed_ms: line?.fixedMs ?? null,
        step_per_row_ms: line?.perRowMs ?? null,
        observations: line?.observations ?? 0,
      };
    });
    return {
      object: "router",
      policy: "largest k whose predicted ttft/tpot/total meet the latency_budget; none fits: k=1 and a counted miss",
      calibrated: this.calibrated,
      load: { running: load.running, queued: load.queued, batch },
      prefill_ms_per_token: this.model.prefillMsPerToken ?? null,
      prefix_copy_ms_per_token: this.model.prefixCopyMsPerToken,
      token_overhead_ms: this.model.tokenOverheadMs,
      chains,
      hysteresis: { up_margin: this.hysteresis.upMargin, min_tokens_between_switches: this.hysteresis.minTokensBetweenSwitches },
      switching: this.switching,
      speculation: { mode: this.drafts.mode, max_draft: this.drafts.maxDraft, pairs: this.drafts.view() },
    };
  }
}

export interface ChainPlan {
  /** Chain count the generation starts at (the routed k). */
  chains: number;
  decision: RouteDecision;
  /** A fresh ChainControl per choice (each carries its own adaptive policy state). */
  control(): ChainControl;
}

