// The express app factory, used by server/main.ts and by the tests: routes, auth, the WebSocket
// server, metrics, and the app's lifecycle (engine arrives → serve → drain → close).
import { timingSafeEqual } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import express, { type Express, type NextFunction, type Request, type Response } from "express";
import type { Engine } from "../engine/types.ts";
import { Admission } from "../policy/admission.ts";
import { CostModel, warmUp } from "../policy/cost-model.ts";
import { LatencyRouter, type HysteresisConfig } from "../policy/latency-router.ts";
import type { SpeculativeMode } from "../policy/draft-policy.ts";
import { chatRoute } from "./chat.ts";
import { completionsRoute } from "./completions.ts";
import { InFlight, type ServerContext } from "./context.ts";
import { errorMiddleware, invalidApiKey, methodNotAllowed, modelNotFound, routeNotFound, sendError, serviceUnavailable, upgradeRequired } from "./errors.ts";
import { Metrics } from "./metrics.ts";
import { modelEntries } from "./models.ts";
import { prefixCacheView } from "./prefix-cache-view.ts";
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
  /** Self-speculative decoding for requests that do not say (COLM_SPECULATIVE; default auto). */
  speculative?: SpeculativeMode;
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

/** The browser playground: index.html at `/`, its scripts and styles under PLAYGROUND_PATH. */
const PLAYGROUND_DIR = fileURLToPath(new URL("./static/", import.meta.url));
const PLAYGROUND_PATH = "/playground";
const PLAYGROUND_HEADERS = {
  "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "Cache-Control": "no-cache",
};

const KNOWN_ROUTES: Record<string, string> = {
  "/": "GET",
  "/health": "GET",
  "/metrics": "GET",
  "/v1/models": "GET",
  "/v1/router": "GET",
  "/v1/cache": "GET",
  "/v1/completions": "POST",
  "/v1/chat/completions": "POST",
  [WS_PATH]: "GET",
};

function routeLabel(path: string): string {
  if (path in KNOWN_ROUTES) return path;
  if (path.startsWith("/v1/models/")) return "/v1/models/:id";
  if (path.startsWith(`${PLAYGROUND_PATH}/`)) return `${PLAYGROUND_PATH}/:file`;
  return "unmatched";
}

function keyMatches(header: string | undefined, key: string): boolean {
  const m = header ? /^Bearer\s+(.+)$/i.exec(header.trim()) : null;
  if (!m) return false;
  const a = Buffer.from(m[1]);
  const b = Buffer.from(key);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The app's mutable state: the engine once loaded, its router, whether it is draining. */
interface AppState {
  engine: Engine | null;
  router: LatencyRouter | null;
  draining: boolean;
}

/**
 * Connects an engine to the app: its prefix cache may hold only what admission's KV budget leaves
 * unreserved, and a router learns from its steps (load = the engine's batch and queue plus
 * admission's queue).
 */
function connectEngine(engine: Engine, admission: Admission, options: RouterOptions = {}): LatencyRouter {
  engine.prefixCache?.limitBy(() => admission.kvHeadroomBytes);
  const model = options.costModel ?? new CostModel({ nChains: engine.info.nChains, alpha: options.alpha });
  // Capacity: the admission limit on running generations (each holds one row of the batch).
  const load = () => ({ running: engine.load.running, queued: engine.load.waiting + admission.waiting, capacity: admission.maxRunning });
  const router = new LatencyRouter({ model, load, now: options.now, hysteresis: options.hysteresis, switching: options.switching, speculative: options.speculative });
  engine.onStep((step) => {
    model.observe(step);
    router.drafts.observe(step);
  });
  return router;
}

function makeMetrics(state: AppState, admission: Admission, stream: () => StreamServer | undefined): Metrics {
  return new Metrics({
    running: () => admission.running,
    waiting: () => admission.waiting,
    kvBytesInUse: () => state.engine?.kvBytesInUse() ?? 0,
    kvBytesCapacity: () => {
      const info = state.engine?.info;
      return info ? Math.min(admission.kvBudgetBytes, admission.maxRunning * info.maxPosition * info.kvBytesPerToken) : 0;
    },
    wsConnections: () => stream()?.connections ?? 0,
    prefixCache: () => state.engine?.prefixCache?.stats() ?? null,
    modelInfo: () => (state.engine ? { model: state.engine.info.name, device: state.engine.info.device, nChains: state.engine.info.nChains, precision: state.engine.info.precision } : null),
    speculation: () => state.router?.drafts.view().map((p) => ({ draftChains: p.draft_chains, chains: p.chains, sampling: p.sampling, acceptance: p.acceptance })) ?? [],
    routerPredictions: () => {
      if (!state.router) return null;
      const v = state.router.view();
      return { tpot: v.chains.map((c) => ({ chains: c.chains, currentMs: c.tpot_ms, b1Ms: c.tpot_ms_b1 })), prefillMsPerToken: v.prefill_ms_per_token };
    },
  });
}

/**
 * The playground page and its files. They are public (no key: the page asks for one and sends it
 * on its own API calls) and talk to the server only through the public API. The CSP lets the page
 * load nothing but its own files and connect nowhere but back to this server.
 */
function mountPlayground(app: Express): void {
  const headers = (res: http.ServerResponse) => {
    for (const [name, value] of Object.entries(PLAYGROUND_HEADERS)) res.setHeader(name, value);
  };
  app.get("/", (_req, res, next) => {
    headers(res);
    res.sendFile("index.html", { root: PLAYGROUND_DIR }, (err) => err && next(err));
  });
  app.use(PLAYGROUND_PATH, express.static(PLAYGROUND_DIR, { index: false, redirect: false, dotfiles: "ignore", setHeaders: headers }));
}

/** Routes: the playground, health and metrics, then /v1/* behind draining, auth and loading checks. */
function mountRoutes(app: Express, ctx: ServerContext, state: AppState, apiKey: string | undefined, bodyLimit: string | number, created: number): void {
  mountPlayground(app);
  app.get("/health", (_req, res) => {
    if (state.draining) return void res.status(503).json({ status: "draining" });
    if (!state.engine) return void res.status(503).json({ status: "loading" });
    res.json({ status: "ok", model: state.engine.info.name, chains: state.engine.info.nChains, device: state.engine.info.device });
  });
  app.get("/metrics", async (_req, res, next) => {
    try {
      res.set("Content-Type", ctx.metrics.registry.contentType).send(await ctx.metrics.registry.metrics());
    } catch (err) {
      next(err);
    }
  });
  app.use("/v1", (req: Request, res: Response, next: NextFunction) => {
    if (state.draining) return sendError(res, serviceUnavailable("draining"));
    if (apiKey && !keyMatches(req.headers.authorization, apiKey)) return sendError(res, invalidApiKey());
    if (!state.engine) return sendError(res, serviceUnavailable("loading"));
    next();
  });
  app.get("/v1/models", (_req, res) => void res.json({ object: "list", data: modelEntries(ctx.engine().info, created) }));
  app.get("/v1/models/:id", (req, res) => {
    const entry = modelEntries(ctx.engine().info, created).find((m) => m.id === req.params.id);
    if (!entry) return sendError(res, modelNotFound(String(req.params.id)));
    res.json(entry);
  });
  // What the latency router believes: per-k predicted time per output token, prefill cost, load.
  app.get("/v1/router", (_req, res) => void res.json(ctx.router().view()));
  // The prefix cache: blocks, bytes, hit rate.
  app.get("/v1/cache", (_req, res) => void res.json(prefixCacheView(ctx.engine())));
  // Every body is parsed as JSON whatever its Content-Type (curl -d sends form encoding).
  const json = express.json({ limit: bodyLimit, strict: true, type: () => true });
  app.post("/v1/completions", json, completionsRoute(ctx));
  app.post("/v1/chat/completions", json, chatRoute(ctx));
  // Known path, wrong method → 405; the WebSocket path over plain HTTP → 426; anything else → 404.
  app.use((req: Request, res: Response) => {
    if (req.path === WS_PATH) return sendError(res, upgradeRequired(WS_PATH));
    const allow = KNOWN_ROUTES[req.path];
    sendError(res, allow ? methodNotAllowed(req.method, req.path, allow) : routeNotFound(req.method, req.path));
  });
  app.use(errorMiddleware(ctx.log));
}

/** Count every request by route and status when it ends. */
function countRequests(metrics: Metrics) {
  return (req: Request, res: Response, next: NextFunction) => {
    let counted = false;
    // Read now: a mounted middleware (the playground's static files) strips its prefix from req.path.
    const route = routeLabel(req.path);
    const count = () => {
      if (counted) return;
      counted = true;
      metrics.httpRequests.inc({ route, method: req.method, status: String(res.statusCode) });
    };
    res.on("finish", count);
    res.on("close", count);
    next();
  };
}

export function createApp(initialEngine: Engine | null, options: AppOptions = {}): ColmApp {
  const log = options.log ?? ((line: string) => console.log(line));
  const admission = new Admission({
    maxRunning: options.maxRunning ?? 8,
    maxWaiting: options.maxWaiting ?? 32,
    retryAfterSeconds: options.retryAfterSeconds ?? 1,
    kvBudgetBytes: options.kvBudgetBytes,
    cache: () => state.engine?.prefixCache,
  });
  const state: AppState = { engine: null, router: null, draining: false };
  let stream: StreamServer | undefined;
  const ctx: ServerContext = {
    engine: () => state.engine ?? (() => { throw serviceUnavailable("loading"); })(),
    router: () => state.router ?? (() => { throw serviceUnavailable("loading"); })(),
    metrics: makeMetrics(state, admission, () => stream),
    admission,
    inflight: new InFlight(),
    isDraining: () => state.draining,
    log,
  };
  const connect = (e: Engine): LatencyRouter => {
    const router = connectEngine(e, admission, options.router);
    e.onStep((step) => ctx.metrics.observeStep(step));
    state.router = router;
    state.engine = e;
    return router;
  };
  if (initialEngine) connect(initialEngine);
  const apiKey = options.apiKey || undefined;
  stream = new StreamServer(
    ctx,
    {
      pingIntervalMs: options.ws?.pingIntervalMs ?? 30_000,
      maxBufferedBytes: options.ws?.maxBufferedBytes ?? 1 << 20,
      stallTimeoutMs: options.ws?.stallTimeoutMs ?? 30_000,
      maxPayloadBytes: options.ws?.maxPayloadBytes ?? 1 << 20,
    },
    (req) => {
      const authorized = !apiKey || keyMatches(req.headers.authorization, apiKey) || new URL(req.url ?? "/", "http://x").searchParams.get("api_key") === apiKey;
      if (!authorized) return invalidApiKey();
      if (state.draining) return serviceUnavailable("draining");
      return state.engine ? null : serviceUnavailable("loading");
    },
    (status) => ctx.metrics.httpRequests.inc({ route: WS_PATH, method: "GET", status: String(status) }),
  );
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);
  app.use(countRequests(ctx.metrics));
  mountRoutes(app, ctx, state, apiKey, options.bodyLimit ?? "1mb", Math.floor(Date.now() / 1000));
  const calibrate = async (e: Engine, r: LatencyRouter): Promise<void> => {
    const t0 = performance.now();
    await warmUp(e);
    r.drafts.forgetAcceptance();
    r.calibrated = true;
    log(`router: calibrated in ${(performance.now() - t0).toFixed(0)} ms`);
  };
  if (initialEngine && state.router && options.router?.calibrate === true) {
    void calibrate(initialEngine, state.router).catch((err) => log(`router: warm-up failed: ${(err as Error)?.message ?? String(err)}`));
  }
  return lifecycle(app, ctx, state, stream, {
    calibrate: () => (state.engine && state.router ? calibrate(state.engine, state.router) : Promise.resolve()),
    setEngine: (e) => {
      const router = connect(e);
      // In the background: /health is ok at once; requests arriving meanwhile share batches with
      // the warm-up (batching never changes results) and teach the cost model too.
      if (options.router?.calibrate ?? true) calibrate(e, router).catch((err) => log(`router: warm-up failed (${(err as Error)?.message ?? String(err)}); learning online`));
    },
  });
}

/** The ColmApp object: accessors, listen, drain and close. */
function lifecycle(app: Express, ctx: ServerContext, state: AppState, stream: StreamServer, hooks: Pick<ColmApp, "calibrate" | "setEngine">): ColmApp {
  const servers = new Set<http.Server>();
  const timeout = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());
  return {
    app,
    metrics: ctx.metrics,
    admission: ctx.admission,
    stream,
    inflight: ctx.inflight,
    get engine() {
      return state.engine;
    },
    get draining() {
      return state.draining;
    },
    get router() {
      return state.router;
    },
    ...hooks,
    attach: (server) => stream.attach(server),
    listen(port = 0, host = "127.0.0.1") {
      const server = http.createServer(app);
      servers.add(server);
      stream.attach(server);
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          resolve(server);
        });
      });
    },
    async drain(deadlineMs: number) {
      state.draining = true;
      ctx.admission.rejectWaiting(serviceUnavailable("draining"));
      await Promise.race([ctx.inflight.idle(), timeout(deadlineMs)]);
      if (ctx.inflight.size === 0) return;
      ctx.log(`shutdown: deadline reached, cancelling ${ctx.inflight.size} request(s)`);
      ctx.inflight.abortAll(new Error("server shutting down"));
      await Promise.race([ctx.inflight.idle(), timeout(5_000)]);
    },
    async close() {
      stream.close();
      const closing = [...servers].map(
        (s) =>
          new Promise<void>((resolve) => {
            s.close(() => resolve());
            s.closeIdleConnections();
            setTimeout(() => s.closeAllConnections(), 1_000).unref();
          }),
      );
      servers.clear();
      await Promise.all(closing);
    },
  };
}

export function listeningUrl(server: http.Server): string {
  const addr = server.address() as AddressInfo;
  const host = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return `http://${host}:${addr.port}`;
}
