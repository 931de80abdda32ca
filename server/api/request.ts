// Turning a validated request body into what the engine needs: token-id prompts, sampling
// options, stop strings, max tokens (with the context-length check) and the chain count.
import type { Engine, ModelInfo, SamplingOptions } from "../engine/types.ts";
import { contextLengthExceeded, invalidField } from "./errors.ts";
import { chooseChains, resolveModel } from "./router.ts";
import type { LatencyBudget } from "./schemas.ts";

/** The sampling fields common to every request kind (after zod). */
export interface SamplingFields {
  model: string;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  seed?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  logit_bias?: Record<string, number> | null;
  stop?: string | string[] | null;
  chains?: number | null;
  latency_budget?: LatencyBudget | null;
}

export interface PreparedRequest {
  prompts: number[][];
  maxTokens: number;
  sampling: SamplingOptions;
  stop: string[];
  chains: number;
  /** True when the request fixed its size (`:c<k>` or `chains`). */
  fixed: boolean;
  latencyBudget?: LatencyBudget;
}

/** Text → token ids, with BOS prepended when the model has one. */
export function encodeText(engine: Engine, text: string): number[] {
  const ids = engine.tokenizer.encode(text);
  const bos = engine.info.bosTokenId;
  return bos !== null && bos !== undefined ? [bos, ...ids] : ids;
}

export function checkTokenIds(ids: number[], info: ModelInfo, param: string): void {
  for (const id of ids) {
    if (id >= info.vocabSize) {
      throw invalidField(param, `Invalid token id ${id} in '${param}': the vocabulary has ${info.vocabSize} tokens.`);
    }
  }
}

export function samplingOptions(body: SamplingFields, info: ModelInfo, logprobs: number | undefined): SamplingOptions {
  const s: SamplingOptions = {};
  if (body.temperature !== null && body.temperature !== undefined) s.temperature = body.temperature;
  if (body.top_p !== null && body.top_p !== undefined) {
    if (body.top_p === 0) s.temperature = 0; // top_p 0 keeps only the most likely token
    else s.topP = body.top_p;
  }
  if (body.top_k !== null && body.top_k !== undefined) s.topK = body.top_k < 0 ? 0 : body.top_k;
  if (body.min_p !== null && body.min_p !== undefined) s.minP = body.min_p;
  if (body.presence_penalty !== null && body.presence_penalty !== undefined) s.presencePenalty = body.presence_penalty;
  if (body.frequency_penalty !== null && body.frequency_penalty !== undefined) s.frequencyPenalty = body.frequency_penalty;
  if (body.repetition_penalty !== null && body.repetition_penalty !== undefined) s.repetitionPenalty = body.repetition_penalty;
  if (body.seed !== null && body.seed !== undefined) s.seed = body.seed;
  if (body.logit_bias) {
    const bias: Record<number, number> = {};
    for (const [key, value] of Object.entries(body.logit_bias)) {
      const id = Number(key);
      if (!/^\d+$/.test(key) || !(id < info.vocabSize)) {
        throw invalidField("logit_bias", `Invalid key '${key}' in 'logit_bias': keys are token ids from 0 to ${info.vocabSize - 1}.`);
      }
      bias[id] = value;
    }
    s.logitBias = bias;
  }
  if (logprobs !== undefined) s.logprobs = logprobs;
  return s;
}

export function stopList(stop: string | string[] | null | undefined): string[] {
  if (stop === null || stop === undefined) return [];
  return typeof stop === "string" ? [stop] : [...stop];
}

/**
 * Resolve model/chains, check every prompt against the context and pick max tokens.
 * `maxTokens` undefined: `defaultMaxTokens` (clamped to what the context leaves), or all of it.
 */
export function prepare(
  engine: Engine,
  body: SamplingFields,
  prompts: number[][],
  opts: { maxTokens?: number; defaultMaxTokens?: number; promptParam: string; logprobs?: number; extraStop?: string[] },
): PreparedRequest {
  const info = engine.info;
  const { fixedChains } = resolveModel(body.model, body.chains, info);
  const longest = Math.max(...prompts.map((p) => p.length));
  if (prompts.some((p) => p.length === 0)) throw invalidField(opts.promptParam, `'${opts.promptParam}' encodes to zero tokens and the model has no BOS token.`, "empty_prompt");
  let maxTokens: number;
  if (opts.maxTokens !== undefined) {
    maxTokens = opts.maxTokens;
    if (longest + maxTokens > info.maxPosition) throw contextLengthExceeded(opts.promptParam, info.maxPosition, longest, maxTokens);
  } else {
    const room = info.maxPosition - longest;
    if (room < 1) throw contextLengthExceeded(opts.promptParam, info.maxPosition, longest, 1);
    maxTokens = Math.min(room, opts.defaultMaxTokens ?? room);
  }
  const latencyBudget = body.latency_budget ?? undefined;
  const chains = chooseChains({ fixedChains, latencyBudget, promptTokens: longest, maxTokens }, info);
  return {
    prompts,
    maxTokens,
    sampling: samplingOptions(body, info, opts.logprobs),
    stop: [...stopList(body.stop), ...(opts.extraStop ?? [])],
    chains,
    fixed: fixedChains !== undefined,
    latencyBudget,
  };
}

export function usage(promptTokens: number, completionTokens: number) {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}
