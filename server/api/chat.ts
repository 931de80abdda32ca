// POST /v1/chat/completions: messages → a prompt by the chat template (chat-template.ts), then the
// same pipeline as /v1/completions; results → chat.completion objects and chunks.
import { randomUUID } from "node:crypto";
import type { Request } from "express";
import type { Engine, GeneratedToken } from "../engine/types.ts";
import { CHAT_TEMPLATE_STOPS, assistantCue, renderChat } from "./chat-template.ts";
import type { ServerContext } from "./context.ts";
import { fromZodError, invalidField } from "./errors.ts";
import { choiceExtensions, completionRoute, totalUsage, type PlannedRequest, type ResponseFormat } from "./pipeline.ts";
import { buildRequest, encodeText, mergeBudgetHeaders, type GenerationRequest } from "./request.ts";
import { chatRequestSchema } from "./schemas.ts";

function chatLogprob(engine: Engine, tok: GeneratedToken) {
  const token = engine.tokenizer.decode([tok.tokenId]);
  return {
    token,
    logprob: tok.logprob ?? 0,
    bytes: [...Buffer.from(token, "utf8")],
    top_logprobs: (tok.topLogprobs ?? []).map((t) => ({ token: t.token, logprob: t.logprob, bytes: [...Buffer.from(t.token, "utf8")] })),
  };
}

/** Validate a /v1/chat/completions body once. */
export function chatRequest(engine: Engine, req: Request, arrivedAt: number): GenerationRequest {
  const parsed = chatRequestSchema.safeParse(req.body);
  if (!parsed.success) throw fromZodError(parsed.error, req.body);
  const body = parsed.data;
  const budget = mergeBudgetHeaders(req.headers, body.latency_budget);
  if (body.top_logprobs !== null && body.top_logprobs !== undefined && body.logprobs !== true) {
    throw invalidField("top_logprobs", "'top_logprobs' requires 'logprobs' to be true.");
  }
  const maxTokensParam = body.max_completion_tokens !== null && body.max_completion_tokens !== undefined ? "max_completion_tokens" : "max_tokens";
  return buildRequest(engine, body, [encodeText(engine, renderChat(body.messages, assistantCue(engine.tokenizer)))], {
    promptParam: "messages",
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? undefined,
    maxTokensParam,
    logprobs: body.logprobs === true ? (body.top_logprobs ?? 0) : undefined,
    n: body.n ?? undefined,
    extraStop: CHAT_TEMPLATE_STOPS,
  }, arrivedAt, budget);
}

/** The chat.completion format of a planned request. */
function chatFormat(engine: Engine, planned: PlannedRequest): ResponseFormat {
  const { request, choices } = planned;
  const id = `chatcmpl-${randomUUID().replace(/-/g, "")}`;
  const created = Math.floor(Date.now() / 1000);
  const wantLogprobs = request.logprobs !== undefined;
  return {
    envelope: { id, object: "chat.completion.chunk", created, model: planned.model },
    opening: () => choices.map((_, j) => ({ index: j, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null, chains: planned.chains })),
    token: (j, tok) => ({ index: j, delta: { content: tok.text }, logprobs: wantLogprobs ? { content: [chatLogprob(engine, tok)], refusal: null } : null, finish_reason: null, chains: tok.chains }),
    finished: (j, r) => ({ index: j, delta: r.summary?.tailText ? { content: r.summary.tailText } : {}, logprobs: null, finish_reason: r.finishReason, ...choiceExtensions(r) }),
    response: (results) => ({
      id,
      object: "chat.completion",
      created,
      model: planned.model,
      chains: planned.chains,
      choices: results.map((r, j) => ({
        index: j,
        message: { role: "assistant", content: r.text, refusal: null },
        logprobs: wantLogprobs ? { content: r.tokens.map((t) => chatLogprob(engine, t)), refusal: null } : null,
        finish_reason: r.finishReason,
        ...choiceExtensions(r),
      })),
      usage: totalUsage(planned, results),
    }),
  };
}

export const chatRoute = (ctx: ServerContext) => completionRoute(ctx, "chat", { request: chatRequest, format: chatFormat });
