// Prometheus metrics. One registry per app instance (never the global default registry), so
// several apps can live in one process (tests).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export interface MetricsSources {
  running: () => number;
  waiting: () => number;
  kvBytesInUse: () => number;
  kvBytesCapacity: () => number;
  wsConnections: () => number;
  modelInfo: () => { model: string; device: string; nChains: number } | null;
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
const TPS_BUCKETS = [100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000];

export class Metrics {
  readonly registry = new Registry();
  readonly httpRequests: Counter<"route" | "method" | "status">;
  readonly ttft: Histogram<"chains">;
  readonly tpot: Histogram<"chains">;
  readonly e2e: Histogram<"chains">;
  readonly promptTokens: Counter<"chains">;
  readonly generationTokens: Counter<"chains">;
  readonly generations: Counter<"finish_reason">;
  readonly chainSwitches: Counter<"from" | "to">;
  readonly budgetMisses: Counter<"budget">;
  readonly prefillTps: Histogram;

  constructor(src: MetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.httpRequests = new Counter({
      name: "colm_http_requests_total",
      help: "HTTP requests by route, method and status",
      labelNames: ["route", "method", "status"],
      registers,
    });
    this.ttft = new Histogram({
      name: "colm_time_to_first_token_seconds",
      help: "Time from request arrival to the first generated token, by chain count of that token",
      labelNames: ["chains"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.tpot = new Histogram({
      name: "colm_time_per_output_token_seconds",
      help: "Mean time per output token after the first, per generation, by final chain count",
      labelNames: ["chains"],
      buckets: TPOT_BUCKETS,
      registers,
    });
    this.e2e = new Histogram({
      name: "colm_e2e_request_latency_seconds",
      help: "End-to-end generation latency (arrival to last token), by final chain count",
      labelNames: ["chains"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.promptTokens = new Counter({
      name: "colm_prompt_tokens_total",
      help: "Prompt tokens processed, by the chain count the generation started at",
      labelNames: ["chains"],
      registers,
    });
    this.generationTokens = new Counter({
      name: "colm_generation_tokens_total",
      help: "Generated tokens, by the chain count that produced each token",
      labelNames: ["chains"],
      registers,
    });
    this.generations = new Counter({
      name: "colm_generations_total",
      help: "Finished generations by finish reason (stop, length, cancelled, error)",
      labelNames: ["finish_reason"],
      registers,
    });
    this.chainSwitches = new Counter({
      name: "colm_chain_switches_total",
      help: "Chain-count switches inside a generation (LM switching), by from/to chain count",
      labelNames: ["from", "to"],
      registers,
    });
    this.budgetMisses = new Counter({
      name: "colm_latency_budget_misses_total",
      help: "Generations that missed a part of their latency_budget (ttft, tpot or total)",
      labelNames: ["budget"],
      registers,
    });
    this.prefillTps = new Histogram({
      name: "colm_prefill_tokens_per_second",
      help: "Prompt prefill throughput per generation (prompt tokens / prefill time)",
      buckets: TPS_BUCKETS,
      registers,
    });
    new Gauge({
      name: "colm_requests_running",
      help: "Generations running now",
      registers,
      collect() {
        this.set(src.running());
      },
    });
    new Gauge({
      name: "colm_requests_waiting",
      help: "Requests waiting for a generation slot",
      registers,
      collect() {
        this.set(src.waiting());
      },
    });
    new Gauge({
      name: "colm_kv_cache_bytes_in_use",
      help: "KV cache bytes held by live generations (engine.kvBytesInUse())",
      registers,
      collect() {
        this.set(src.kvBytesInUse());
      },
    });
    new Gauge({
      name: "colm_kv_cache_bytes_capacity",
      help: "KV cache bytes the admission limit allows (max running × max_position × KV bytes per token)",
      registers,
      collect() {
        this.set(src.kvBytesCapacity());
      },
    });
    new Gauge({
      name: "colm_ws_connections",
      help: "Open WebSocket connections on /v1/stream",
      registers,
      collect() {
        this.set(src.wsConnections());
      },
    });
    new Gauge({
      name: "colm_router_predicted_tpot_seconds",
      help: "Latency router's predicted time per output token by chain count, at the current batch size (batch=\"current\") and alone (batch=\"1\")",
      labelNames: ["chains", "batch"],
      registers,
      collect() {
        this.reset();
        const p = src.routerPredictions?.();
        for (const t of p?.tpot ?? []) {
          if (t.currentMs !== null) this.set({ chains: String(t.chains), batch: "current" }, t.currentMs / 1000);
          if (t.b1Ms !== null) this.set({ chains: String(t.chains), batch: "1" }, t.b1Ms / 1000);
        }
      },
    });
    new Gauge({
      name: "colm_router_prefill_seconds_per_token",
      help: "Latency router's predicted chain-1 prefill time per prompt token",
      registers,
      collect() {
        const v = src.routerPredictions?.()?.prefillMsPerToken;
        this.set(v === null || v === undefined ? 0 : v / 1000);
      },
    });
    new Gauge({
      name: "colm_model_info",
      help: "The loaded model (value 1)",
      labelNames: ["model", "device", "n_chains"],
      registers,
      collect() {
        this.reset();
        const m = src.modelInfo();
        if (m) this.set({ model: m.model, device: m.device, n_chains: String(m.nChains) }, 1);
      },
    });
  }
}
