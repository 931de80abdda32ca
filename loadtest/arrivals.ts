// Arrival schedules and the distributions the load generator draws from: open-loop Poisson
// arrival times, integer length distributions ("128" or "64:512"), the request-class mix
// ("budget:tpot_ms=50:0.5,chains=1:0.25,…") and prompt builders (synthetic ASCII, token ids,
// or random slices of a text file). Every draw goes through one seeded Rng so a run's choices
// are reproducible from --seed.
import type { Rng } from "../kernels/rng.ts";

/** An integer distribution: a fixed value or uniform over [min, max] (inclusive). */
export interface IntDist {
  min: number;
  max: number;
}

/** Parse "128" (fixed) or "64:512" (uniform, inclusive). Throws with `name` in the message. */
export function parseIntDist(text: string, name: string): IntDist {
  const m = /^\s*(\d+)\s*(?::\s*(\d+)\s*)?$/.exec(text);
  if (!m) throw new Error(`--${name}: expected N or MIN:MAX (positive integers), got ${JSON.stringify(text)}`);
  const min = Number(m[1]);
  const max = m[2] !== undefined ? Number(m[2]) : min;
  if (!(min >= 1) || max < min) throw new Error(`--${name}: need 1 <= MIN <= MAX, got ${JSON.stringify(text)}`);
  return { min, max };
}

export function sampleInt(d: IntDist, rng: Rng): number {
  if (d.max === d.min) return d.min;
  return d.min + Math.min(d.max - d.min, Math.floor(rng.next() * (d.max - d.min + 1)));
}

/** Exponential variate with the given rate (mean 1/rate): the gap between Poisson arrivals. */
export function exponential(rate: number, rng: Rng): number {
  if (!(rate > 0)) throw new RangeError(`rate must be positive, got ${rate}`);
  // 1 - next() is in (0, 1], so the log is finite.
  return -Math.log(1 - rng.next()) / rate;
}

/**
 * Open-loop Poisson arrival offsets in seconds from the start: gaps are exponential with mean
 * 1/rate. Stops after `maxRequests` arrivals or past `durationS`, whichever comes first.
 */
export function poissonArrivals(rate: number, rng: Rng, maxRequests: number, durationS: number): number[] {
  const out: number[] = [];
  let t = 0;
  while (out.length < maxRequests) {
    t += exponential(rate, rng);
    if (t > durationS) break;
    out.push(t);
  }
  return out;
}

/** Latency budget as sent in the request's `latency_budget` extension field. */
export interface LatencyBudget {
  ttft_ms?: number;
  tpot_ms?: number;
  total_ms?: number;
}

/** One request class in the mix. */
export interface MixClass {
  /** Label used in the records and the summary, e.g. "budget:tpot_ms=50" or "chains=4". */
  label: string;
  weight: number;
  budget?: LatencyBudget;
  /** Fixed size via the `chains` extension field. */
  chains?: number;
  /** Fixed size via the model name "<name>:c<k>". */
  modelChains?: number;
}

const BUDGET_KEYS = new Set(["ttft_ms", "tpot_ms", "total_ms"]);

/**
 * Parse a mix: comma-separated classes, each `SPEC[:WEIGHT]` where SPEC is
 *   budget:KEY=MS[+KEY=MS…]   (KEY: ttft_ms, tpot_ms, total_ms)
 *   chains=K                  (request field `chains`)
 *   model=cK                  (model "<name>:cK")
 *   default                   (no budget, server's default size)
 * WEIGHT defaults to 1; weights need not sum to 1.
 */
export function parseMix(text: string): MixClass[] {
  const classes: MixClass[] = [];
  for (const rawPart of text.split(",")) {
    const part = rawPart.trim();
    if (part === "") continue;
    let spec = part;
    let weight = 1;
    const wm = /^(.*):(\d+(?:\.\d+)?|\.\d+)$/.exec(part);
    // "budget:tpot_ms=50" ends in "=50", not ":50", so the weight regex does not catch it.
    if (wm) {
      spec = wm[1];
      weight = Number(wm[2]);
    }
    if (!(weight > 0) || !Number.isFinite(weight)) throw new Error(`--mix: weight must be positive in ${JSON.stringify(part)}`);
    const label = spec;
    if (spec === "default") {
      classes.push({ label, weight });
    } else if (spec.startsWith("budget:")) {
      const budget: LatencyBudget = {};
      for (const kv of spec.slice("budget:".length).split("+")) {
        const m = /^(\w+)=(\d+(?:\.\d+)?)$/.exec(kv.trim());
        if (!m || !BUDGET_KEYS.has(m[1]) || !(Number(m[2]) > 0)) {
          throw new Error(`--mix: bad budget ${JSON.stringify(kv)} in ${JSON.stringify(part)} (want ttft_ms=, tpot_ms= or total_ms= a positive number)`);
        }
        budget[m[1] as keyof LatencyBudget] = Number(m[2]);
      }
      classes.push({ label, weight, budget });
    } else if (/^chains=\d+$/.test(spec)) {
      const k = Number(spec.slice("chains=".length));
      if (k < 1) throw new Error(`--mix: chains must be >= 1 in ${JSON.stringify(part)}`);
      classes.push({ label, weight, chains: k });
    } else if (/^model=c\d+$/.test(spec)) {
      const k = Number(spec.slice("model=c".length));
      if (k < 1) throw new Error(`--mix: model=cK needs K >= 1 in ${JSON.stringify(part)}`);
      classes.push({ label, weight, modelChains: k });
    } else {
      throw new Error(`--mix: unknown class ${JSON.stringify(spec)} (want budget:KEY=MS[+…], chains=K, model=cK or default)`);
    }
  }
  if (classes.length === 0) throw new Error("--mix: no classes given");
  return classes;
}

/** Pick a class with probability proportional to its weight. */
export function pickClass(classes: readonly MixClass[], rng: Rng): MixClass {
  const total = classes.reduce((a, c) => a + c.weight, 0);
  let x = rng.next() * total;
  for (const c of classes) {
    x -= c.weight;
    if (x < 0) return c;
  }
  return classes[classes.length - 1];
}

const WORDS = "the of and to in that he shall unto for his a lord they be is him not them it with all thou thy".split(" ");

/** A synthetic ASCII prompt of exactly `n` characters (n tokens under a byte-level tokenizer). */
export function syntheticText(n: number, rng: Rng): string {
  let s = "";
  while (s.length < n) s += WORDS[Math.floor(rng.next() * WORDS.length)] + " ";
  return s.slice(0, n);
}

/** `n` token ids drawn uniformly from [low, high). */
export function syntheticIds(n: number, rng: Rng, low: number, high: number): number[] {
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = low + Math.floor(rng.next() * (high - low));
  return out;
}

/** A random slice of `n` characters of `corpus` (the whole corpus, repeated, if it is shorter). */
export function sliceText(corpus: string, n: number, rng: Rng): string {
  if (corpus.length === 0) throw new Error("prompt file is empty");
  if (corpus.length <= n) {
    let s = corpus;
    while (s.length < n) s += " " + corpus;
    return s.slice(0, n);
  }
  const start = Math.floor(rng.next() * (corpus.length - n + 1));
  return corpus.slice(start, start + n);
}
