// The one error base class of colm-serve. Every layer raises its failures as a ColmError subclass
// that says what kind of failure it is; only the API layer (server/api/errors.ts) turns a kind into
// an HTTP status, an SSE error event or a WebSocket error message, in one place, by `instanceof`.

/** What went wrong, as a client should read it. */
export type ErrorKind =
  | "invalid_request" // the request itself is wrong (a field is missing, malformed or out of range)
  | "unauthorized" // no or a wrong API key
  | "not_found" // no such model or route
  | "method_not_allowed"
  | "payload_too_large"
  | "unsupported_media"
  | "upgrade_required" // a WebSocket endpoint asked over plain HTTP
  | "rate_limited" // at capacity; retry later
  | "unavailable" // loading or draining; retry later
  | "internal"; // a fault of the server, not of the request

export class ColmError extends Error {
  override name = "ColmError";
  constructor(
    message: string,
    readonly kind: ErrorKind,
    /** Machine-readable code (OpenAI's where one exists, e.g. "context_length_exceeded"). */
    readonly code: string | null = null,
    /** The request field at fault, in the API's spelling (e.g. "messages[0].content"). */
    readonly param: string | null = null,
    /** Seconds a client should wait before retrying (rate_limited, unavailable). */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

/** A model folder that cannot be loaded (config, weights, tokenizer): the server's fault, not a request's. */
export class ModelLoadError extends ColmError {
  override name = "ModelLoadError";
  constructor(message: string) {
    super(message, "internal", "model_load_error");
  }
}
