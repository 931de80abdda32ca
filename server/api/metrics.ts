// Prometheus metrics. One registry per app instance (never the global default registry), so
// several apps can live in one process (tests). The whole exposition passes `promtool check
// metrics` (test/promtool.test.ts). The Gateway API Inference Extension's endpoint picker reads
// three gauges from it (deploy/README.md): colm_requests_waiting (queued), colm_requests_running
// and colm_kv_cache_usage_ratio.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { PrefixCacheStats, StepStats } from "../engine/types.ts";

export interface MetricsSources {
  running: () => number;
  waiting: () => number;
  kvBytesInUse: () => number;
  kvBytesCapacity: () => number;
  wsConnections: () => number;
  modelInfo: () => { model: string; device: string; nChains: number; precision: string } | null;
  /** The engine's prefix cache (null: none, or no engine yet). */
  prefixCache?: () => PrefixCacheStats | null;
  /** The draft policy's learnt acceptance per (draft count, count) pair seen. */
  speculation?: () => Array<{ draftChains: number; chains: number; sampling: string; acceptance: number }>;
  /** What the latency router's cost model predicts (absent: no router gauges are filled). */
  routerPredictions?: () => RouterPredictions | null;
}

export interface RouterPredictions {
  /** Per chain count: predicted decode step (= time per output token) at the current batch and at B = 1, ms. */
  tpot: Array<{ chains: number; currentMs: number | null; b1Ms: number | null }>;
  prefillMsPerToken: number | null;
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28];
/**
 * prom-client's default metrics include three gauges named like counters (`nodejs_active_handles_total`,
 * `…_requests_total`, `…_resources_total`), which promtool rejects ("non-counter metrics should not
 * have _total suffix"). Each is the sum of the by-type gauge of the same name without `_total`, which
 * stays, so nothing is lost by dropping them.
 */
const MISNAMED_DEFAULT_GAUGES = ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"];

const TPS_BUCKETS = [100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000];

/** In-use over capacity, clamped to [0, 1]; 0 when there is no capacity (no model yet). */
export function kvUsageRatio(inUse: number, capacity: number): number {
  if (!(capacity > 0)) return 0;
  return Math.min(1, Math.max(0, inUse / capacity));
}

export class Metrics {
  readonly registry = new Registry();
  readonly httpRequests = this.counter("colm_http_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"]);
  readonly ttft = this.histogram("colm_time_to_first_token_seconds", "Time from request arrival to the first generated token, by chain count of that token", ["chains"], LATENCY_BUCKETS);
  readonly tpot = this.histogram("colm_time_per_output_token_seconds", "Mean time per output token after the first, per generation, by final chain count", ["chains"], TPOT_BUCKETS);
  readonly e2e = this.histogram("colm_e2e_request_latency_seconds", "End-to-end generation latency (arrival to last token), by final chain count", ["chains"], LATENCY_BUCKETS);
  readonly promptTokens = this.counter("colm_prompt_tokens_total", "Prompt tokens processed, by the chain count the generation started at", ["chains"]);
  readonly generationTokens = this.counter("colm_generation_tokens_total", "Generated tokens, by the chain count that produced each token", ["chains"]);
  readonly generations = this.counter("colm_generations_total", "Finished generations by finish reason (stop, length, cancelled, error)", ["finish_reason"]);
  readonly chainSwitches = this.counter("colm_chain_switches_total", "Chain-count switches inside a generation (LM switching), by from/to chain count", ["from", "to"]);
  readonly budgetMisses = this.counter("colm_latency_budget_misses_total", "Generations that missed a part of their latency_budget (ttft, tpot or total)", ["budget"]);
  readonly specDraftTokens = this.counter("colm_spec_decode_draft_tokens_total", "Draft tokens proposed by speculative decoding, by draft chain count and verifying chain count", ["draft_chains", "chains"]);
  readonly specAcceptedTokens = this.counter("colm_spec_decode_accepted_tokens_total", "Draft tokens accepted by the verifying chain count", ["draft_chains", "chains"]);
  readonly prefillTps = this.histogram("colm_prefill_tokens_per_second", "Prompt prefill throughput per generation (prompt tokens / prefill time)", [], TPS_BUCKETS);

  constructor(src: MetricsSources) {
    collectDefaultMetrics({ register: this.registry });
    for (const name of MISNAMED_DEFAULT_GAUGES) this.registry.removeSingleMetric(name);
    this.gauge("colm_requests_running", "Generations running now", src.running);
    this.gauge("colm_requests_waiting", "Requests waiting for a generation slot", src.waiting);
    this.gauge("colm_kv_cache_bytes_in_use", "KV cache bytes held by live generations (engine.kvBytesInUse())", src.kvBytesInUse);
    this.gauge("colm_kv_cache_bytes_capacity", "KV cache bytes the admission limit allows (max running × max_position × KV bytes per token)", src.kvBytesCapacity);
    this.gauge(
      "colm_kv_cache_usage_ratio",
      "Fraction (0..1) of the KV cache capacity held by live generations: colm_kv_cache_bytes_in_use / colm_kv_cache_bytes_capacity (0 while no model is loaded)",
      () => kvUsageRatio(src.kvBytesInUse(), src.kvBytesCapacity()),
    );
    this.gauge("colm_ws_connections", "Open WebSocket connections on /v1/stream", src.wsConnections);
    const cache = () => src.prefixCache?.() ?? null;
    this.gauge("colm_prefix_cache_bytes", "Bytes of keys/values the prefix cache holds (chain 1's, shared by every chain count)", () => cache()?.bytes ?? 0);
    this.gauge("colm_prefix_cache_blocks", "Blocks the prefix cache holds", () => cache()?.blocks ?? 0);
    this.engineCounter("colm_prefix_cache_query_tokens_total", "Prompt tokens of generations that looked the prefix cache up", () => cache()?.queryTokens);
    this.engineCounter("colm_prefix_cache_hit_tokens_total", "Prompt tokens served from the prefix cache (copied, not prefilled)", () => cache()?.hitTokens);
    this.engineCounter("colm_prefix_cache_evictions_total", "Prefix-cache blocks evicted (least recently used, or for admission)", () => cache()?.evictedBlocks);
    this.gauge("colm_router_prefill_seconds_per_token", "Latency router's predicted chain-1 prefill time per prompt token", () => (src.routerPredictions?.()?.prefillMsPerToken ?? 0) / 1000);
    this.labelledGauge(
      "colm_router_predicted_tpot_seconds",
      'Latency router\'s predicted time per output token by chain count, at the current batch size (batch="current") and alone (batch="1")',
      ["chains", "batch"],
      (set) => {
        for (const t of src.routerPredictions?.()?.tpot ?? []) {
          if (t.currentMs !== null) set({ chains: String(t.chains), batch: "current" }, t.currentMs / 1000);
          if (t.b1Ms !== null) set({ chains: String(t.chains), batch: "1" }, t.b1Ms / 1000);
        }
      },
    );
    this.labelledGauge("colm_model_info", "The loaded model (value 1)", ["model", "device", "n_chains", "precision"], (set) => {
      const m = src.modelInfo();
      if (m) set({ model: m.model, device: m.device, n_chains: String(m.nChains), precision: m.precision }, 1);
    });
    this.labelledGauge("colm_spec_decode_acceptance_rate", "Speculative decoding: learnt probability that a draft of draft_chains is accepted by chains, for greedy and for sampled generations", ["draft_chains", "chains", "sampling"], (set) => {
      for (const p of src.speculation?.() ?? []) set({ draft_chains: String(p.draftChains), chains: String(p.chains), sampling: p.sampling }, p.acceptance);
    });
  }

  /** Counts what one model call did (wired to engine.onStep): speculative drafts and acceptances. */
  observeStep(step: StepStats): void {
    const spec = step.speculation;
    if (!spec) return;
    const labels = { draft_chains: String(spec.draftChains), chains: String(step.chains) };
    this.specDraftTokens.inc(labels, spec.drafted);
    this.specAcceptedTokens.inc(labels, spec.accepted);
  }

  private counter<L extends string>(name: string, help: string, labelNames: L[]): Counter<L> {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  private histogram<L extends string>(name: string, help: string, labelNames: L[], buckets: number[]): Histogram<L> {
    return new Histogram({ name, help, labelNames, buckets, registers: [this.registry] });
  }

  /**
   * A counter that follows a running total kept elsewhere (the engine's): each scrape adds what
   * the total grew by since the last one.
   */
  private engineCounter(name: string, help: string, total: () => number | undefined): void {
    let seen = 0;
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        const now = total() ?? seen;
        if (now > seen) this.inc(now - seen);
        seen = now;
      },
    });
  }

  /** A gauge read from `value` at every scrape. */
  private gauge(name: string, help: string, value: () => number): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.set(value());
      },
    });
  }

  /** A gauge whose labelled values are all set afresh at every scrape (stale label sets vanish). */
  private labelledGauge<L extends string>(name: string, help: string, labelNames: L[], fill: (set: (labels: Record<L, string>, v: number) => void) => void): void {
    new Gauge({
      name,
      help,
      labelNames,
      registers: [this.registry],
      collect() {
        this.reset();
        fill((labels, v) => this.set(labels, v));
      },
    });
  }
}
