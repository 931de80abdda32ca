// Token selection from one step's logits, in vLLM's order:
//   logit_bias (additive) → repetition penalty (multiplicative, prompt + generated)
//   → presence / frequency penalties (OpenAI, generated only)
//   → greedy argmax when temperature is 0 or top-k is 1
//   → otherwise temperature → top-k → top-p → min-p → draw with the seeded RNG.
//
// Logprobs (when requested) are the log-softmax of the logits after bias and penalties but before
// temperature and truncation: they describe the model's (penalised) distribution, not the
// truncated one the token was drawn from, so they are comparable across sampling settings.
//
// The vocabulary is 32k wide and this runs once per token, so nothing sorts the whole vocabulary:
// greedy is one pass, top-k is a quickselect, top-p buckets the weights by their float exponent
// and sorts only the one bucket the nucleus boundary falls in, and the O(V) scratch buffers are
// shared by all samplers of one vocabulary size. Sharing is safe because `sample` is synchronous:
// no two calls can interleave.
import { ColmError } from "../models/errors.ts";
import { SeededRng, type Rng } from "./rng.ts";

/** Sampling controls (OpenAI names, camelCased). Every field optional; defaults are greedy-free
 * OpenAI defaults: temperature 1, topP 1, topK 0 (off), minP 0 (off), penalties off. */
export interface SamplingOptions {
  /** 0 means greedy. */
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** 1 means off (multiplicative, as in vLLM / HF). */
  repetitionPenalty?: number;
  /** token id → additive bias. */
  logitBias?: Record<number, number>;
  /** Same seed → same tokens. */
  seed?: number;
  /** Return the top-N alternatives' logprobs with each token (0 … 20). Undefined: no logprobs. */
  logprobs?: number;
}

export interface TokenLogprob {
  tokenId: number;
  logprob: number;
}

export interface SampledToken {
  tokenId: number;
  /** Present when logprobs were requested. May be -Infinity for a banned token. */
  logprob?: number;
  /** Present when logprobs were requested: the top-N tokens, most likely first (ties: lower id). */
  topLogprobs?: TokenLogprob[];
}

/** Sampling options that cannot be honoured; `param` names the offending option. */
export class SamplingError extends ColmError {
  override name = "SamplingError";
  constructor(
    message: string,
    /** The option at fault; `param` spells it as the API does (topP → top_p). */
    readonly option: keyof SamplingOptions | "vocabSize" | "logits",
  ) {
    super(message, option === "vocabSize" || option === "logits" ? "internal" : "invalid_request", "invalid_value", option.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));
  }
}

/** Most alternatives a caller may ask for (OpenAI's limit). */
export const MAX_TOP_LOGPROBS = 20;

/**
 * Top-p buckets: a positive float32's bit pattern grows with its value, so `bits >>> 19` (exponent
 * plus 4 mantissa bits, 16 buckets per octave) orders weights coarsely without a logarithm.
 * Weights lie in [0, 1], whose keys are at most 0x3F800000 >>> 19 = 2032.
 */
const BUCKET_SHIFT = 19;
const BUCKET_COUNT = (0x3f800000 >>> BUCKET_SHIFT) + 1;
const bucketMass = new Float64Array(BUCKET_COUNT);

interface Scratch {
  /** Logits after bias and penalties. */
  adjusted: Float32Array;
  /** Unnormalised probabilities exp((l - max) / T). */
  weights: Float32Array;
  /** The same memory as `weights`, read as bits for top-p bucketing. */
  weightBits: Uint32Array;
  /** Copy of weights that quickselect reorders. */
  select: Float32Array;
  /** Candidate token ids. */
  candidates: Int32Array;
  /** Top-p: the ids in the bucket the nucleus boundary falls in. */
  boundary: Int32Array;
}

const scratchBySize = new Map<number, Scratch>();

function scratchFor(vocabSize: number): Scratch {
  let s = scratchBySize.get(vocabSize);
  if (!s) {
    const weights = new Float32Array(vocabSize);
    s = {
      adjusted: new Float32Array(vocabSize),
      weights,
      weightBits: new Uint32Array(weights.buffer),
      select: new Float32Array(vocabSize),
      candidates: new Int32Array(vocabSize),
      boundary: new Int32Array(vocabSize),
    };
    scratchBySize.set(vocabSize, s);
  }
  return s;
}

interface ResolvedOptions {
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  presencePenalty: number;
  frequencyPenalty: number;
  repetitionPenalty: number;
  biasIds: Int32Array;
  biasValues: Float32Array;
  /** Undefined: no logprobs. */
  logprobs: number | undefined;
}

function resolveOptions(o: SamplingOptions, vocabSize: number): ResolvedOptions {
  const num = (value: number | undefined, fallback: number, param: keyof SamplingOptions, ok: (v: number) => boolean, rule: string): number => {
    if (value === undefined) return fallback;
    if (!Number.isFinite(value) || !ok(value)) throw new SamplingError(`${param} must be ${rule}, got ${value}`, param);
    return value;
  };
  const temperature = num(o.temperature, 1, "temperature", (v) => v >= 0, "≥ 0");
  const topP = num(o.topP, 1, "topP", (v) => v > 0 && v <= 1, "in (0, 1]");
  const topK = num(o.topK, 0, "topK", (v) => Number.isInteger(v) && v >= 0, "a non-negative integer (0 = off)");
  const minP = num(o.minP, 0, "minP", (v) => v >= 0 && v <= 1, "in [0, 1]");
  const presencePenalty = num(o.presencePenalty, 0, "presencePenalty", () => true, "finite");
  const frequencyPenalty = num(o.frequencyPenalty, 0, "frequencyPenalty", () => true, "finite");
  const repetitionPenalty = num(o.repetitionPenalty, 1, "repetitionPenalty", (v) => v > 0, "> 0");
  const logprobs =
    o.logprobs === undefined
      ? undefined
      : num(o.logprobs, 0, "logprobs", (v) => Number.isInteger(v) && v >= 0 && v <= MAX_TOP_LOGPROBS, `an integer in 0 … ${MAX_TOP_LOGPROBS}`);
  const entries = Object.entries(o.logitBias ?? {});
  const biasIds = new Int32Array(entries.length);
  const biasValues = new Float32Array(entries.length);
  entries.forEach(([key, value], i) => {
    const id = Number(key);
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new SamplingError(`logitBias key ${key} is not a token id in 0 … ${vocabSize - 1}`, "logitBias");
    }
    if (typeof value !== "number" || Number.isNaN(value)) throw new SamplingError(`logitBias[${key}] must be a number`, "logitBias");
    biasIds[i] = id;
    biasValues[i] = value;
  });
  return { temperature, topP, topK, minP, presencePenalty, frequencyPenalty, repetitionPenalty, biasIds, biasValues, logprobs };
}

/**
 * One generation's sampler. State contract: penalty counts are kept incrementally across calls,
 * so between calls `generated` may only grow by appending (as a generation loop does) and
 * `promptTokens` must stay the same array contents. A shorter `generated`, or a different prompt
 * array, makes the sampler recount from scratch (correct, just O(n) once).
 */
export class Sampler {
  private readonly opts: ResolvedOptions;
  private readonly rng: Rng;
  private readonly usesRepetition: boolean;
  private readonly usesOpenAiPenalties: boolean;
  /** Distinct tokens of prompt + generated (repetition penalty). */
  private readonly seen = new Set<number>();
  /** Occurrences of each generated token (presence / frequency penalties). */
  private readonly counts = new Map<number, number>();
  private countedPrompt: readonly number[] | null = null;
  private countedGenerated = 0;

  constructor(
    options: SamplingOptions,
    readonly vocabSize: number,
    rng?: Rng,
  ) {
    if (!Number.isInteger(vocabSize) || vocabSize < 1) throw new SamplingError(`vocabSize must be a positive integer, got ${vocabSize}`, "vocabSize");
    this.opts = resolveOptions(options, vocabSize);
    this.rng = rng ?? new SeededRng(options.seed);
    this.usesRepetition = this.opts.repetitionPenalty !== 1;
    this.usesOpenAiPenalties = this.opts.presencePenalty !== 0 || this.opts.frequencyPenalty !== 0;
  }

  /** Whether this sampler always takes the most likely token (no randomness). */
  get greedy(): boolean {
    return this.opts.temperature === 0 || this.opts.topK === 1;
  }

  sample(logits: Float32Array, promptTokens: readonly number[], generated: readonly number[]): SampledToken {
    const scratch = this.adjust(logits, promptTokens, generated);
    const tokenId = this.greedy ? argmax(scratch.adjusted, this.vocabSize) : this.draw(scratch);
    return this.withLogprobs(scratch.adjusted, tokenId);
  }

  /** The token `sample` would draw (the same RNG use), without logprobs. */
  pick(logits: Float32Array, promptTokens: readonly number[], generated: readonly number[]): number {
    const scratch = this.adjust(logits, promptTokens, generated);
    return this.greedy ? argmax(scratch.adjusted, this.vocabSize) : this.draw(scratch);
  }

  /**
   * `tokenId` as `sample` would report it had it drawn it from these logits: with its logprob and
   * the top alternatives when logprobs were requested. Draws nothing.
   */
  score(logits: Float32Array, promptTokens: readonly number[], generated: readonly number[], tokenId: number): SampledToken {
    return this.withLogprobs(this.adjust(logits, promptTokens, generated).adjusted, tokenId);
  }

  /**
   * Writes into `out` (length ≥ V) the distribution `sample` draws from at these logits — after
   * bias, penalties, temperature, top-k, top-p and min-p, normalised — and returns it. Greedy: all
   * mass on the argmax. Speculative sampling needs it whole for both the draft and the target.
   */
  distribution(logits: Float32Array, promptTokens: readonly number[], generated: readonly number[], out: Float32Array): Float32Array {
    const V = this.vocabSize;
    const scratch = this.adjust(logits, promptTokens, generated);
    out.fill(0, 0, V);
    const weighed = this.greedy ? null : this.weigh(scratch);
    if (!weighed) {
      out[argmax(scratch.adjusted, V)] = 1;
      return out;
    }
    const { weights, candidates } = scratch;
    const minP = this.opts.minP;
    const n = weighed.count < 0 ? V : weighed.count;
    let mass = 0;
    for (let c = 0; c < n; c++) {
      const id = weighed.count < 0 ? c : candidates[c];
      const w = weights[id];
      if (w === 0 || w < minP) continue;
      out[id] = w;
      mass += w;
    }
    for (let i = 0; i < V; i++) out[i] /= mass;
    return out;
  }

  /** A token drawn from `probs` (non-negative, summing to about 1) with this sampler's RNG. */
  drawFrom(probs: Float32Array): number {
    const V = this.vocabSize;
    let total = 0;
    for (let i = 0; i < V; i++) total += probs[i];
    let target = this.rng.next() * total;
    let last = -1;
    for (let i = 0; i < V; i++) {
      if (!(probs[i] > 0)) continue;
      last = i;
      target -= probs[i];
      if (target < 0) return i;
    }
    if (last < 0) throw new SamplingError("cannot draw from a distribution with no mass", "logits");
    return last; // rounding left a sliver of mass: the last token with mass takes it
  }

  /** A uniform draw in [0, 1) from this sampler's RNG (speculative sampling's accept test). */
  uniform(): number {
    return this.rng.next();
  }

  /** The logits after bias and penalties, in the shared scratch (valid until the next call). */
  private adjust(logits: Float32Array, promptTokens: readonly number[], generated: readonly number[]): Scratch {
    const V = this.vocabSize;
    if (logits.length < V) throw new SamplingError(`logits has ${logits.length} entries, the vocabulary ${V}`, "logits");
    const scratch = scratchFor(V);
    scratch.adjusted.set(logits.length === V ? logits : logits.subarray(0, V));
    this.applyBiasAndPenalties(scratch.adjusted, promptTokens, generated);
    return scratch;
  }

  private withLogprobs(adjusted: Float32Array, tokenId: number): SampledToken {
    const result: SampledToken = { tokenId };
    if (this.opts.logprobs !== undefined) {
      const V = this.vocabSize;
      const lse = logSumExp(adjusted, V);
      result.logprob = adjusted[tokenId] - lse;
      result.topLogprobs = topN(adjusted, V, this.opts.logprobs).map((id) => ({ tokenId: id, logprob: adjusted[id] - lse }));
    }
    return result;
  }

  private applyBiasAndPenalties(adjusted: Float32Array, promptTokens: readonly number[], generated: readonly number[]): void {
    const { biasIds, biasValues } = this.opts;
    for (let i = 0; i < biasIds.length; i++) adjusted[biasIds[i]] += biasValues[i];
    if (!this.usesRepetition && !this.usesOpenAiPenalties) return;
    this.updateCounts(promptTokens, generated);
    if (this.usesRepetition) {
      // HF / vLLM: shrink the logit's magnitude toward "less likely" whatever its sign.
      const p = this.opts.repetitionPenalty;
      for (const id of this.seen) {
        const l = adjusted[id];
        adjusted[id] = l > 0 ? l / p : l * p;
      }
    }
    if (this.usesOpenAiPenalties) {
      // OpenAI: l -= count · frequency_penalty + [count > 0] · presence_penalty.
      const { presencePenalty, frequencyPenalty } = this.opts;
      for (const [id, count] of this.counts) adjusted[id] -= count * frequencyPenalty + presencePenalty;
    }
  }

  private updateCounts(promptTokens: readonly number[], generated: readonly number[]): void {
    const V = this.vocabSize;
    if (this.countedPrompt !== promptTokens || generated.length < this.countedGenerated) {
      this.seen.clear();
      this.counts.clear();
      this.countedGenerated = 0;
      this.countedPrompt = promptTokens;
      for (const id of promptTokens) if (id >= 0 && id < V) this.seen.add(id);
    }
    for (let i = this.countedGenerated; i < generated.length; i++) {
      const id = generated[i];
      if (id < 0 || id >= V) continue;
      this.seen.add(id);
      this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    }
    this.countedGenerated = generated.length;
  }

  /**
   * Temperature → top-k → top-p over scratch.adjusted: fills scratch.weights (relative to the most
   * likely token, which has weight 1, so min-p is `w ≥ minP`) and returns the candidates —
   * scratch.candidates[0 … count), or the whole vocabulary when count is -1 — with the argmax and
   * the total weight. Null when every token is banned or NaN: there is nothing to weigh.
   */
  private weigh(scratch: Scratch): { best: number; count: number; total: number } | null {
    const V = this.vocabSize;
    const { adjusted, weights } = scratch;
    const { temperature, topK, topP } = this.opts;
    const best = argmax(adjusted, V);
    const max = adjusted[best];
    if (!(max > -Infinity)) return null;
    const invT = 1 / temperature;
    let total = 0;
    for (let i = 0; i < V; i++) {
      const w = Math.exp((adjusted[i] - max) * invT);
      const safe = w > 0 ? w : 0; // NaN logits never win
      weights[i] = safe;
      total += safe;
    }
    let count = -1;
    if (topK > 0 && topK < V) {
      count = selectTopK(weights, V, topK, scratch);
      if (topP < 1) count = nucleus(scratch, scratch.candidates, count, topP);
    } else if (topP < 1) {
      count = nucleus(scratch, null, V, topP);
    }
    return { best, count, total };
  }

  /** Temperature → top-k → top-p → min-p → a draw from what remains. */
  private draw(scratch: Scratch): number {
    const V = this.vocabSize;
    const weighed = this.weigh(scratch);
    if (!weighed) return argmax(scratch.adjusted, V);
    const { best, count, total } = weighed;
    const { weights, candidates } = scratch;
    const minP = this.opts.minP;

    if (count < 0) {
      // Whole vocabulary, optionally min-p filtered: an inverse-CDF walk in id order.
      let mass = total;
      if (minP > 0) {
        mass = 0;
        for (let i = 0; i < V; i++) if (weights[i] >= minP) mass += weights[i];
      }
      let target = this.rng.next() * mass;
      let last = best;
      for (let i = 0; i < V; i++) {
        const w = weights[i];
        if (w === 0 || w < minP) continue;
        last = i;
        target -= w;
        if (target < 0) return i;
      }
      return last; // rounding left a sliver of mass: the last eligible token takes it
    }

    let mass = 0;
    for (let c = 0; c < count; c++) {
      const w = weights[candidates[c]];
      if (w >= minP) mass += w;
    }
    let target = this.rng.next() * mass;
    let last = best;
    for (let c = 0; c < count; c++) {
      const id = candidates[c];
      const w = weights[id];
      if (w === 0 || w < minP) continue;
      last = id;
      target -= w;
      if (target < 0) return id;
    }
    return last;
  }
}

/** Index of the largest value; ties go to the lowest id. One pass. */
export function argmax(values: Float32Array, n: number): number {
  let best = 0;
  let bestValue = values[0];
  for (let i = 1; i < n; i++) {
    const v = values[i];
    // A NaN leader (bestValue !== bestValue) is replaced by the first real value after it.
    if (v > bestValue || (bestValue !== bestValue && v === v)) {
      best = i;
      bestValue = v;
    }
  }
  return best;
}

/** log Σ exp(values), stable. */
export function logSumExp(values: Float32Array, n: number): number {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (values[i] > max) max = values[i];
  if (max === -Infinity || !Number.isFinite(max)) return max;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(values[i] - max);
  return max + Math.log(sum);
}

/** Ids of the `k` largest values, largest first, ties by lower id; one pass with a tiny sorted list. */
export function topN(values: Float32Array, n: number, k: number): number[] {
  const ids: number[] = [];
  if (k <= 0) return ids;
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (ids.length === k && !(v > values[ids[k - 1]])) continue;
    let at = ids.length === k ? k - 1 : ids.length;
    while (at > 0 && v > values[ids[at - 1]]) at--;
    ids.splice(at, 0, i);
    if (ids.length > k) ids.pop();
  }
  return ids;
}

/**
 * Writes the ids of the `k` largest weights (ties by lower id) into scratch.candidates and returns
 * k. The k-th largest value comes from a quickselect on a copy, so the cost is O(V) on average.
 */
function selectTopK(weights: Float32Array, n: number, k: number, scratch: Scratch): number {
  const select = scratch.select;
  select.set(weights.subarray(0, n));
  const threshold = kthLargest(select, n, k);
  const out = scratch.candidates;
  let count = 0;
  for (let i = 0; i < n; i++) if (weights[i] > threshold) out[count++] = i;
  for (let i = 0; i < n && count < k; i++) if (weights[i] === threshold) out[count++] = i;
  return count;
}

/** The k-th largest of a[0 … n) (1-based k); reorders `a`. Hoare quickselect, median-of-three. */
function kthLargest(a: Float32Array, n: number, k: number): number {
  let lo = 0;
  let hi = n - 1;
  const target = k - 1; // position in descending order
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const pivot = median3(a[lo], a[mid], a[hi]);
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target];
  }
  return a[target];
}

function median3(x: number, y: number, z: number): number {
  if (x > y) [x, y] = [y, x];
  if (y > z) y = z;
  return x > y ? x : y;
}

/**
 * Top-p: writes into scratch.candidates the smallest set of the most likely tokens holding at
 * least `topP` of the mass of `ids[0 … count)` (the whole vocabulary when `ids` is null) and
 * returns its size (≥ 1). The set, not an order, is what sampling needs, so only the tokens in the
 * bucket where the cumulative mass crosses `topP` are sorted; buckets above it are taken whole.
 * `ids` may be scratch.candidates itself: it is compacted in place.
 */
function nucleus(scratch: Scratch, ids: Int32Array | null, count: number, topP: number): number {
  const { weights, weightBits: bits, candidates: out, boundary } = scratch;
  bucketMass.fill(0);
  let total = 0;
  for (let c = 0; c < count; c++) {
    const id = ids ? ids[c] : c;
    const w = weights[id];
    if (w > 0) {
      bucketMass[bits[id] >>> BUCKET_SHIFT] += w;
      total += w;
    }
  }
  const need = topP * total;
  let above = 0; // mass of the buckets taken whole
  let edge = 0; // the bucket the boundary falls in
  for (let b = BUCKET_COUNT - 1; b >= 0; b--) {
    if (above + bucketMass[b] >= need || b === 0) {
      edge = b;
      break;
    }
    above += bucketMass[b];
  }

  let kept = 0;
  let inEdge = 0;
  for (let c = 0; c < count; c++) {
    const id = ids ? ids[c] : c;
    if (!(weights[id] > 0)) continue;
    const key = bits[id] >>> BUCKET_SHIFT;
    if (key > edge) out[kept++] = id;
    else if (key === edge) boundary[inEdge++] = id;
  }
  boundary.subarray(0, inEdge).sort((a, b) => weights[b] - weights[a] || a - b);
  let cum = above;
  for (let c = 0; c < inEdge; c++) {
    out[kept++] = boundary[c];
    cum += weights[boundary[c]];
    if (cum >= need) break;
  }
  return kept;
}
