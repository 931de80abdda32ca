// POST /v1/completions (OpenAI legacy completions), streaming and not.
import { randomUUID } from "node:crypto";
import type { Request, Response } from "express";
import type { Engine, GeneratedToken } from "../engine/types.ts";
import { admitHttp, apiRoute, kvReservation, type HttpGeneration, type ServerContext } from "./context.ts";
import { fromZodError, toApiError } from "./errors.ts";
import { runChoices, type ChainControl, type GenerationResult } from "./generation.ts";
import { checkTokenIds, encodeText, prepare, usage, type PreparedRequest } from "./request.ts";
import { mergeBudgetHeaders, planChains } from "../policy/latency-router.ts";
import { modelId } from "./router.ts";
import { completionRequestSchema, type CompletionRequest } from "./schemas.ts";
import { SseWriter } from "./sse.ts";

const DEFAULT_MAX_TOKENS = 16; // OpenAI's default for /v1/completions

/** Legacy logprobs object: {tokens, token_logprobs, top_logprobs, text_offset}. */
export interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: Array<number | null>;
  top_logprobs: Array<Record<string, number> | null>;
  text_offset: number[];
}

function emptyLogprobs(): LegacyLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}

function tokenString(engine: Engine, tokenId: number): string {
  return engine.tokenizer.decode([tokenId]);
}

/** Prompt tokens (for echo + logprobs): the engine computes no prompt logprobs, so they are null. */
function echoLogprobs(engine: Engine, prompt: number[]): LegacyLogprobs {
  const lp = emptyLogprobs();
  let offset = 0;
  for (const id of prompt) {
    const t = tokenString(engine, id);
    lp.tokens.push(t);
    lp.token_logprobs.push(null);
    lp.top_logprobs.push(null);
    lp.text_offset.push(offset);
    offset += t.length;
  }
  return lp;
}

function appendLogprob(engine: Engine, lp: LegacyLogprobs, tok: GeneratedToken, offset: number): void {
  lp.tokens.push(tokenString(engine, tok.tokenId));
  lp.token_logprobs.push(tok.logprob ?? null);
  const top: Record<string, number> = {};
  for (const alt of tok.topLogprobs ?? []) if (!(alt.token in top)) top[alt.token] = alt.logprob;
  lp.top_logprobs.push(top);
  lp.text_offset.push(offset);
}

/** Parse the body's prompt(s) into token-id arrays. */
function promptTokens(engine: Engine, prompt: CompletionRequest["prompt"]): number[][] {
  if (typeof prompt === "string") return [encodeText(engine, prompt)];
  if (prompt.length > 0 && typeof prompt[0] === "string") return (prompt as string[]).map((p) => encodeText(engine, p));
  if (prompt.length > 0 && typeof prompt[0] === "number") {
    checkTokenIds(prompt as number[], engine.info, "prompt");
    return [prompt as number[]];
  }
  const arrays = prompt as number[][];
  for (const ids of arrays) checkTokenIds(ids, engine.info, "prompt");
  return arrays;
}

interface ChoicePlan {
  index: number;
  prompt: number[];
  promptText: string;
  control: ChainControl;
}

export async function handleCompletion(ctx: ServerContext, req: Request, res: Response): Promise<void> {
  const arrivedAt = performance.now();
  const parsed = completionRequestSchema.safeParse(req.body);
  if (!parsed.success) throw fromZodError(parsed.error);
  const body = parsed.data;
  body.latency_budget = mergeBudgetHeaders(req.headers, body.latency_budget);
  const engine = ctx.engine();
  const n = body.n ?? 1;
  const logprobs = body.logprobs ?? undefined;
  const prompts = promptTokens(engine, body.prompt);
  const prep: PreparedRequest = prepare(engine, body, prompts, {
    maxTokens: body.max_tokens ?? undefined,
    defaultMaxTokens: DEFAULT_MAX_TOKENS,
    promptParam: "prompt",
    logprobs,
  });
  const echo = body.echo === true;
  const chainPlan = planChains(ctx, prep, Math.max(...prompts.map((p) => p.length)));
  const chains = chainPlan.chains;
  const plans: ChoicePlan[] = [];
  prompts.forEach((p, i) => {
    const text = typeof body.prompt === "string" ? body.prompt : Array.isArray(body.prompt) && typeof body.prompt[i] === "string" ? (body.prompt[i] as string) : engine.tokenizer.decode(p);
    for (let j = 0; j < n; j++) plans.push({ index: i * n + j, prompt: p, promptText: text, control: chainPlan.control() });
  });

  const gen = await admitHttp(ctx, res, plans.length, kvReservation(engine, plans.map((p) => p.prompt.length), prep.maxTokens));
  const id = `cmpl-${randomUUID().replace(/-/g, "")}`;
  const created = Math.floor(Date.now() / 1000);
  const model = modelId(engine.info, chains);
  const specs = plans.map((plan, j) => ({
    prompt: plan.prompt,
    maxTokens: prep.maxTokens,
    sampling: prep.sampling.seed !== undefined ? { ...prep.sampling, seed: prep.sampling.seed + (j % n) } : prep.sampling,
    stop: prep.stop,
    control: plan.control,
    latencyBudget: prep.latencyBudget,
    arrivedAt,
  }));
  const promptTokenTotal = prompts.reduce((a, p) => a + p.length, 0);

  try {
    if (body.stream) {
      await streamCompletion(ctx, res, gen, { id, created, model, chains, echo, logprobs, plans, specs, promptTokenTotal, includeUsage: body.stream_options?.include_usage === true });
      return;
    }
    const results = await runChoices(ctx, specs, gen.signal, () => undefined);
    if (gen.signal.aborted && res.destroyed) return;
    const choices = results.map((r, i) => completionChoice(engine, plans[i], r, echo, logprobs));
    res.json({
      id,
      object: "text_completion",
      created,
      model,
      chains,
      choices,
      usage: usage(promptTokenTotal, results.reduce((a, r) => a + r.completionTokens, 0)),
    });
  } finally {
    gen.release();
  }
}

function completionChoice(engine: Engine, plan: ChoicePlan, r: GenerationResult, echo: boolean, logprobs: number | undefined) {
  let lp: LegacyLogprobs | null = null;
  const prefix = echo ? plan.promptText : "";
  if (logprobs !== undefined) {
    lp = echo ? echoLogprobs(engine, plan.prompt) : emptyLogprobs();
    let offset = prefix.length;
    for (const tok of r.tokens) {
      appendLogprob(engine, lp, tok, offset);
      offset += tok.text.length;
    }
  }
  return {
    index: plan.index,
    text: prefix + r.text,
    logprobs: lp,
    finish_reason: r.finishReason,
    ...chainFields(r),
  };
}

/** Extension fields of a finished choice: final chain count and, if it changed, per-token counts. */
export function chainFields(r: GenerationResult): { chains: number; chains_per_token?: number[] } {
  const changed = r.chainsPerToken.some((k) => k !== r.chainsPerToken[0]);
  return changed ? { chains: r.finalChains, chains_per_token: r.chainsPerToken } : { chains: r.finalChains };
}

interface StreamPlan {
  id: string;
  created: number;
  model: string;
  chains: number;
  echo: boolean;
  logprobs: number | undefined;
  plans: ChoicePlan[];
  specs: Parameters<typeof runChoices>[1];
  promptTokenTotal: number;
  includeUsage: boolean;
}

async function streamCompletion(ctx: ServerContext, res: Response, gen: HttpGeneration, p: StreamPlan): Promise<void> {
  const engine = ctx.engine();
  const sse = new SseWriter(res, gen.clientGone);
  const base = { id: p.id, object: "text_completion", created: p.created, model: p.model };
  const extra = p.includeUsage ? { usage: null } : {};
  const offsets = p.plans.map(() => 0);
  sse.open();
  if (p.echo) {
    for (const plan of p.plans) {
      const lp = p.logprobs !== undefined ? echoLogprobs(engine, plan.prompt) : null;
      offsets[plan.index] = plan.promptText.length;
      await sse.send({ ...base, choices: [{ index: plan.index, text: plan.promptText, logprobs: lp, finish_reason: null, chains: p.chains }], ...extra });
    }
  }
  let results: GenerationResult[];
  try {
    results = await runChoices(ctx, p.specs, gen.signal, async (i, tok) => {
      let lp: LegacyLogprobs | null = null;
      if (p.logprobs !== undefined) {
        lp = emptyLogprobs();
        appendLogprob(engine, lp, tok, offsets[i]);
      }
      offsets[i] += tok.text.length;
      await sse.send({ ...base, choices: [{ index: p.plans[i].index, text: tok.text, logprobs: lp, finish_reason: null, chains: tok.chains }], ...extra });
    });
  } catch (err) {
    // Headers are sent: report the error in the stream, OpenAI-style, then end it.
    const apiErr = toApiError(err);
    ctx.log(`stream error: ${(err as Error)?.stack ?? String(err)}`);
    await sse.send(apiErr.toBody());
    await sse.done();
    return;
  }
  if (res.destroyed) return;
  for (let i = 0; i < results.length; i++) {
    const r = results[i];
    await sse.send({
      ...base,
      choices: [{ index: p.plans[i].index, text: r.summary?.tailText ?? "", logprobs: null, finish_reason: r.finishReason, ...chainFields(r) }],
      ...extra,
    });
  }
  if (p.includeUsage) {
    await sse.send({ ...base, choices: [], usage: usage(p.promptTokenTotal, results.reduce((a, r) => a + r.completionTokens, 0)) });
  }
  await sse.done();
}

export const completionsRoute = (ctx: ServerContext) => apiRoute(ctx, "completion", handleCompletion);
