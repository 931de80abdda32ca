// POST /v1/completions (OpenAI legacy completions): the body → a GenerationRequest, and results →
// text_completion objects. Everything between is the pipeline's.
import { randomUUID } from "node:crypto";
import type { Request } from "express";
import type { Engine, GeneratedToken, PromptLogprob } from "../engine/types.ts";
import type { ServerContext } from "./context.ts";
import { fromZodError, invalidField } from "./errors.ts";
import type { GenerationResult } from "./generation.ts";
import { choiceExtensions, completionRoute, totalUsage, type PlannedRequest, type ResponseFormat } from "./pipeline.ts";
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

/** The prompt's tokens, for echo with logprobs: each with its logprob and top-N given the tokens before it (none for the first). */
function echoLogprobs(engine: Engine, prompt: PromptInput, logprobs: PromptLogprob[] | undefined): LegacyLogprobs {
  const lp = emptyLogprobs();
  let offset = 0;
  prompt.ids.forEach((id, t) => {
    const token = engine.tokenizer.decode([id]);
    const entry = logprobs?.[t] ?? null;
    lp.tokens.push(token);
    lp.token_logprobs.push(entry ? entry.logprob : null);
    lp.top_logprobs.push(entry ? topMap(entry.topLogprobs) : null);
    lp.text_offset.push(offset);
    offset += token.length;
  });
  return lp;
}

/** Alternatives as the legacy {token: logprob} map (the first of equal-text tokens wins). */
function topMap(alternatives: ReadonlyArray<{ token: string; logprob: number }>): Record<string, number> {
  const top: Record<string, number> = {};
  for (const alt of alternatives) if (!(alt.token in top)) top[alt.token] = alt.logprob;
  return top;
}

function appendLogprob(engine: Engine, lp: LegacyLogprobs, tok: GeneratedToken, offset: number): void {
  lp.tokens.push(engine.tokenizer.decode([tok.tokenId]));
  lp.token_logprobs.push(tok.logprob ?? null);
  lp.top_logprobs.push(topMap(tok.topLogprobs ?? []));
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
  if (body.max_tokens === 0 && body.echo !== true) throw invalidField("max_tokens", "Invalid value for 'max_tokens': must be at least 1 unless 'echo' is true.");
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
  const echo = (i: number, lps: PromptLogprob[] | undefined) => {
    offsets[i] = choices[i].prompt.text.length;
    return { index: choices[i].index, text: choices[i].prompt.text, logprobs: wantLogprobs ? echoLogprobs(engine, choices[i].prompt, lps) : null, finish_reason: null, chains: planned.chains };
  };
  return {
    envelope,
    // An echoed prompt opens the stream, or, with logprobs, comes once the engine has the prompt's.
    opening: () => (request.echo && !wantLogprobs ? choices.map((_, i) => echo(i, undefined)) : []),
    prompt: (i, lps) => echo(i, lps),
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
  const lp = echo ? echoLogprobs(engine, prompt, r.promptLogprobs) : emptyLogprobs();
  let offset = echo ? prompt.text.length : 0;
  for (const tok of r.tokens) {
    appendLogprob(engine, lp, tok, offset);
    offset += tok.text.length;
  }
  return lp;
}

export const completionsRoute = (ctx: ServerContext) => completionRoute(ctx, "completion", { request: completionRequest, format: completionFormat });
