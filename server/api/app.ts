// The express app factory, used by server/main.ts and by the tests.
import { timingSafeEqual } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import express, { type Express, type NextFunction, type Request, type Response } from "express";
import { Admission } from "../policy/admission.ts";
import { chatRoute } from "./chat.ts";
import { completionsRoute } from "./completions.ts";
import { CostModel, warmUp, type StepObservation } from "../policy/cost-model.ts";
import { LatencyRouter, type HysteresisConfig, type LoadSnapshot } from "../policy/latency-router.ts";
import { InFlight, requireEngine, type ServerContext } from "./context.ts";
import type { Engine, ModelInfo } from "../engine/types.ts";
import { ApiError, errorMiddleware, invalidApiKey, methodNotAllowed, modelNotFound, routeNotFound, sendError, serviceUnavailable } from "./errors.ts";
import { Metrics } from "./metrics.ts";
import { modelId } from "./router.ts";
import { StreamServer, WS_PATH } from "./ws.ts";

export interface AppOptions {
  /** When set, every /v1/* request (and the WebSocket) needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Concurrent generations (default 8) and requests allowed to wait for one (default 32). */
  maxRunning?: number;
  /** KV cache bytes the running generations may reserve (COLM_KV_BYTES); default unlimited. */
  kvBudgetBytes?: number;
  maxWaiting?: number;
  retryAfterSeconds?: number;
  /** Largest accepted JSON body (default "1mb"). */
  bodyLimit?: string | number;
  ws?: Partial<{ pingIntervalMs: number; maxBufferedBytes: number; stallTimeoutMs: number; maxPayloadBytes: number }>;
  log?: (line: string) => void;
  router?: RouterOptions;
}

export interface RouterOptions {
  /**
   * Run the start-up warm-up (a few prefill and decode steps per chain count, in the background).
   * Default: true when the engine arrives through setEngine (server start-up); false for an
   * engine handed to createApp (embedding, tests: the cost model then learns from the first
   * requests; call calibrate() to warm up explicitly).
   */
  calibrate?: boolean;
  hysteresis?: Partial<HysteresisConfig>;
  /** Switch a budgeted generation's size while it generates (default true; false: routing only). */
  switching?: boolean;
  /** EWMA weight of a new step in the cost model (default 0.1). */
  alpha?: number;
  /** Clock in ms for budgets (default performance.now). */
  now?: () => number;
  /** A cost model to start from (tests inject known costs); default: a fresh one. */
  costModel?: CostModel;
}

/** What ColmEngine offers beyond the Engine interface that the router uses when present. */
interface SteppingEngine {
  onStep(listener: (s: StepObservation) => void): void;
  readonly load: { running: number; waiting: number };
}

export interface ColmApp {
  readonly app: Express;
  readonly metrics: Metrics;
  readonly admission: Admission;
  readonly stream: StreamServer;
  readonly inflight: InFlight;
  readonly engine: Engine | null;
  readonly draining: boolean;
  /** The latency router (cost model + load), once an engine is set. */
  readonly router: LatencyRouter | null;
  /** Warm the cost model up through the engine now (see RouterOptions.calibrate). */
  calibrate(): Promise<void>;
  /** Set the engine once it has loaded (until then /health and /v1/* answer 503). */
  setEngine(engine: Engine): void;
  /** Serve WebSocket upgrades of an http.Server (done by listen()). */
  attach(server: http.Server): void;
  /** Create an http.Server for the app (with WebSocket), listen, resolve when listening. */
  listen(port?: number, host?: string): Promise<http.Server>;
  /** Graceful shutdown: refuse new requests (503), let running ones finish for up to
   * `deadlineMs`, then cancel the rest (they end with finish_reason "cancelled"). */
  drain(deadlineMs: number): Promise<void>;
  /** Close WebSockets and the servers created by listen() (not the engine). */
  close(): Promise<void>;
}

const KNOWN_ROUTES: Record<string, string> = {
  "/health": "GET",
  "/metrics": "GET",
  "/v1/models": "GET",
  "/v1/router": "GET",
  "/v1/completions": "POST",
  "/v1/chat/completions": "POST",
  [WS_PATH]: "GET",
};

function routeLabel(path: string): string {
  if (path in KNOWN_ROUTES) return path;
  if (path.startsWith("/v1/models/")) return "/v1/models/:id";
  return "unmatched";
}

function keyMatches(header: string | undefined, key: string): boolean {
  if (!header) return false;
  const m = /^Bearer\s+(.+)$/i.exec(header.trim());
  if (!m) return false;
  const a = Buffer.from(m[1]);
  const b = Buffer.from(key);
  return a.length === b.length && timingSafeEqual(a, b);
}

function modelEntries(info: ModelInfo, created: number) {
  const n = info.nChains;
  const entry = (id: string, k: number, elastic: boolean) => ({
    id,
    object: "model",
    created,
    owned_by: "colm-serve",
    chains: k,
    width: info.widths[k - 1],
    params: info.paramCounts[k - 1],
    max_position: info.maxPosition,
    elastic,
    ...(elastic ? { chain_options: Array.from({ length: n }, (_, i) => i + 1) } : {}),
  });
  return [entry(info.name, n, true), ...Array.from({ length: n }, (_, i) => entry(modelId(info, i + 1), i + 1, false))];
}

export function createApp(initialEngine: Engine | null, options: AppOptions = {}): ColmApp {
  const log = options.log ?? ((line: string) => console.log(line));
  let engine: Engine | null = initialEngine;
  let draining = false;
  const created = Math.floor(Date.now() / 1000);
  const admission = new Admission({
    maxRunning: options.maxRunning ?? 8,
    maxWaiting: options.maxWaiting ?? 32,
    retryAfterSeconds: options.retryAfterSeconds ?? 1,
    kvBudgetBytes: options.kvBudgetBytes,
  });
  const inflight = new InFlight();
  let stream: StreamServer | undefined;
  let router: LatencyRouter | null = null;

  /** A router learning from `e`'s steps; load = the engine's batch and queue (plus admission's). */
  const makeRouter = (e: Engine): LatencyRouter => {
    const model = options.router?.costModel ?? new CostModel({ nChains: e.info.nChains, alpha: options.router?.alpha });
    const parts = e as Engine & Partial<SteppingEngine>;
    if (typeof parts.onStep === "function") parts.onStep((step) => model.observe(step));
    const load = (): LoadSnapshot => {
      const l = typeof parts.onStep === "function" ? parts.load : undefined;
      // Capacity: the admission limit on running generations (each holds one row of the batch).
      const capacity = admission.maxRunning;
      return l ? { running: l.running, queued: l.waiting + admission.waiting, capacity } : { running: admission.running, queued: admission.waiting, capacity };
    };
    return new LatencyRouter({ model, load, now: options.router?.now, hysteresis: options.router?.hysteresis, switching: options.router?.switching });
  };
  const calibrate = async (e: Engine, r: LatencyRouter): Promise<void> => {
    const t0 = performance.now();
    await warmUp(e);
    r.calibrated = true;
    log(`router: calibrated in ${(performance.now() - t0).toFixed(0)} ms`);
  };
  if (initialEngine) {
    const r = (router = makeRouter(initialEngine));
    if (options.router?.calibrate === true) void calibrate(initialEngine, r).catch((err) => log(`router: warm-up failed: ${(err as Error)?.message ?? String(err)}`));
  }
  const metrics = new Metrics({
    running: () => admission.running,
    waiting: () => admission.waiting,
    kvBytesInUse: () => engine?.kvBytesInUse() ?? 0,
    kvBytesCapacity: () =>
      engine ? Math.min(admission.kvBudgetBytes, admission.maxRunning * engine.info.maxPosition * engine.info.kvBytesPerToken) : 0,
    wsConnections: () => stream?.connections ?? 0,
    modelInfo: () => (engine ? { model: engine.info.name, device: engine.info.device, nChains: engine.info.nChains } : null),
    routerPredictions: () => {
      if (!router || !engine) return null;
      const v = router.view();
      return { tpot: v.chains.map((c) => ({ chains: c.chains, currentMs: c.tpot_ms, b1Ms: c.tpot_ms_b1 })), prefillMsPerToken: v.prefill_ms_per_token };
    },
  });
  // The handlers find the router through routerOf(ctx) (server/latency-router.ts).
  const ctx: ServerContext & { readonly router: LatencyRouter | undefined } = {
    get router() {
      return router ?? undefined;
    },
    engine: () => requireEngine(engine),
    metrics,
    admission,
    inflight,
    isDraining: () => draining,
    log,
  };
  const apiKey = options.apiKey || undefined;
  stream = new StreamServer(
    ctx,
    {
      pingIntervalMs: options.ws?.pingIntervalMs ?? 30_000,
      maxBufferedBytes: options.ws?.maxBufferedBytes ?? 1 << 20,
      stallTimeoutMs: options.ws?.stallTimeoutMs ?? 30_000,
      maxPayloadBytes: options.ws?.maxPayloadBytes ?? 1 << 20,
    },
    (req) => !apiKey || keyMatches(req.headers.authorization, apiKey) || new URL(req.url ?? "/", "http://x").searchParams.get("api_key") === apiKey,
    (status) => metrics.httpRequests.inc({ route: WS_PATH, method: "GET", status: String(status) }),
  );

  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);

  // Count every request by route and status when it ends.
  app.use((req: Request, res: Response, next: NextFunction) => {
    let counted = false;
    const count = () => {
      if (counted) return;
      counted = true;
      metrics.httpRequests.inc({ route: routeLabel(req.path), method: req.method, status: String(res.statusCode) });
    };
    res.on("finish", count);
    res.on("close", count);
    next();
  });

  app.get("/health", (_req, res) => {
    if (draining) return void res.status(503).json({ status: "draining" });
    if (!engine) return void res.status(503).json({ status: "loading" });
    res.json({ status: "ok", model: engine.info.name, chains: engine.info.nChains, device: engine.info.device });
  });

  app.get("/metrics", async (_req, res, next) => {
    try {
      const text = await metrics.registry.metrics();
      res.set("Content-Type", metrics.registry.contentType).send(text);
    } catch (err) {
      next(err);
    }
  });

  // /v1/*: draining → 503, API key → 401, loading → 503.
  app.use("/v1", (req: Request, res: Response, next: NextFunction) => {
    if (draining) return sendError(res, serviceUnavailable("draining"));
    if (apiKey && !keyMatches(req.headers.authorization, apiKey)) return sendError(res, invalidApiKey());
    if (!engine) return sendError(res, serviceUnavailable("loading"));
    next();
  });

  app.get("/v1/models", (_req, res) => {
    res.json({ object: "list", data: modelEntries(requireEngine(engine).info, created) });
  });
  app.get("/v1/models/:id", (req, res) => {
    const entry = modelEntries(requireEngine(engine).info, created).find((m) => m.id === req.params.id);
    if (!entry) return sendError(res, modelNotFound(String(req.params.id)));
    res.json(entry);
  });

  // What the latency router believes: per-k predicted time per output token, prefill cost, load.
  app.get("/v1/router", (_req, res) => {
    requireEngine(engine);
    res.json(router!.view());
  });

  // Every body is parsed as JSON whatever its Content-Type (curl -d sends form encoding).
  const json = express.json({ limit: options.bodyLimit ?? "1mb", strict: true, type: () => true });
  app.post("/v1/completions", json, completionsRoute(ctx));
  app.post("/v1/chat/completions", json, chatRoute(ctx));

  // Known path, wrong method → 405; anything else → 404.
  app.use((req: Request, res: Response) => {
    if (req.path === WS_PATH) {
      return sendError(res, new ApiError(426, `${WS_PATH} is a WebSocket endpoint: connect with a WebSocket client.`, "invalid_request_error", null, "upgrade_required", { Upgrade: "websocket" }));
    }
    const allow = KNOWN_ROUTES[req.path];
    if (allow) return sendError(res, methodNotAllowed(req.method, req.path, allow));
    sendError(res, routeNotFound(req.method, req.path));
  });
  app.use(errorMiddleware(log));

  const servers = new Set<http.Server>();

  return {
    app,
    metrics,
    admission,
    stream,
    inflight,
    get engine() {
      return engine;
    },
    get draining() {
      return draining;
    },
    get router() {
      return router;
    },
    async calibrate() {
      if (engine && router) await calibrate(engine, router);
    },
    setEngine(e: Engine) {
      const r = makeRouter(e);
      router = r;
      engine = e;
      if (options.router?.calibrate ?? true) {
        // In the background: /health is ok at once; requests arriving meanwhile simply share
        // batches with the warm-up (batching never changes results) and teach the model too.
        calibrate(e, r).catch((err) => log(`router: warm-up failed (${(err as Error)?.message ?? String(err)}); learning online`));
      }
    },
    attach(server: http.Server) {
      stream!.attach(server);
    },
    listen(port = 0, host = "127.0.0.1") {
      const server = http.createServer(app);
      servers.add(server);
      stream!.attach(server);
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          resolve(server);
        });
      });
    },
    async drain(deadlineMs: number) {
      draining = true;
      admission.rejectWaiting(serviceUnavailable("draining"));
      let timer: NodeJS.Timeout | undefined;
      const timeout = (ms: number) => new Promise<void>((r) => (timer = setTimeout(r, ms)));
      await Promise.race([inflight.idle(), timeout(deadlineMs)]);
      clearTimeout(timer);
      if (inflight.size > 0) {
        log(`shutdown: deadline reached, cancelling ${inflight.size} request(s)`);
        inflight.abortAll(new Error("server shutting down"));
        await Promise.race([inflight.idle(), timeout(5_000)]);
        clearTimeout(timer);
      }
    },
    async close() {
      stream!.close();
      await Promise.all(
        [...servers].map(
          (s) =>
            new Promise<void>((resolve) => {
              s.close(() => resolve());
              s.closeIdleConnections();
              setTimeout(() => s.closeAllConnections(), 1_000).unref();
            }),
        ),
      );
      servers.clear();
    },
  };
}

export function listeningUrl(server: http.Server): string {
  const addr = server.address() as AddressInfo;
  const host = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return `http://${host}:${addr.port}`;
}
