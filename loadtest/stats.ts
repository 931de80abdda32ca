// Per-request records → run summary: percentiles of TTFT/TPOT/ITL/e2e, throughput, goodput,
// mean chain count served, errors by status/code; plus the human-readable table.
import type { LatencyBudget } from "./arrivals.ts";

/** What one request did. Times are milliseconds; `startMs` is relative to the run start. */
export interface RequestRecord {
  id: number;
  /** Mix class label. */
  cls: string;
  startMs: number;
  promptTokens: number;
  maxTokens: number;
  budget?: LatencyBudget;
  ok: boolean;
  /** HTTP status (or "ws", "network", "cut", "stream") and error code when !ok. */
  error?: { status: string; code: string; message: string };
  /** Time to the first token, if one came. */
  ttftMs?: number;
  e2eMs: number;
  /** Gaps between consecutive token arrivals. */
  itlMs: number[];
  /** (e2e - ttft) / (n - 1), for n >= 2 tokens. */
  tpotMs?: number;
  /** Token events received. */
  tokens: number;
  /** Chain count of each token, as reported by the server. */
  chains: number[];
  usage?: { prompt_tokens: number; completion_tokens: number };
  finishReason?: string;
  /** Whether the request succeeded within its latency budget (true for successes without one). */
  budgetMet: boolean;
}

/** Whether a successful request met `budget`. TPOT is only judged when it is defined (n >= 2). */
export function meetsBudget(r: Pick<RequestRecord, "ok" | "ttftMs" | "tpotMs" | "e2eMs">, budget?: LatencyBudget): boolean {
  if (!r.ok) return false;
  if (!budget) return true;
  if (budget.ttft_ms !== undefined && (r.ttftMs === undefined || r.ttftMs > budget.ttft_ms)) return false;
  if (budget.tpot_ms !== undefined && r.tpotMs !== undefined && r.tpotMs > budget.tpot_ms) return false;
  if (budget.total_ms !== undefined && r.e2eMs > budget.total_ms) return false;
  return true;
}

/** Percentile `p` in [0, 100] by linear interpolation between closest ranks; NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  if (sorted.length === 1) return sorted[0];
  const pos = (Math.min(100, Math.max(0, p)) / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export interface Dist {
  n: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export function describe(values: readonly number[]): Dist {
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  return {
    n,
    mean: n ? s.reduce((a, b) => a + b, 0) / n : NaN,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: n ? s[n - 1] : NaN,
  };
}

export interface ClassSummary {
  requests: number;
  ok: number;
  goodput: number;
  meanChains: number;
  ttftMs: Dist;
  tpotMs: Dist;
}

export interface Summary {
  requests: number;
  ok: number;
  errors: number;
  /** Keyed "status:code", e.g. "429:rate_limited". */
  errorCounts: Record<string, number>;
  wallS: number;
  requestThroughput: number;
  /** Completion tokens received per second of wall time. */
  tokenThroughput: number;
  outputTokens: number;
  promptTokens: number;
  /** Share of requests meeting their budget (successes without one count as met). */
  goodput: number;
  /** Mean chain count over every token received. */
  meanChains: number;
  chainHistogram: Record<string, number>;
  ttftMs: Dist;
  tpotMs: Dist;
  itlMs: Dist;
  e2eMs: Dist;
  byClass: Record<string, ClassSummary>;
}

function meanChains(rs: readonly RequestRecord[]): number {
  let sum = 0;
  let n = 0;
  for (const r of rs) for (const k of r.chains) (sum += k), n++;
  return n ? sum / n : NaN;
}

export function summarize(records: readonly RequestRecord[], wallS: number): Summary {
  const ok = records.filter((r) => r.ok);
  const errorCounts: Record<string, number> = {};
  for (const r of records) {
    if (r.ok) continue;
    const key = `${r.error?.status ?? "?"}:${r.error?.code ?? "?"}`;
    errorCounts[key] = (errorCounts[key] ?? 0) + 1;
  }
  const chainHistogram: Record<string, number> = {};
  for (const r of records) for (const k of r.chains) chainHistogram[k] = (chainHistogram[k] ?? 0) + 1;
  const outputTokens = records.reduce((a, r) => a + r.tokens, 0);
  const byClass: Record<string, ClassSummary> = {};
  for (const label of [...new Set(records.map((r) => r.cls))].sort()) {
    const rs = records.filter((r) => r.cls === label);
    const rok = rs.filter((r) => r.ok);
    byClass[label] = {
      requests: rs.length,
      ok: rok.length,
      goodput: rs.length ? rs.filter((r) => r.budgetMet).length / rs.length : NaN,
      meanChains: meanChains(rs),
      ttftMs: describe(rok.flatMap((r) => (r.ttftMs !== undefined ? [r.ttftMs] : []))),
      tpotMs: describe(rok.flatMap((r) => (r.tpotMs !== undefined ? [r.tpotMs] : []))),
    };
  }
  return {
    requests: records.length,
    ok: ok.length,
    errors: records.length - ok.length,
    errorCounts,
    wallS,
    requestThroughput: wallS > 0 ? ok.length / wallS : NaN,
    tokenThroughput: wallS > 0 ? outputTokens / wallS : NaN,
    outputTokens,
    promptTokens: records.reduce((a, r) => a + r.promptTokens, 0),
    goodput: records.length ? records.filter((r) => r.budgetMet).length / records.length : NaN,
    meanChains: meanChains(records),
    chainHistogram,
    ttftMs: describe(ok.flatMap((r) => (r.ttftMs !== undefined ? [r.ttftMs] : []))),
    tpotMs: describe(ok.flatMap((r) => (r.tpotMs !== undefined ? [r.tpotMs] : []))),
    itlMs: describe(ok.flatMap((r) => r.itlMs)),
    e2eMs: describe(ok.map((r) => r.e2eMs)),
    byClass,
  };
}

function fmt(x: number, digits = 1): string {
  return Number.isFinite(x) ? x.toFixed(digits) : "-";
}

/** The end-of-run table. */
export function formatSummary(s: Summary): string {
  const lines: string[] = [];
  lines.push(
    `requests ${s.requests}  ok ${s.ok}  errors ${s.errors}  wall ${fmt(s.wallS, 2)} s  ` +
      `throughput ${fmt(s.requestThroughput, 2)} req/s, ${fmt(s.tokenThroughput, 1)} tok/s  ` +
      `goodput ${fmt(s.goodput * 100, 1)}%  mean chains ${fmt(s.meanChains, 2)}`,
  );
  lines.push("");
  lines.push(["metric (ms)", "n", "mean", "p50", "p90", "p99", "max"].map((h, i) => (i === 0 ? h.padEnd(12) : h.padStart(9))).join(""));
  for (const [name, d] of [["TTFT", s.ttftMs], ["TPOT", s.tpotMs], ["ITL", s.itlMs], ["e2e", s.e2eMs]] as const) {
    lines.push(name.padEnd(12) + [String(d.n), fmt(d.mean), fmt(d.p50), fmt(d.p90), fmt(d.p99), fmt(d.max)].map((v) => v.padStart(9)).join(""));
  }
  const classes = Object.entries(s.byClass);
  if (classes.length > 1 || (classes.length === 1 && classes[0][0] !== "default")) {
    lines.push("");
    lines.push(["class", "n", "ok", "goodput", "chains", "ttft p50", "tpot p50"].map((h, i) => (i === 0 ? h.padEnd(24) : h.padStart(10))).join(""));
    for (const [label, c] of classes) {
      lines.push(
        label.padEnd(24) +
          [String(c.requests), String(c.ok), `${fmt(c.goodput * 100, 1)}%`, fmt(c.meanChains, 2), fmt(c.ttftMs.p50), fmt(c.tpotMs.p50)].map((v) => v.padStart(10)).join(""),
      );
    }
  }
  const hist = Object.entries(s.chainHistogram);
  if (hist.length) lines.push("", "tokens by chain count: " + hist.map(([k, n]) => `k=${k}: ${n}`).join("  "));
  const errs = Object.entries(s.errorCounts);
  if (errs.length) lines.push("", "errors: " + errs.map(([k, n]) => `${k} ×${n}`).join("  "));
  return lines.join("\n");
}
