// The server's public API as the playground uses it: the API key (kept in this tab's
// sessionStorage only), JSON fetches with `Authorization: Bearer`, and the server's OpenAI-style
// error object carried as an exception.

const KEY_STORAGE = "colm-serve-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) ?? "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** A failed API call: `error` is the server's {message, type, param, code} (or one made up for a network failure). */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.error = error;
  }
}

/** The OpenAI-style error object out of any failure (a server answer, a network error, a bug). */
export function errorObject(err) {
  if (err instanceof ApiError) return err.error;
  return { message: err instanceof Error ? err.message : String(err), type: "client_error", param: null, code: null };
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function get(path) {
  let res;
  try {
    res = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, { message: `Cannot reach the server (${err.message}).`, type: "network_error", param: null, code: null });
  }
  if (res.ok) return res;
  let error;
  try {
    error = (await res.json()).error;
  } catch {
    error = undefined;
  }
  throw new ApiError(res.status, error ?? { message: `${path} answered HTTP ${res.status}.`, type: "http_error", param: null, code: String(res.status) });
}

export async function getJson(path) {
  return (await get(path)).json();
}

export async function getText(path) {
  return (await get(path)).text();
}

/**
 * Prometheus text format → Map "name{labels}" and "name" → value (the unlabelled key sums over
 * the labelled samples). Enough for the gauges and counters the panel shows.
 */
export function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    values.set(m[1] + (m[2] ?? ""), v);
    if (m[2]) values.set(m[1], (values.get(m[1]) ?? 0) + v);
  }
  return values;
}
