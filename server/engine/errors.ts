// The engine's own refusal of a request, shared by the engine's up-front checks and the
// scheduler's per-token ones; the API layer maps it to a 400 (server/errors.ts).

/** A request the engine cannot serve; `code` follows OpenAI's error codes where one exists. */
export class EngineError extends Error {
  override name = "EngineError";
  constructor(
    message: string,
    readonly code: "context_length_exceeded" | "invalid_prompt" | "invalid_chains" | "invalid_max_tokens" | "invalid_prompt_logprobs",
    readonly param?: string,
  ) {
    super(message);
  }
}
