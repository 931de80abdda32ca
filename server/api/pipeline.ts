// The one request pipeline every front end runs: a GenerationRequest (validated once, request.ts)
// is planned (the latency router picks the chain count and makes each choice's ChainControl),
// admitted (slots, KV budget, queue), then run; endpoint files only translate formats. HTTP
// endpoints hand serveHttp a ResponseFormat; the WebSocket runs plan → admit → run itself, since
// a socket carries several generations and its own cancel and switch messages.
import type { Request, Response } from "express";
import type { Engine, GeneratedToken, PromptLogprob } from "../engine/types.ts";
import type { ServerContext } from "./context.ts";
import { errorBody, logIfInternal, sendError, serviceUnavailable, toColmError } from "./errors.ts";
import { runChoices, type GenerationResult, type GenerationSpec } from "./generation.ts";
import { modelId } from "./models.ts";
import type { GenerationRequest, PromptInput } from "./request.ts";
import { usage } from "./request.ts";
import { SseWriter } from "./sse.ts";

export interface ChoicePlan {
  /** The choice's index in the response (prompt i, sample j → i·n + j). */
  index: number;
  prompt: PromptInput;
  spec: Omit<GenerationSpec, "signal">;
}

export interface PlannedRequest {
  request: GenerationRequest;
  /** The routed chain count every choice starts at, and its model id. */
  chains: number;
  model: string;
  choices: ChoicePlan[];
}

/** Route the request and lay out its choices (each with its own chain control and seed). */
export function planRequest(ctx: ServerContext, request: GenerationRequest): PlannedRequest {
  const engine = ctx.engine();
  const longest = request.prompts.reduce((a, p) => (p.ids.length > a.ids.length ? p : a));
  const promptTokens = longest.ids.length;
  // The router predicts time to first token from the prompt tokens the prefix cache does not hold.
  const readsCache = request.cache && !(request.echo && request.logprobs !== undefined);
  const cachedTokens = readsCache ? (engine.prefixCache?.cachedTokens(longest.ids, request.cacheSalt) ?? 0) : 0;
  const plan = ctx.router().plan({ fixedChains: request.fixedChains, latencyBudget: request.latencyBudget, promptTokens, cachedTokens, maxTokens: request.maxTokens });
  if (plan.decision.reason === "no_fit") ctx.metrics.budgetMisses.inc({ budget: "no_fit" });
  const { sampling } = request;
  const speculative = ctx.router().drafts.optionsFor(request.speculative, sampling);
  const choices = request.prompts.flatMap((prompt, i) =>
    Array.from({ length: request.n }, (_, j) => ({
      index: i * request.n + j,
      prompt,
      spec: {
        prompt: prompt.ids,
        maxTokens: request.maxTokens,
        sampling: sampling.seed !== undefined ? { ...sampling, seed: sampling.seed + j } : sampling,
        ...(speculative ? { speculative } : {}),
        stop: request.stop,
        control: plan.control(),
        latencyBudget: request.latencyBudget,
        arrivedAt: request.arrivedAt,
        cache: request.cache,
        ...(request.cacheSalt !== undefined ? { cacheSalt: request.cacheSalt } : {}),
        // Echo with logprobs reports the prompt's tokens too (as vLLM does): computed at the choice's size.
        ...(request.echo && request.logprobs !== undefined ? { promptLogprobs: request.logprobs } : {}),
      },
    })),
  );
  return { request, chains: plan.chains, model: modelId(engine.info, plan.chains), choices };
}

/** KV cache bytes the choices can grow to (prompt + max_tokens each, capped by the context). */
function kvReservation(ctx: ServerContext, planned: PlannedRequest): number {
  const info = ctx.engine().info;
  const tokens = (p: ChoicePlan) => Math.min(p.prompt.ids.length + planned.request.maxTokens, info.maxPosition);
  return planned.choices.reduce((bytes, p) => bytes + tokens(p) * info.kvBytesPerToken, 0);
}

/**
 * Admit a planned request: refuse while draining, wait for its slots and KV reservation (429 when
 * the queue is full), register it as in flight. `controller` is aborted by the front end (client
 * gone, cancel) and by shutdown. Returns the release function.
 */
export async function admit(ctx: ServerContext, planned: PlannedRequest, controller: AbortController): Promise<() => void> {
  if (ctx.isDraining()) throw serviceUnavailable("draining");
  ctx.inflight.add(controller);
  let releaseSlots: () => void;
  try {
    releaseSlots = await ctx.admission.acquire(planned.choices.length, controller.signal, kvReservation(ctx, planned));
  } catch (err) {
    ctx.inflight.delete(controller);
    throw err;
  }
  return () => {
    releaseSlots();
    ctx.inflight.delete(controller);
  };
}

/** Extension fields of a finished choice: its final chain count, per-token counts if it switched, budget parts missed. */
export function choiceExtensions(r: GenerationResult): { chains: number; chains_per_token?: number[]; latency_budget_missed?: string[] } {
  const changed = r.chainsPerToken.some((k) => k !== r.chainsPerToken[0]);
  return {
    chains: r.finalChains,
    ...(changed ? { chains_per_token: r.chainsPerToken } : {}),
    ...(r.budgetMissed.length > 0 ? { latency_budget_missed: r.budgetMissed } : {}),
  };
}

/** Usage of a request: each prompt counted once, its cached tokens as the fewest any of its choices took from the cache. */
export function totalUsage(planned: PlannedRequest, results: GenerationResult[]) {
  const { prompts, n } = planned.request;
  const promptTokens = prompts.reduce((a, p) => a + p.ids.length, 0);
  const cached = prompts.reduce((a, _, i) => a + Math.min(...results.slice(i * n, (i + 1) * n).map((r) => r.cachedTokens)), 0);
  return usage(promptTokens, results.reduce((a, r) => a + r.completionTokens, 0), cached);
}

/** How an HTTP endpoint writes a planned request's results: its formats, nothing else. */
export interface ResponseFormat {
  /** The fields every stream chunk starts with ({id, object, created, model}). */
  readonly envelope: Record<string, unknown>;
  /** Choice entries sent as the stream opens (chat: the role; completions: an echoed prompt). */
  opening(): object[];
  /** The choice entry streaming the prompt of choice `i` with its logprobs (echo with logprobs), once the engine has them. */
  prompt?(i: number, logprobs: PromptLogprob[]): object;
  /** The choice entry streaming one token of choice `i`. */
  token(i: number, tok: GeneratedToken): object;
  /** The last choice entry of choice `i`. */
  finished(i: number, r: GenerationResult): object;
  /** The whole response of a request that does not stream. */
  response(results: GenerationResult[]): object;
}

/** An admitted HTTP request: a client that goes away before the response is complete aborts it, queued or generating. */
async function admitHttp(ctx: ServerContext, res: Response, planned: PlannedRequest) {
  const controller = new AbortController();
  const clientGone = new AbortController();
  const onClose = () => {
    if (res.writableFinished) return;
    clientGone.abort(new Error("client disconnected"));
    controller.abort(new Error("client disconnected"));
  };
  res.on("close", onClose);
  try {
    const release = await admit(ctx, planned, controller);
    return { signal: controller.signal, clientGone: clientGone.signal, release: () => (res.off("close", onClose), release()) };
  } catch (err) {
    res.off("close", onClose);
    throw err;
  }
}

/** Stream a planned request as server-sent events; an error after the headers is an error event. */
async function stream(ctx: ServerContext, res: Response, planned: PlannedRequest, format: ResponseFormat, signal: AbortSignal, clientGone: AbortSignal): Promise<void> {
  const sse = new SseWriter(res, clientGone);
  const extra = planned.request.includeUsage ? { usage: null } : {};
  const chunk = (entry: object) => sse.send({ ...format.envelope, choices: [entry], ...extra });
  sse.open();
  for (const entry of format.opening()) await chunk(entry);
  let results: GenerationResult[];
  try {
    results = await runChoices(ctx, planned.choices.map((c) => c.spec), signal, {
      prompt: format.prompt && ((i, lps) => chunk(format.prompt!(i, lps))),
      token: (i, tok) => chunk(format.token(i, tok)),
    });
  } catch (err) {
    const mapped = toColmError(err);
    logIfInternal(ctx.log, "stream", err, mapped);
    await sse.send(errorBody(mapped));
    await sse.done();
    return;
  }
  if (res.destroyed) return;
  for (let i = 0; i < results.length; i++) await chunk(format.finished(i, results[i]));
  if (planned.request.includeUsage) await sse.send({ ...format.envelope, choices: [], usage: totalUsage(planned, results) });
  await sse.done();
}

/** Plan → admit → run → respond (JSON or SSE), for every completion-style HTTP endpoint. */
async function serveHttp(ctx: ServerContext, res: Response, planned: PlannedRequest, format: ResponseFormat): Promise<void> {
  const gen = await admitHttp(ctx, res, planned);
  try {
    if (planned.request.stream) return await stream(ctx, res, planned, format, gen.signal, gen.clientGone);
    const results = await runChoices(ctx, planned.choices.map((c) => c.spec), gen.signal, { token: () => undefined });
    if (gen.signal.aborted && res.destroyed) return;
    res.json(format.response(results));
  } finally {
    gen.release();
  }
}

/** What a completion-style HTTP endpoint adds to the pipeline: its body's validation and its response format. */
export interface CompletionEndpoint {
  /** Validate the body once into a GenerationRequest. */
  request(engine: Engine, req: Request, arrivedAt: number): GenerationRequest;
  /** The response format of a planned request. */
  format(engine: Engine, planned: PlannedRequest): ResponseFormat;
}

/**
 * The one express handler of every completion-style endpoint: validate → plan → admit → run →
 * respond; any error becomes an OpenAI-shaped response (server faults logged).
 */
export function completionRoute(ctx: ServerContext, label: string, endpoint: CompletionEndpoint) {
  return async (req: Request, res: Response): Promise<void> => {
    try {
      const arrivedAt = performance.now();
      const engine = ctx.engine();
      const planned = planRequest(ctx, endpoint.request(engine, req, arrivedAt));
      await serveHttp(ctx, res, planned, endpoint.format(engine, planned));
    } catch (err) {
      if (res.destroyed) return;
      const mapped = toColmError(err);
      logIfInternal(ctx.log, label, err, mapped);
      sendError(res, mapped);
    }
  };
}
