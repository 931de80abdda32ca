// OpenAI-shaped errors: {error: {message, type, param, code}} and the HTTP status for each kind.
import type { NextFunction, Request, Response } from "express";
import type { ZodError } from "zod";

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  toBody(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400: a field is missing, has the wrong type or is out of range; `param` names it. */
export function invalidField(param: string | null, message: string, code: string | null = "invalid_value"): ApiError {
  return new ApiError(400, message, "invalid_request_error", param, code);
}

export function contextLengthExceeded(param: string, maxPosition: number, promptTokens: number, maxTokens: number): ApiError {
  return new ApiError(
    400,
    `This model's maximum context length is ${maxPosition} tokens. However, you requested ` +
      `${promptTokens + maxTokens} tokens (${promptTokens} in the prompt, ${maxTokens} in the completion). ` +
      `Please reduce the prompt or the completion length.`,
    "invalid_request_error",
    param,
    "context_length_exceeded",
  );
}

export function modelNotFound(model: string): ApiError {
  return new ApiError(404, `The model '${model}' does not exist.`, "invalid_request_error", "model", "model_not_found");
}

export function routeNotFound(method: string, path: string): ApiError {
  return new ApiError(404, `Unknown route: ${method} ${path}`, "invalid_request_error", null, "not_found");
}

export function methodNotAllowed(method: string, path: string, allow: string): ApiError {
  return new ApiError(405, `Method ${method} is not allowed on ${path}; use ${allow}.`, "invalid_request_error", null, "method_not_allowed", { Allow: allow });
}

export function bodyTooLarge(limit: string | number): ApiError {
  return new ApiError(413, `Request body is larger than the limit (${limit}).`, "invalid_request_error", null, "request_too_large");
}

export function invalidApiKey(): ApiError {
  return new ApiError(401, "Missing or incorrect API key. Send 'Authorization: Bearer <key>'.", "invalid_request_error", null, "invalid_api_key");
}

export function kvBudgetExceeded(needBytes: number, budgetBytes: number): ApiError {
  return new ApiError(
    400,
    `This request can grow to ${needBytes} bytes of KV cache (prompt + max_tokens, every choice), more than the server's KV budget of ${budgetBytes} bytes. Lower max_tokens or n.`,
    "invalid_request_error",
    "max_tokens",
    "kv_budget_exceeded",
  );
}

export function queueFull(retryAfterSeconds: number): ApiError {
  return new ApiError(
    429,
    "The server is at capacity (all generation slots busy and the waiting queue is full). Retry later.",
    "rate_limit_error",
    null,
    "queue_full",
    { "Retry-After": String(retryAfterSeconds) },
  );
}

export function serviceUnavailable(reason: "draining" | "loading"): ApiError {
  const message = reason === "draining" ? "The server is shutting down and accepts no new requests." : "The model is still loading.";
  return new ApiError(503, message, "server_error", null, reason === "draining" ? "server_draining" : "model_loading", { "Retry-After": "5" });
}

export function internalError(message = "The server hit an internal error while generating."): ApiError {
  return new ApiError(500, message, "server_error", null, "internal_error");
}

/** Format a zod path as `messages[0].content` (numbers as indices). */
export function formatPath(path: ReadonlyArray<PropertyKey>): string | null {
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out || null;
}

export function fromZodError(err: ZodError): ApiError {
  const issue = err.issues[0];
  if (!issue) return invalidField(null, "Invalid request.");
  let path = issue.path;
  // Unrecognized keys: name the offending key itself.
  if (issue.code === "unrecognized_keys" && issue.keys.length > 0) path = [...path, issue.keys[0]];
  const param = formatPath(path);
  const message = param ? `Invalid value for '${param}': ${issue.message}` : `Invalid request: ${issue.message}`;
  return invalidField(param, message);
}

/** Anything thrown → ApiError (unknown errors become 500 with a generic message). */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const e = err as { type?: string; status?: number; limit?: number; name?: string; code?: string; param?: string } | undefined;
  // The engine's own request checks (EngineError): a bad request, not a server fault.
  if (e?.name === "EngineError" && typeof e.code === "string") {
    const message = (err as Error).message;
    if (e.code === "context_length_exceeded") return new ApiError(400, message, "invalid_request_error", e.param ?? "prompt", e.code);
    return invalidField(e.param ?? null, message, "invalid_value");
  }
  // body-parser errors (express.json)
  if (e?.type === "entity.too.large") return bodyTooLarge(e.limit ?? "limit");
  if (e?.type === "entity.parse.failed") return invalidField(null, "The request body is not valid JSON.", "invalid_json");
  if (e?.type === "encoding.unsupported" || e?.type === "charset.unsupported") {
    return new ApiError(415, "Unsupported body encoding.", "invalid_request_error", null, "unsupported_encoding");
  }
  if (typeof e?.status === "number" && e.status >= 400 && e.status < 500) {
    return new ApiError(e.status, (err as Error).message || "Bad request.", "invalid_request_error", null, null);
  }
  return internalError();
}

export function sendError(res: Response, err: ApiError): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.status(err.status).set(err.headers).json(err.toBody());
}

/** Express error middleware (must keep 4 parameters). */
export function errorMiddleware(log: (msg: string) => void) {
  return (err: unknown, _req: Request, res: Response, _next: NextFunction): void => {
    const apiErr = toApiError(err);
    if (apiErr.status >= 500 && !(err instanceof ApiError)) log(`internal error: ${(err as Error)?.stack ?? String(err)}`);
    sendError(res, apiErr);
  };
}
