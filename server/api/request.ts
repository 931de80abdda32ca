// A request validated once, at the edge: every front end (completions, chat, WebSocket) turns its
// body into a GenerationRequest here, and nothing after this point checks a field again. Every
// refusal names the field at fault.
import { checkContext, checkPrompt } from "../engine/errors.ts";
import type { Engine, ModelInfo, SamplingOptions } from "../engine/types.ts";
import type { LatencyBudget } from "../policy/latency-router.ts";
import type { SpeculativeRequest } from "../policy/draft-policy.ts";
import { invalidField } from "./errors.ts";
import { chainsOfModelId } from "./models.ts";

/** The fields every request kind shares (after zod). */
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
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
  cache_salt?: string | null;
  cache?: boolean | null;
  speculative?: boolean | { draft_chains?: number; max_draft?: number } | null;
}

/** One prompt: its token ids and the text it came from (for echo). */
export interface PromptInput {
  ids: number[];
  text: string;
}

/** A checked, typed generation request: what the pipeline plans, admits and runs. */
export interface GenerationRequest {
  prompts: PromptInput[];
  /** Choices per prompt. */
  n: number;
  maxTokens: number;
  sampling: SamplingOptions;
  stop: string[];
  /** Chain count fixed by the request (`:c<k>` or `chains`); undefined = elastic. */
  fixedChains?: number;
  latencyBudget?: LatencyBudget;
  /** Top-N alternatives per token; undefined = no logprobs. */
  logprobs?: number;
  echo: boolean;
  stream: boolean;
  includeUsage: boolean;
  /** Whether the prefix cache serves (and keeps) this request's prompts, and the salt it is shared under. */
  cache: boolean;
  cacheSalt?: string;
  /** Self-speculative decoding as the request asked (undefined: the server's default). */
  speculative?: SpeculativeRequest;
  /** performance.now() at arrival (TTFT and end-to-end are measured from it). */
  arrivedAt: number;
}

export interface RequestShape {
  /** The field that holds the prompt ("prompt" or "messages"), named by prompt errors. */
  promptParam: string;
  /** max_tokens as asked and the field that asked it; undefined: `defaultMaxTokens`, clamped to the room left, or all of it. */
  maxTokens?: number;
  maxTokensParam?: string;
  defaultMaxTokens?: number;
  logprobs?: number;
  n?: number;
  echo?: boolean;
  /** Stops the front end adds (the chat template's). */
  extraStop?: readonly string[];
}

/** Text → token ids, with BOS prepended when the model has one. */
export function encodeText(engine: Engine, text: string): PromptInput {
  const ids = engine.tokenizer.encode(text);
  const bos = engine.info.bosTokenId;
  return { ids: bos !== null && bos !== undefined ? [bos, ...ids] : ids, text };
}

/** Token ids given by the client (checked against the vocabulary) → a prompt. */
export function tokenPrompt(engine: Engine, ids: number[], param: string): PromptInput {
  checkPrompt(ids, engine.info, param);
  return { ids, text: engine.tokenizer.decode(ids) };
}

const BUDGET_HEADERS: Array<[keyof LatencyBudget, string]> = [
  ["ttft_ms", "x-latency-budget-ttft-ms"],
  ["tpot_ms", "x-latency-budget-tpot-ms"],
  ["total_ms", "x-latency-budget-total-ms"],
];

function hasBudget(b: LatencyBudget): boolean {
  return b.ttft_ms !== undefined || b.tpot_ms !== undefined || b.total_ms !== undefined;
}

/**
 * The request's budget: the body's `latency_budget` over the `X-Latency-Budget-*` headers, field
 * by field (a body field wins). A header that is not a positive number is a 400.
 */
export function mergeBudgetHeaders(headers: Record<string, string | string[] | undefined>, body: LatencyBudget | null | undefined): LatencyBudget | undefined {
  const fromHeaders: LatencyBudget = {};
  for (const [field, name] of BUDGET_HEADERS) {
    const raw = headers[name];
    if (raw === undefined) continue;
    const text = Array.isArray(raw) ? raw[0] : raw;
    const v = Number(text);
    if (text.trim() === "" || !Number.isFinite(v) || v <= 0) {
      throw invalidField(null, `Invalid header '${name}': must be a positive number of milliseconds, got '${text}'.`, "invalid_header");
    }
    fromHeaders[field] = v;
  }
  const merged: LatencyBudget = { ...fromHeaders, ...Object.fromEntries(Object.entries(body ?? {}).filter(([, v]) => v !== undefined)) };
  return hasBudget(merged) ? merged : undefined;
}

/** `model` and the `chains` extension → the fixed chain count, if any. */
export function fixedChainsOf(model: string, chains: number | null | undefined, info: ModelInfo): number | undefined {
  const fixed = chainsOfModelId(model, info);
  if (chains === null || chains === undefined) return fixed;
  if (chains < 1 || chains > info.nChains) throw invalidField("chains", `Invalid value for 'chains': must be an integer from 1 to ${info.nChains}.`);
  if (fixed !== undefined && fixed !== chains) throw invalidField("chains", `'chains' (${chains}) contradicts the model id '${model}' (${fixed} chains).`);
  return chains;
}

export function samplingOptions(body: SamplingFields, info: ModelInfo, logprobs: number | undefined): SamplingOptions {
  const s: SamplingOptions = {};
  const set = <K extends keyof SamplingOptions>(key: K, value: SamplingOptions[K] | null | undefined) => {
    if (value !== null && value !== undefined) s[key] = value;
  };
  set("temperature", body.temperature);
  if (body.top_p === 0) s.temperature = 0; // top_p 0 keeps only the most likely token
  else set("topP", body.top_p);
  if (body.top_k !== null && body.top_k !== undefined) s.topK = body.top_k < 0 ? 0 : body.top_k;
  set("minP", body.min_p);
  set("presencePenalty", body.presence_penalty);
  set("frequencyPenalty", body.frequency_penalty);
  set("repetitionPenalty", body.repetition_penalty);
  set("seed", body.seed);
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
  set("logprobs", logprobs);
  return s;
}

function stopList(stop: string | string[] | null | undefined): string[] {
  if (stop === null || stop === undefined) return [];
  return typeof stop === "string" ? [stop] : [...stop];
}

/** The `speculative` field → what the request asked (nothing: the server decides). */
function speculativeOf(field: SamplingFields["speculative"], info: ModelInfo): { speculative?: SpeculativeRequest } {
  if (field === null || field === undefined) return {};
  if (field === false) return { speculative: false };
  if (field === true) return { speculative: {} };
  const draftChains = field.draft_chains;
  if (draftChains !== undefined && draftChains >= info.nChains) {
    throw invalidField("speculative.draft_chains", `Invalid value for 'speculative.draft_chains': the draft must be a smaller sub-model than the largest, an integer from 1 to ${info.nChains - 1}.`);
  }
  return { speculative: { ...(draftChains !== undefined ? { draftChains } : {}), ...(field.max_draft !== undefined ? { maxDraft: field.max_draft } : {}) } };
}

/** How many tokens the completion may have: as asked (if it fits the context) or what the default leaves. */
function completionLength(info: ModelInfo, longest: number, shape: RequestShape): number {
  if (shape.maxTokens !== undefined) {
    checkContext(info, longest, shape.maxTokens, shape.promptParam, shape.maxTokensParam ?? "max_tokens");
    return shape.maxTokens;
  }
  const room = info.maxPosition - longest;
  if (room < 1) checkContext(info, longest, 1, shape.promptParam);
  return Math.min(room, shape.defaultMaxTokens ?? room);
}

/** The one place a request body becomes a GenerationRequest. */
export function buildRequest(engine: Engine, body: SamplingFields, prompts: PromptInput[], shape: RequestShape, arrivedAt: number, budget: LatencyBudget | undefined): GenerationRequest {
  const info = engine.info;
  const fixedChains = fixedChainsOf(body.model, body.chains, info);
  for (const p of prompts) checkPrompt(p.ids, info, shape.promptParam);
  const longest = Math.max(...prompts.map((p) => p.ids.length));
  const maxTokens = completionLength(info, longest, shape);
  return {
    prompts,
    n: shape.n ?? 1,
    maxTokens,
    sampling: samplingOptions(body, info, shape.logprobs),
    stop: [...stopList(body.stop), ...(shape.extraStop ?? [])],
    fixedChains,
    latencyBudget: budget,
    logprobs: shape.logprobs,
    echo: shape.echo ?? false,
    stream: body.stream === true,
    includeUsage: body.stream_options?.include_usage === true,
    cache: body.cache !== false,
    ...(body.cache_salt ? { cacheSalt: body.cache_salt } : {}),
    ...speculativeOf(body.speculative, info),
    arrivedAt,
  };
}

/** OpenAI's usage object; cached_tokens: prompt tokens served by the prefix cache. */
export function usage(promptTokens: number, completionTokens: number, cachedTokens: number) {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: cachedTokens },
  };
}
