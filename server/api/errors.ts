// Errors at the edge: every failure is a ColmError (models/errors.ts); this file is the one place
// that maps its kind to an HTTP status and an OpenAI-shaped body, {error: {message, type, param,
// code}}, sent as a response, an SSE event or a WebSocket message.
import type { NextFunction, Request, Response } from "express";
import type { ZodError } from "zod";
import { ColmError, type ErrorKind } from "../../models/errors.ts";

export { ColmError };

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

const STATUS: Record<ErrorKind, number> = {
  invalid_request: 400,
  unauthorized: 401,
  not_found: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  unsupported_media: 415,
  upgrade_required: 426,
  rate_limited: 429,
  internal: 500,
  unavailable: 503,
};

/** An error the API layer raises itself; it may name HTTP headers of its own (Allow, Upgrade). */
export class ApiError extends ColmError {
  override name = "ApiError";
  constructor(
    message: string,
    kind: ErrorKind,
    code: string | null = null,
    param: string | null = null,
    readonly headers: Readonly<Record<string, string>> = {},
    retryAfterSeconds?: number,
  ) {
    super(message, kind, code, param, retryAfterSeconds);
  }
}

export function httpStatus(err: ColmError): number {
  return STATUS[err.kind];
}

/** OpenAI's error type for a kind: rate limits and server faults have their own, the rest are the request's. */
function errorType(kind: ErrorKind): string {
  if (kind === "rate_limited") return "rate_limit_error";
  return STATUS[kind] >= 500 ? "server_error" : "invalid_request_error";
}

export function errorBody(err: ColmError): ErrorBody {
  return { error: { message: err.message, type: errorType(err.kind), param: err.param, code: err.code } };
}

export function errorHeaders(err: ColmError): Record<string, string> {
  const headers: Record<string, string> = err instanceof ApiError ? { ...err.headers } : {};
  if (err.retryAfterSeconds !== undefined) headers["Retry-After"] = String(err.retryAfterSeconds);
  return headers;
}

/** The WebSocket form of an error: {type: "error", id?, error, retry_after?}. */
export function wsErrorMessage(err: ColmError, id?: string | number) {
  return {
    type: "error",
    ...(id !== undefined ? { id } : {}),
    ...errorBody(err),
    ...(err.retryAfterSeconds !== undefined ? { retry_after: err.retryAfterSeconds } : {}),
  };
}

/** 400: a field is missing, has the wrong type or is out of range; `param` names it. */
export function invalidField(param: string | null, message: string, code: string | null = "invalid_value"): ApiError {
  return new ApiError(message, "invalid_request", code, param);
}

export function modelNotFound(model: string): ApiError {
  return new ApiError(`The model '${model}' does not exist.`, "not_found", "model_not_found", "model");
}

export function routeNotFound(method: string, path: string): ApiError {
  return new ApiError(`Unknown route: ${method} ${path}`, "not_found", "not_found");
}

export function methodNotAllowed(method: string, path: string, allow: string): ApiError {
  return new ApiError(`Method ${method} is not allowed on ${path}; use ${allow}.`, "method_not_allowed", "method_not_allowed", null, { Allow: allow });
}

export function upgradeRequired(path: string): ApiError {
  return new ApiError(`${path} is a WebSocket endpoint: connect with a WebSocket client.`, "upgrade_required", "upgrade_required", null, { Upgrade: "websocket" });
}

export function bodyTooLarge(limit: string | number): ApiError {
  return new ApiError(`Request body is larger than the limit (${typeof limit === "number" ? `${limit} bytes` : limit}).`, "payload_too_large", "request_too_large");
}

export function invalidApiKey(): ApiError {
  return new ApiError("Missing or incorrect API key. Send 'Authorization: Bearer <key>'.", "unauthorized", "invalid_api_key");
}

export function serviceUnavailable(reason: "draining" | "loading"): ApiError {
  const message = reason === "draining" ? "The server is shutting down and accepts no new requests." : "The model is still loading.";
  return new ApiError(message, "unavailable", reason === "draining" ? "server_draining" : "model_loading", null, {}, 5);
}

export function internalError(message = "The server hit an internal error while generating."): ApiError {
  return new ApiError(message, "internal", "internal_error");
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

/** The value at `path` in `input` (undefined when any step is missing). */
function valueAt(input: unknown, path: ReadonlyArray<PropertyKey>): unknown {
  let v = input;
  for (const seg of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[seg];
  }
  return v;
}

/** The first zod issue as a 400 naming its field; a field that is absent is said to be required. */
/**
 * A union's issue → the issue of the one branch the value's type matched (the only branch whose
 * issue lies deeper than the union, e.g. a bad field inside the object branch), with its full path;
 * when several branches got that far the value is ambiguous and the union's own issue stands.
 */
function branchIssue(issue: ZodError["issues"][number]): ZodError["issues"][number] {
  if (issue.code !== "invalid_union") return issue;
  const deeper = issue.errors.map((branch) => branch[0]).filter((inner) => inner && inner.path.length > 0);
  if (deeper.length !== 1) return issue;
  return branchIssue({ ...deeper[0], path: [...issue.path, ...deeper[0].path] });
}

export function fromZodError(err: ZodError, input: unknown): ApiError {
  const issue = err.issues[0] && branchIssue(err.issues[0]);
  if (!issue) return invalidField(null, "Invalid request.");
  let path = issue.path;
  // Unrecognized keys: name the offending key itself.
  if (issue.code === "unrecognized_keys" && issue.keys.length > 0) path = [...path, issue.keys[0]];
  const param = formatPath(path);
  if (param && issue.code !== "unrecognized_keys" && valueAt(input, path) === undefined) {
    return invalidField(param, `Missing required parameter: '${param}'.`, "missing_required_parameter");
  }
  const message = param ? `Invalid value for '${param}': ${issue.message}` : `Invalid request: ${issue.message}`;
  return invalidField(param, message);
}

/** Anything thrown → a ColmError (unknown errors become an internal error with a generic message). */
export function toColmError(err: unknown): ColmError {
  if (err instanceof ColmError) return err.kind === "internal" && !(err instanceof ApiError) ? internalError() : err;
  // body-parser errors (express.json)
  const e = err as { type?: string; status?: number; limit?: number } | undefined;
  if (e?.type === "entity.too.large") return bodyTooLarge(e.limit ?? "limit");
  if (e?.type === "entity.parse.failed") return invalidField(null, "The request body is not valid JSON.", "invalid_json");
  if (e?.type === "encoding.unsupported" || e?.type === "charset.unsupported") {
    return new ApiError("Unsupported body encoding.", "unsupported_media", "unsupported_encoding");
  }
  if (typeof e?.status === "number" && e.status >= 400 && e.status < 500) {
    return new ApiError((err as Error).message || "Bad request.", "invalid_request");
  }
  return internalError();
}

export function sendError(res: Response, err: ColmError): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.status(httpStatus(err)).set(errorHeaders(err)).json(errorBody(err));
}

/** Log what the client is not told: the stack of a server fault. */
export function logIfInternal(log: (line: string) => void, label: string, err: unknown, mapped: ColmError): void {
  if (mapped.kind === "internal") log(`${label} error: ${(err as Error)?.stack ?? String(err)}`);
}

/** Express error middleware (must keep 4 parameters). */
export function errorMiddleware(log: (msg: string) => void) {
  return (err: unknown, _req: Request, res: Response, _next: NextFunction): void => {
    const mapped = toColmError(err);
    logIfInternal(log, "request", err, mapped);
    sendError(res, mapped);
  };
}
