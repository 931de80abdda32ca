// The engine's refusals of a request, and the checks that raise them. The API layer runs the same
// checks while it validates a request (naming the request's own fields), so each rule and its
// message live here once.
import { ColmError } from "../../models/errors.ts";
import type { ModelInfo } from "../../models/model-info.ts";

export type EngineErrorCode = "context_length_exceeded" | "empty_prompt" | "invalid_value";

/** A request the engine cannot serve; `code` follows OpenAI's error codes where one exists. */
export class EngineError extends ColmError {
  override name = "EngineError";
  constructor(
    message: string,
    override readonly code: EngineErrorCode,
    param: string | null = null,
  ) {
    super(message, "invalid_request", code, param);
  }
}

/**
 * Prompt + completion must fit the context. The field at fault is the prompt when it alone leaves
 * no room, else `maxTokensParam` (what asked for the completion's length).
 */
export function checkContext(info: ModelInfo, promptTokens: number, maxTokens: number, promptParam = "prompt", maxTokensParam = "max_tokens"): void {
  if (promptTokens + maxTokens <= info.maxPosition) return;
  throw new EngineError(
    `This model's maximum context length is ${info.maxPosition} tokens. However, you requested ` +
      `${promptTokens + maxTokens} tokens (${promptTokens} in the prompt, ${maxTokens} in the completion). ` +
      `Please reduce the prompt or the completion length.`,
    "context_length_exceeded",
    promptTokens >= info.maxPosition ? promptParam : maxTokensParam,
  );
}

/** Token ids must lie in the vocabulary; a prompt must hold at least one. */
export function checkPrompt(ids: readonly number[], info: ModelInfo, param = "prompt"): void {
  if (ids.length === 0) throw new EngineError(`'${param}' encodes to zero tokens and the model has no BOS token.`, "empty_prompt", param);
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= info.vocabSize) {
      throw new EngineError(`Invalid token id ${id} in '${param}': the vocabulary has ${info.vocabSize} tokens.`, "invalid_value", param);
    }
  }
}

/** A chain count must name a sub-model: 1 … n. */
export function checkChains(chains: number, info: ModelInfo, param = "chains"): void {
  if (Number.isInteger(chains) && chains >= 1 && chains <= info.nChains) return;
  throw new EngineError(`Invalid value for '${param}': must be an integer from 1 to ${info.nChains}.`, "invalid_value", param);
}
