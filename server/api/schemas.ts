// zod schemas for every request body and every WebSocket message.
// Optional OpenAI fields also accept `null` (meaning "not set"), as the OpenAI API does.
// Unknown top-level fields are ignored (stripped), as OpenAI-compatible servers usually do.
import { z } from "zod";
import { MAX_TOP_LOGPROBS } from "../../kernels/sampling.ts";
import { MAX_DRAFT_TOKENS } from "../policy/draft-policy.ts";

const MAX_N = 16;
const MAX_STOP = 4;

const int = () => z.number().int();

/** A latency budget (policy/latency-router.ts LatencyBudget), each part optional, in ms. */
export const latencyBudgetSchema = z.strictObject({
  ttft_ms: z.number().positive().finite().optional(),
  tpot_ms: z.number().positive().finite().optional(),
  total_ms: z.number().positive().finite().optional(),
});

const stopSchema = z.union([
  z.string().min(1, "stop strings must not be empty"),
  z.array(z.string().min(1, "stop strings must not be empty")).max(MAX_STOP, `at most ${MAX_STOP} stop strings`),
]);

/** Fields shared by /v1/completions, /v1/chat/completions and WS `generate`. */
const samplingFields = {
  model: z.string().min(1, "model is required"),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  top_k: int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  n: int().min(1).max(MAX_N).nullish(),
  stop: stopSchema.nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  seed: int().min(Number.MIN_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  repetition_penalty: z.number().gt(0).max(10).nullish(),
  logit_bias: z.record(z.string(), z.number().min(-100).max(100)).nullish(),
  user: z.string().nullish(),
  max_tokens: int().min(1).nullish(),
  // Extensions
  chains: int().min(1).nullish(),
  latency_budget: latencyBudgetSchema.nullish(),
  // Prefix caching (vLLM's cache_salt): blocks are shared only between requests with the same salt;
  // `cache: false` neither reads nor writes the prefix cache.
  cache_salt: z.string().min(1, "cache_salt must not be empty").max(256).nullish(),
  cache: z.boolean().nullish(),
  // Self-speculative decoding: false (off), true (on, defaults) or how (draft sub-model, drafts per
  // round); absent: the server's COLM_SPECULATIVE.
  speculative: z
    .union([
      z.boolean(),
      z.strictObject({
        draft_chains: int().min(1).optional(),
        max_draft: int().min(1).max(MAX_DRAFT_TOKENS).optional(),
      }),
    ])
    .nullish(),
};

const tokenIds = z.array(int().min(0)).min(1, "a token-id prompt must not be empty");

export const promptSchema = z.union([
  z.string(),
  z.array(z.string()).min(1, "prompt array must not be empty"),
  tokenIds,
  z.array(tokenIds).min(1, "prompt array must not be empty"),
]);

export const completionRequestSchema = z.object({
  ...samplingFields,
  prompt: promptSchema,
  logprobs: int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  echo: z.boolean().nullish(),
  // 0 scores the prompt without generating (echo with logprobs, as evaluation harnesses ask).
  max_tokens: int().min(0).nullish(),
});
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

const contentPartSchema = z.object({ type: z.literal("text"), text: z.string() });

/** Every role but the assistant's must say something (an assistant turn may be empty, as OpenAI allows). */
export const chatMessageSchema = z
  .object({
    role: z.enum(["system", "developer", "user", "assistant", "tool"]),
    content: z.union([z.string(), z.array(contentPartSchema)]).nullish(),
    name: z.string().nullish(),
  })
  .superRefine((m, ctx) => {
    if (m.role !== "assistant" && (m.content === null || m.content === undefined)) {
      ctx.addIssue({ code: "custom", path: ["content"], message: `a ${m.role} message needs content` });
    }
  });
export type ChatMessage = z.infer<typeof chatMessageSchema>;

export const chatRequestSchema = z.object({
  ...samplingFields,
  messages: z.array(chatMessageSchema).min(1, "messages must not be empty"),
  max_completion_tokens: int().min(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
});
export type ChatRequest = z.infer<typeof chatRequestSchema>;

// ---- WebSocket /v1/stream ----

export const wsIdSchema = z.union([z.string().min(1).max(128), int()]);

export const wsGenerateSchema = z.object({
  type: z.literal("generate"),
  id: wsIdSchema,
  ...samplingFields,
  prompt: z.union([z.string(), tokenIds]).optional(),
  messages: z.array(chatMessageSchema).min(1).optional(),
  logprobs: int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  n: z.literal(1).nullish(),
});
export type WsGenerate = z.infer<typeof wsGenerateSchema>;

export const wsSwitchSchema = z.object({ type: z.literal("switch"), id: wsIdSchema, chains: int().min(1) });
export const wsCancelSchema = z.object({ type: z.literal("cancel"), id: wsIdSchema });
export const wsPingSchema = z.object({ type: z.literal("ping") });

export const wsMessageSchema = z.discriminatedUnion("type", [wsGenerateSchema, wsSwitchSchema, wsCancelSchema, wsPingSchema]);
export type WsMessage = z.infer<typeof wsMessageSchema>;
