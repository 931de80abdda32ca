// What the server believes a model call costs, learnt online from the engine's StepStats.
import type { StepStats } from "../engine/types.ts";
import { AUTO_MAX_DRAFT } from "./draft-policy.ts";
//
//   decode step at chain count k with B rows:   step_k(B) = a_k + b_k · B      (ms)
//   prefill of a T-token prompt served at k:     prefill(T, k) = p · (T − 1) + step_k(1)
//   … of which c tokens are in the prefix cache:  prefill(T, k, c) = p · (T − c − 1) + q · c + step_k(1)
//
// The decode line is fitted per k by exponentially weighted least squares: every decode step adds
// (B, ms) to EWMA moments of 1, B, B², ms, B·ms, from which a_k and b_k are solved — recent steps
// count most, old ones fade (so the model follows a machine that gets busier or quieter). While
// all recent steps ran at one batch size the slope cannot be fitted; the last slope is kept and
// only the intercept moves. `p` is the chain-1 prefill cost per prompt token (spec §5.4: the
// prompt runs through chain 1, only its last token at k), an EWMA of (ms − step_k(1)) / (T − 1);
// `q` the cost per token of copying a cached prefix into a row, an EWMA over prefix copies.
// A decode step reports the largest chain count among its rows, so its cost is credited to that
// k: the model describes "a batch of B rows at k", which is what a router needs for an upper bound.
// What a generation sees per token is more than its step: between two steps the loop prefills
// newcomers, samples and writes tokens out. `tokenOverheadMs` is an EWMA of (token interval seen by
// a generation − predicted step), fed by the generations themselves; time per output token is
// predicted as step_k(B) + tokenOverheadMs.
// Speculative decoding: a draft step is a decode step at the draft count (learnt as one); a verify
// call of T tokens on each of B rows at k does the work of a decode step of B · T rows (bar the
// attention, which reads each row's past once per token either way), so it is predicted as
// f_k · step_k(B · T), with f_k an EWMA of (ms / step_k(B · T)) over verify calls (1 until one is
// seen). The decode line is learnt from every step, so the prediction stays steady while verify
// calls are few.

/** One model call, as the engine reports it. */
export type StepObservation = StepStats;

/** What the router asks; tests inject a table instead of a learnt model. */
export interface CostPredictor {
  readonly nChains: number;
  /** Time a generation waits per token beyond its decode step (the loop's other work: newcomers'
   * prefills, sampling, writing tokens out), ms; 0 when absent. */
  readonly tokenOverheadMs?: number;
  /** Predicted ms of one decode step at k with `batch` rows (= time per output token of each row);
   * undefined while nothing is known about k. */
  decodeStepMs(chains: number, batch: number): number | undefined;
  /** Predicted ms to prefill a `promptTokens` prompt, `cachedTokens` of it from the prefix cache, and produce its first token at k. */
  prefillMs(promptTokens: number, chains: number, cachedTokens?: number): number | undefined;
  /** Predicted ms of a verify call at k: `tokens` tokens on each of `batch` rows; undefined while nothing is known about k. */
  verifyMs?(chains: number, batch: number, tokens: number): number | undefined;
}

export interface CostModelOptions {
  nChains: number;
  /** Weight of a new observation in every EWMA (0 < alpha ≤ 1). Default 0.1. */
  alpha?: number;
}

/** Exponentially weighted moments of (B, ms) for one chain count. */
interface DecodeMoments {
  w: number;
  sB: number;
  sBB: number;
  sY: number;
  sBY: number;
  /** Last fitted line (kept when the moments cannot determine a slope). */
  a: number;
  b: number;
  observations: number;
}

export interface DecodeLine {
  chains: number;
  /** Fixed cost of a step (ms) and cost per row (ms). */
  fixedMs: number;
  perRowMs: number;
  observations: number;
}

export class CostModel implements CostPredictor {
  readonly nChains: number;
  private readonly alpha: number;
  private readonly decode: (DecodeMoments | undefined)[];
  /** Chain-1 prefill ms per prompt token (after the first); undefined until a prefill is seen. */
  private prefillPerToken: number | undefined;
  private prefills = 0;
  /** ms per token of copying a cached prefix into a row (0 until one is seen). */
  private copyPerToken = 0;
  private copies = 0;
  private overhead = 0;
  private intervals = 0;
  /** Per chain count: verify calls' ms over the decode line's prediction for as many rows as the call had tokens. */
  private readonly verifyFactor: (number | undefined)[] = [];
  /** Verify call shapes (k, rows, tokens) seen once. */
  private readonly verifyShapes = new Set<string>();

  constructor(opts: CostModelOptions) {
    if (!(opts.nChains >= 1)) throw new Error("cost model: nChains ≥ 1");
    this.nChains = opts.nChains;
    this.alpha = opts.alpha ?? 0.1;
    if (!(this.alpha > 0 && this.alpha <= 1)) throw new Error("cost model: 0 < alpha ≤ 1");
    this.decode = Array.from({ length: this.nChains + 1 }, () => undefined);
  }

  /** Learn from one model call (wire to engine.onStep). */
  observe(s: StepObservation): void {
    if (!(s.ms >= 0) || !Number.isFinite(s.ms) || s.chains < 1 || s.chains > this.nChains) return;
    if (s.kind === "decode" || s.kind === "draft") this.observeDecode(s.chains, Math.max(1, s.rows), s.ms);
    else if (s.kind === "prefill") this.observePrefill(s.tokens, s.chains, s.ms);
    else if (s.kind === "verify") this.observeVerify(s.chains, s.tokens, Math.max(1, s.rows), s.ms);
    else if (s.tokens > 0) this.observeCopy(s.tokens, s.ms);
  }

  private observeVerify(k: number, tokens: number, rows: number, ms: number): void {
    // onnxruntime plans memory on the first call of a new input shape: not what the next one costs.
    const shape = `${k}:${rows}:${tokens}`;
    if (!this.verifyShapes.has(shape)) return void this.verifyShapes.add(shape);
    const line = this.decodeStepMs(k, tokens);
    if (line === undefined || !(line > 0)) return;
    // Clamped: one stalled call must not teach the model that verifying costs ten decode steps.
    const factor = Math.min(3, Math.max(0.3, ms / line));
    const old = this.verifyFactor[k];
    this.verifyFactor[k] = old === undefined ? factor : (1 - this.alpha) * old + this.alpha * factor;
  }

  verifyMs(chains: number, batch: number, tokens: number): number | undefined {
    const line = this.decodeStepMs(chains, Math.max(1, batch) * Math.max(1, tokens));
    return line === undefined ? undefined : (this.verifyFactor[chains] ?? 1) * line;
  }

  private observeCopy(tokens: number, ms: number): void {
    const perToken = ms / tokens;
    this.copyPerToken = this.copies++ === 0 ? perToken : (1 - this.alpha) * this.copyPerToken + this.alpha * perToken;
  }

  private observeDecode(k: number, B: number, ms: number): void {
    let m = this.decode[k];
    if (!m) {
      // First step at k: a line through it with no per-row cost until a second batch size is seen.
      m = this.decode[k] = { w: 1, sB: B, sBB: B * B, sY: ms, sBY: B * ms, a: ms, b: 0, observations: 1 };
      return;
    }
    const keep = 1 - this.alpha;
    m.w = keep * m.w + this.alpha;
    m.sB = keep * m.sB + this.alpha * B;
    m.sBB = keep * m.sBB + this.alpha * B * B;
    m.sY = keep * m.sY + this.alpha * ms;
    m.sBY = keep * m.sBY + this.alpha * B * ms;
    m.observations++;
    const meanB = m.sB / m.w;
    const meanY = m.sY / m.w;
    const varB = m.sBB / m.w - meanB * meanB;
    // A slope needs spread in B (≥ ~0.25 rows² of variance); otherwise keep the last slope.
    if (varB > 0.25) m.b = Math.max(0, (m.sBY / m.w - meanB * meanY) / varB);
    m.a = Math.max(0, meanY - m.b * meanB);
  }

  private observePrefill(T: number, k: number, ms: number): void {
    if (T <= 1) return; // only the last token ran: nothing to learn about chain-1 prefill
    const last = this.decodeStepMs(k, 1) ?? 0;
    const perToken = Math.max(0, (ms - last) / (T - 1));
    this.prefillPerToken = this.prefillPerToken === undefined ? perToken : (1 - this.alpha) * this.prefillPerToken + this.alpha * perToken;
    this.prefills++;
  }

  /** Learn from the interval between two tokens of one generation at `chains`, in a batch of `batch`. */
  observeTokenInterval(chains: number, batch: number, ms: number): void {
    const step = this.decodeStepMs(chains, batch);
    if (step === undefined || !(ms >= 0) || !Number.isFinite(ms)) return;
    // Signed: the tokens of one speculative round arrive together, their intervals below the step
    // balance the round's long one, so the mean is the true time per token beyond the step.
    const extra = ms - step;
    this.overhead = this.intervals === 0 ? extra : (1 - this.alpha) * this.overhead + this.alpha * extra;
    this.intervals++;
  }

  get tokenOverheadMs(): number {
    return Math.max(0, this.overhead);
  }

  decodeStepMs(chains: number, batch: number): number | undefined {
    const m = this.decode[chains];
    if (!m) return undefined;
    return m.a + m.b * Math.max(1, batch);
  }

  prefillMs(promptTokens: number, chains: number, cachedTokens = 0): number | undefined {
    const last = this.decodeStepMs(chains, 1);
    if (last === undefined) return undefined;
    const cached = Math.min(Math.max(0, cachedTokens), Math.max(0, promptTokens - 1));
    return (this.prefillPerToken ?? 0) * Math.max(0, promptTokens - cached - 1) + this.copyPerToken * cached + last;
  }

  /** ms per token of copying a cached prefix into a row (0 before the first copy). */
  get prefixCopyMsPerToken(): number {
    return this.copyPerToken;
  }

  /** Chain-1 prefill ms per prompt token; undefined before the first multi-token prefill. */
  get prefillMsPerToken(): number | undefined {
    return this.prefillPerToken;
  }

  get prefillObservations(): number {
    return this.prefills;
  }

  /** The fitted decode line of every chain count that has been seen. */
  decodeLines(): DecodeLine[] {
    const out: DecodeLine[] = [];
    for (let k = 1; k <= this.nChains; k++) {
      const m = this.decode[k];
      if (m) out.push({ chains: k, fixedMs: m.a, perRowMs: m.b, observations: m.observations });
    }
    return out;
  }
}

/** The slice of the engine a warm-up needs (ColmEngine has it; the Engine interface need not). */
export interface WarmupEngine {
  readonly info: { nChains: number; vocabSize: number; maxPosition: number };
  generate(
    prompt: number[],
    options: { chains: number; maxTokens: number; sampling: { temperature: number }; stopOnEos: boolean; cache: boolean; speculative?: { draftChains: number; draftTokens: number } },
  ): AsyncGenerator<unknown, unknown, void>;
}

export interface WarmupOptions {
  /** Prompt length of every warm-up request (default 32, clamped to the context). */
  promptTokens?: number;
  /** Tokens generated per warm-up request (default 4). */
  decodeTokens?: number;
  /** Rows of the larger batch (default 8). */
  batch?: number;
  /** Draft lengths 1 … maxDraft get a speculative round each (default AUTO_MAX_DRAFT). */
  maxDraft?: number;
}

/**
 * Start-up calibration: for every k, one request alone (B = 1) and `batch` requests together, each
 * a short prompt and a few greedy tokens. The engine's onStep listener (wired to the cost model by
 * the caller) learns from these calls like from any other; this only makes sure every k has been
 * seen at two batch sizes before the first real request is routed. A few dozen model calls.
 */
export async function warmUp(engine: WarmupEngine, opts: WarmupOptions = {}): Promise<void> {
  const { nChains, vocabSize, maxPosition } = engine.info;
  const decodeTokens = opts.decodeTokens ?? 4;
  const promptTokens = Math.max(2, Math.min(opts.promptTokens ?? 32, maxPosition - decodeTokens - 1));
  const batch = opts.batch ?? 8;
  const prompt = (i: number) => Array.from({ length: promptTokens }, (_, j) => (i * 31 + j * 7 + 1) % vocabSize);
  const run = async (i: number, k: number) => {
    // No prefix cache: each k's warm-up must prefill its prompt (and leave nothing cached).
    for await (const _ of engine.generate(prompt(i), { chains: k, maxTokens: decodeTokens, sampling: { temperature: 0 }, stopOnEos: false, cache: false }));
  };
  for (let k = 1; k <= nChains; k++) {
    await run(0, k);
    await Promise.all(Array.from({ length: batch }, (_, i) => run(i + 1, k)));
  }
  // One speculative round per draft length at every k > 1, twice: each verify shape's first call
  // (which the cost model skips) is out of the way, the second teaches the verify cost.
  for (let k = 2; k <= nChains; k++) {
    for (let g = 1; g <= (opts.maxDraft ?? AUTO_MAX_DRAFT); g++) {
      for (let rep = 0; rep < 2; rep++) {
        const options = { chains: k, maxTokens: g + 2, sampling: { temperature: 0 }, stopOnEos: false, cache: false, speculative: { draftChains: 1, draftTokens: g } };
        for await (const _ of engine.generate(prompt(rep), options));
      }
    }
  }
}
