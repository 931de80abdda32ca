// POST /v1/completions (OpenAI legacy completions): the body → a GenerationRequest, and results →
// text_completion objects. Everything between is the pipeline's.
import { randomUUID } from "node:crypto";
import type { Request, Response } from "express";
import type { Engine, GeneratedToken } from "../engine/types.ts";
import type { ServerContext } from "./context.ts";
import { fromZodError } from "./errors.ts";
import type { GenerationResult } from "./generation.ts";
import { choiceExtensions, httpRoute, planRequest, serveHttp, totalUsage, type PlannedRequest, type ResponseFormat } from "./pipeline.ts";
import { buildRequest, encodeText, mergeBudgetHeaders, tokenPrompt, type GenerationRequest, type PromptInput } from "./request.ts";
import { completionRequestSchema, type CompletionRequest } from "./schemas.ts";

/** OpenAI's default max_tokens for /v1/completions. */
export const DEFAULT_COMPLETION_TOKENS = 16;

/** Legacy logprobs object: {tokens, token_logprobs, top_logprobs, text_offset}. */
interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: Array<number | null>;
  top_logprobs: Array<Record<string, number> | null>;
  text_offset: number[];
}

function emptyLogprobs(): LegacyLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}

/** The prompt's tokens, for echo with logprobs. */
function echoLogprobs(engine: Engine, prompt: PromptInput): LegacyLogprobs {
  const lp = emptyLogprobs();
  let offset = 0;
  for (const id of prompt.ids) {
    const t = engine.tokenizer.decode([id]);
    lp.tokens.push(t);
    lp.token_logprobs.push(null);
    lp.top_logprobs.push(null);
    lp.text_offset.push(offset);
    offset += t.length;
  }
  return lp;
}

function appendLogprob(engine: Engine, lp: LegacyLogprobs, tok: GeneratedToken, offset: number): void {
  lp.tokens.push(engine.tokenizer.decode([tok.tokenId]));
  lp.token_logprobs.push(tok.logprob ?? null);
  const top: Record<string, number> = {};
  for (const alt of tok.topLogprobs ?? []) if (!(alt.token in top)) top[alt.token] = alt.logprob;
  lp.top_logprobs.push(top);
  lp.text_offset.push(offset);
}

function prompts(engine: Engine, prompt: CompletionRequest["prompt"]): PromptInput[] {
  if (typeof prompt === "string") return [encodeText(engine, prompt)];
  if (prompt.length > 0 && typeof prompt[0] === "string") return (prompt as string[]).map((p) => encodeText(engine, p));
  if (prompt.length > 0 && typeof prompt[0] === "number") return [tokenPrompt(engine, prompt as number[], "prompt")];
  return (prompt as number[][]).map((ids) => tokenPrompt(engine, ids, "prompt"));
}

/** Validate a /v1/completions body once. */
export function completionRequest(engine: Engine, req: Request, arrivedAt: number): GenerationRequest {
  const parsed = completionRequestSchema.safeParse(req.body);
  if (!parsed.success) throw fromZodError(parsed.error, req.body);
  const body = parsed.data;
  const budget = mergeBudgetHeaders(req.headers, body.latency_budget);
  return buildRequest(engine, body, prompts(engine, body.prompt), {
    promptParam: "prompt",
    maxTokens: body.max_tokens ?? undefined,
    defaultMaxTokens: DEFAULT_COMPLETION_TOKENS,
    logprobs: body.logprobs ?? undefined,
    n: body.n ?? undefined,
    echo: body.echo === true,
  }, arrivedAt, budget);
}

/** The text_completion format of a planned request. */
function completionFormat(engine: Engine, planned: PlannedRequest): ResponseFormat {
  const { request, choices } = planned;
  const envelope = { id: `cmpl-${randomUUID().replace(/-/g, "")}`, object: "text_completion", created: Math.floor(Date.now() / 1000), model: planned.model };
  const wantLogprobs = request.logprobs !== undefined;
  const offsets = choices.map(() => 0);
  const echoed = (i: number) => (request.echo ? choices[i].prompt.text : "");
  return {
    envelope,
    opening: () =>
      !request.echo
        ? []
        : choices.map((c, i) => {
            offsets[i] = c.prompt.text.length;
            return { index: c.index, text: c.prompt.text, logprobs: wantLogprobs ? echoLogprobs(engine, c.prompt) : null, finish_reason: null, chains: planned.chains };
          }),
    token: (i, tok) => {
      let lp: LegacyLogprobs | null = null;
      if (wantLogprobs) appendLogprob(engine, (lp = emptyLogprobs()), tok, offsets[i]);
      offsets[i] += tok.text.length;
      return { index: choices[i].index, text: tok.text, logprobs: lp, finish_reason: null, chains: tok.chains };
    },
    finished: (i, r) => ({ index: choices[i].index, text: r.summary?.tailText ?? "", logprobs: null, finish_reason: r.finishReason, ...choiceExtensions(r) }),
    response: (results) => ({
      ...envelope,
      chains: planned.chains,
      choices: results.map((r, i) => ({ index: choices[i].index, text: echoed(i) + r.text, logprobs: wantLogprobs ? choiceLogprobs(engine, choices[i].prompt, r, request.echo) : null, finish_reason: r.finishReason, ...choiceExtensions(r) })),
      usage: totalUsage(planned, results),
    }),
  };
}

function choiceLogprobs(engine: Engine, prompt: PromptInput, r: GenerationResult, echo: boolean): LegacyLogprobs {
  const lp = echo ? echoLogprobs(engine, prompt) : emptyLogprobs();
  let offset = echo ? prompt.text.length : 0;
  for (const tok of r.tokens) {
    appendLogprob(engine, lp, tok, offset);
    offset += tok.text.length;
  }
  return lp;
}

async function handleCompletion(ctx: ServerContext, req: Request, res: Response): Promise<void> {
  const arrivedAt = performance.now();
  const engine = ctx.engine();
  const planned = planRequest(ctx, completionRequest(engine, req, arrivedAt));
  await serveHttp(ctx, res, planned, completionFormat(engine, planned));
}

export const completionsRoute = (ctx: ServerContext) => httpRoute(ctx, "completion", handleCompletion);
