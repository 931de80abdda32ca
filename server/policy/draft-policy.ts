// When to speculate and how far (issue 18). Sub-model k_d drafts γ tokens that the generation's
// count k verifies in one call (server/engine/speculation.ts). With a per-draft acceptance rate α
// (drafts are accepted in order until the first rejection), a round emits on average
//   E(γ) = 1 + α + … + α^γ = (1 − α^(γ+1)) / (1 − α)      tokens
// and costs γ draft steps at k_d plus one verify call of γ+1 tokens per row at k:
//   cost(γ) = γ · step_kd(B) + verify_k(B, γ+1)
// `auto` picks the γ in 0 … maxDraft (AUTO_MAX_DRAFT) with the most tokens per ms, E(γ) / cost(γ), where γ = 0 is
// a plain step: 1 / step_k(B) (a draft length must beat it by MIN_GAIN). Both costs come from the cost model, which learns them from every
// call; α is learnt per (k_d, k) from every verify call. At a large batch a verify call's tokens
// cost nearly what they would as separate rows while the draft steps are extra, so γ falls to 0 by
// itself. `on` speculates with DEFAULT_MAX_DRAFT drafts every round; `off` never (a request may still ask).
import type { DraftRound, SamplingOptions, SpeculativeOptions, StepStats } from "../engine/types.ts";
import type { CostPredictor } from "./cost-model.ts";

export type SpeculativeMode = "auto" | "on" | "off";
export const SPECULATIVE_MODES: readonly SpeculativeMode[] = ["auto", "on", "off"];

export { MAX_DRAFT_TOKENS } from "../engine/speculation.ts";
/** Drafts per round for `on` and for a request that asks without a count. */
export const DEFAULT_MAX_DRAFT = 4;
/** Longest draft `auto` considers: with a draft step at a sixth of a full one (the long model) and α ≈ 0.85 the best γ is 6. */
export const AUTO_MAX_DRAFT = 8;

/** What a request asked: off, or on with (optionally) its draft count and drafts per round. */
export type SpeculativeRequest = false | { draftChains?: number; maxDraft?: number };

/**
 * Least predicted gain (tokens per ms over a plain step) for `auto` to speculate: near break-even
 * the predictions' error decides, and a batch split into speculating and plain rows makes more
 * calls than the model counts, so a marginal gain is left alone.
 */
const MIN_GAIN = 1.1;

/**
 * While `auto` predicts no gain at a small batch, every PROBE_EVERY-th round there speculates
 * anyway (PROBE_DRAFTS drafts): otherwise one slow verify call (a first call of a new shape, a
 * stall) could keep the estimates pessimistic forever, since only verify calls correct them.
 */
const PROBE_EVERY = 32;
const PROBE_DRAFTS = 2;
const PROBE_MAX_BATCH = 4;

/** Acceptance assumed for a (k_d, k) pair before any verify call, with the weight of this many observations. */
const PRIOR_ACCEPTANCE = 0.7;
const PRIOR_WEIGHT = 4;

interface AcceptanceCounts {
  accepted: number;
  rejected: number;
}

export interface DraftPolicyOptions {
  mode: SpeculativeMode;
  nChains: number;
  costs: CostPredictor;
  /** Largest γ auto considers (default AUTO_MAX_DRAFT). */
  maxDraft?: number;
  /** Outcomes (accepted drafts + rejections) remembered per (k_d, k) before old ones are halved (default 2000). */
  memory?: number;
}

/** The acceptance counts' key: draft count, target count, greedy or sampled. */
function pairKey(draftChains: number, chains: number, sampled: boolean): string {
  return `${draftChains}:${chains}:${sampled ? "sampled" : "greedy"}`;
}

export class DraftPolicy {
  readonly mode: SpeculativeMode;
  readonly maxDraft: number;
  private readonly costs: CostPredictor;
  private readonly memory: number;
  private readonly counts = new Map<string, AcceptanceCounts>();
  private sinceProbe = 0;

  constructor(o: DraftPolicyOptions) {
    this.mode = o.mode;
    this.costs = o.costs;
    this.maxDraft = o.maxDraft ?? AUTO_MAX_DRAFT;
    this.memory = o.memory ?? 2000;
  }

  /** Learn acceptance from a verify call (wire to engine.onStep). */
  observe(s: StepStats): void {
    const spec = s.speculation;
    if (s.kind !== "verify" || !spec) return;
    const key = pairKey(spec.draftChains, s.chains, spec.sampled);
    const c = this.counts.get(key) ?? { accepted: 0, rejected: 0 };
    c.accepted += spec.accepted;
    c.rejected += spec.rejected;
    // Old calls fade: past `memory` outcomes, both counts are halved.
    if (c.accepted + c.rejected > this.memory) {
      c.accepted /= 2;
      c.rejected /= 2;
    }
    this.counts.set(key, c);
  }

  /** Forgets what verify calls taught about acceptance (after the warm-up, whose synthetic text says nothing about real text's). */
  forgetAcceptance(): void {
    this.counts.clear();
  }

  /**
   * Estimated probability that a draft of k_d is accepted by k, given the drafts before it were:
   * accepted / (accepted + rejected) over recent calls — every accepted draft is a success, every
   * round cut short one failure — with a prior of PRIOR_ACCEPTANCE worth PRIOR_WEIGHT outcomes.
   */
  acceptance(draftChains: number, chains: number, sampled = false): number {
    const c = this.counts.get(pairKey(draftChains, chains, sampled));
    return ((c?.accepted ?? 0) + PRIOR_ACCEPTANCE * PRIOR_WEIGHT) / ((c?.accepted ?? 0) + (c?.rejected ?? 0) + PRIOR_WEIGHT);
  }

  /**
   * A generation's speculative options from its request (undefined: the server's mode) and its
   * sampling. `auto` leaves seeded sampled requests alone: their tokens depend on how the random
   * draws are spent, which would then depend on the load.
   */
  optionsFor(request: SpeculativeRequest | undefined, sampling: SamplingOptions): SpeculativeOptions | undefined {
    if (request === false) return undefined;
    if (request) return { draftChains: request.draftChains ?? 1, draftTokens: request.maxDraft ?? DEFAULT_MAX_DRAFT };
    if (this.mode === "off") return undefined;
    if (this.mode === "on") return { draftChains: 1, draftTokens: DEFAULT_MAX_DRAFT };
    const greedy = sampling.temperature === 0 || sampling.topK === 1;
    if (!greedy && sampling.seed !== undefined) return undefined;
    return { draftChains: 1, draftTokens: (round) => this.choose(round) };
  }

  /** γ for one round under `auto`: the best predicted count, or now and then a probe (see PROBE_EVERY). */
  choose(round: DraftRound): number {
    const best = this.estimate(round);
    if (best === 0 && round.batch <= PROBE_MAX_BATCH && ++this.sinceProbe >= PROBE_EVERY) {
      this.sinceProbe = 0;
      return Math.min(PROBE_DRAFTS, this.maxDraft);
    }
    return best;
  }

  /** The count with the most expected tokens per ms (0: a plain step). */
  estimate(round: DraftRound): number {
    const { chains, draftChains, batch, sampled } = round;
    const plain = this.costs.decodeStepMs(chains, batch);
    const draft = this.costs.decodeStepMs(draftChains, batch);
    if (plain === undefined || draft === undefined || !this.costs.verifyMs) return 0;
    const alpha = this.acceptance(draftChains, chains, sampled);
    let best = 0;
    let bestRate = MIN_GAIN / plain;
    let expected = 1;
    for (let g = 1; g <= this.maxDraft; g++) {
      expected += alpha ** g;
      const verify = this.costs.verifyMs(chains, batch, g + 1);
      if (verify === undefined) break;
      const rate = expected / (g * draft + verify);
      if (rate > bestRate) [best, bestRate] = [g, rate];
    }
    return best;
  }

  /** Per (k_d, k) pair seen: the acceptance estimate and the γ auto would pick alone (B = 1). */
  view(): Array<{ draft_chains: number; chains: number; sampling: "greedy" | "sampled"; acceptance: number; draft_tokens_b1: number }> {
    return [...this.counts.keys()].map((key) => {
      const [d, k, sampling] = key.split(":");
      const [draftChains, chains, sampled] = [Number(d), Number(k), sampling === "sampled"];
      const acceptance = this.acceptance(draftChains, chains, sampled);
      return { draft_chains: draftChains, chains, sampling: sampled ? "sampled" : "greedy", acceptance, draft_tokens_b1: this.estimate({ chains, draftChains, batch: 1, sampled }) };
    });
  }
}
