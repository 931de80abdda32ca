// POST /v1/chat/completions: messages → prompt by a fixed plain-text template, then the same
// generation path as /v1/completions.
//
// Chat template (documented in the README):
//   each message becomes   "<Role>: <content>\n\n"
//   with Role = System (system, developer), User, Assistant, Tool; content parts are joined;
//   the prompt ends with   "Assistant: "
//   and the generation stops (not emitted) at "\nUser:" or "\nSystem:" besides the request's stops.
import { randomUUID } from "node:crypto";
import type { Request, Response } from "express";
import type { Engine, GeneratedToken } from "../engine/types.ts";
import { admitHttp, apiRoute, kvReservation, type ServerContext } from "./context.ts";
import { fromZodError, invalidField, toApiError } from "./errors.ts";
import { runChoices, type GenerationResult } from "./generation.ts";
import { chainFields } from "./completions.ts";
import { encodeText, prepare, usage } from "./request.ts";
import { mergeBudgetHeaders, planChains } from "../policy/latency-router.ts";
import { modelId } from "./router.ts";
import { chatRequestSchema, type ChatMessage } from "./schemas.ts";
import { SseWriter } from "./sse.ts";

const ROLE_NAMES: Record<ChatMessage["role"], string> = {
  system: "System",
  developer: "System",
  user: "User",
  assistant: "Assistant",
  tool: "Tool",
};

/** Stop strings the template adds, so the model does not write the next turn. */
export const CHAT_TEMPLATE_STOPS = ["\nUser:", "\nSystem:"];

export function messageText(m: ChatMessage): string {
  if (m.content === null || m.content === undefined) return "";
  if (typeof m.content === "string") return m.content;
  return m.content.map((p) => p.text).join("");
}

/** Render messages with the chat template (see the header of this file). */
export function renderChat(messages: ChatMessage[]): string {
  let out = "";
  for (const m of messages) out += `${ROLE_NAMES[m.role]}: ${messageText(m)}\n\n`;
  return out + "Assistant: ";
}

function chatLogprob(engine: Engine, tok: GeneratedToken) {
  const token = engine.tokenizer.decode([tok.tokenId]);
  return {
    token,
    logprob: tok.logprob ?? 0,
    bytes: [...Buffer.from(token, "utf8")],
    top_logprobs: (tok.topLogprobs ?? []).map((t) => ({ token: t.token, logprob: t.logprob, bytes: [...Buffer.from(t.token, "utf8")] })),
  };
}

export async function handleChat(ctx: ServerContext, req: Request, res: Response): Promise<void> {
  const arrivedAt = performance.now();
  const parsed = chatRequestSchema.safeParse(req.body);
  if (!parsed.success) throw fromZodError(parsed.error);
  const body = parsed.data;
  body.latency_budget = mergeBudgetHeaders(req.headers, body.latency_budget);
  const engine = ctx.engine();
  if (body.top_logprobs !== null && body.top_logprobs !== undefined && body.logprobs !== true) {
    throw invalidField("top_logprobs", "'top_logprobs' requires 'logprobs' to be true.");
  }
  const logprobs = body.logprobs === true ? (body.top_logprobs ?? 0) : undefined;
  const n = body.n ?? 1;
  const prompt = encodeText(engine, renderChat(body.messages));
  const prep = prepare(engine, body, [prompt], {
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? undefined,
    promptParam: "messages",
    logprobs,
    extraStop: CHAT_TEMPLATE_STOPS,
  });
  const chainPlan = planChains(ctx, prep, prompt.length);
  const chains = chainPlan.chains;
  const controls = Array.from({ length: n }, () => chainPlan.control());
  const gen = await admitHttp(ctx, res, n, kvReservation(engine, Array(n).fill(prompt.length), prep.maxTokens));
  const id = `chatcmpl-${randomUUID().replace(/-/g, "")}`;
  const created = Math.floor(Date.now() / 1000);
  const model = modelId(engine.info, chains);
  const specs = controls.map((control, j) => ({
    prompt,
    maxTokens: prep.maxTokens,
    sampling: prep.sampling.seed !== undefined ? { ...prep.sampling, seed: prep.sampling.seed + j } : prep.sampling,
    stop: prep.stop,
    control,
    latencyBudget: prep.latencyBudget,
    arrivedAt,
  }));
  const base = { id, object: "chat.completion.chunk", created, model };
  try {
    if (body.stream) {
      const sse = new SseWriter(res, gen.clientGone);
      const extra = body.stream_options?.include_usage === true ? { usage: null } : {};
      sse.open();
      for (let j = 0; j < n; j++) {
        await sse.send({ ...base, choices: [{ index: j, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null, chains }], ...extra });
      }
      let results: GenerationResult[];
      try {
        results = await runChoices(ctx, specs, gen.signal, async (j, tok) => {
          const lp = logprobs !== undefined ? { content: [chatLogprob(engine, tok)], refusal: null } : null;
          await sse.send({ ...base, choices: [{ index: j, delta: { content: tok.text }, logprobs: lp, finish_reason: null, chains: tok.chains }], ...extra });
        });
      } catch (err) {
        ctx.log(`stream error: ${(err as Error)?.stack ?? String(err)}`);
        await sse.send(toApiError(err).toBody());
        await sse.done();
        return;
      }
      if (res.destroyed) return;
      for (let j = 0; j < n; j++) {
        const r = results[j];
        const delta = r.summary?.tailText ? { content: r.summary.tailText } : {};
        await sse.send({ ...base, choices: [{ index: j, delta, logprobs: null, finish_reason: r.finishReason, ...chainFields(r) }], ...extra });
      }
      if (extra.usage !== undefined) {
        await sse.send({ ...base, choices: [], usage: usage(prompt.length, results.reduce((a, r) => a + r.completionTokens, 0)) });
      }
      await sse.done();
      return;
    }
    const results = await runChoices(ctx, specs, gen.signal, () => undefined);
    if (gen.signal.aborted && res.destroyed) return;
    res.json({
      id,
      object: "chat.completion",
      created,
      model,
      chains,
      choices: results.map((r, j) => ({
        index: j,
        message: { role: "assistant", content: r.text, refusal: null },
        logprobs: logprobs !== undefined ? { content: r.tokens.map((t) => chatLogprob(engine, t)), refusal: null } : null,
        finish_reason: r.finishReason,
        ...chainFields(r),
      })),
      usage: usage(prompt.length, results.reduce((a, r) => a + r.completionTokens, 0)),
    });
  } finally {
    gen.release();
  }
}

export const chatRoute = (ctx: ServerContext) => apiRoute(ctx, "chat", handleChat);
