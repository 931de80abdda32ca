// Model-size choice: which chain count k serves a request.
// `resolveModel` turns the request's `model` / `chains` into either a fixed size or "elastic".
// `chooseChains` is the choice without a cost model (fixed → as asked, elastic → the largest k);
// an app routes elastic requests by latency budget and load with server/latency-router.ts
// (planChains), which falls back to this choice when the context has no router.
import type { ModelInfo } from "../engine/types.ts";
import { invalidField, modelNotFound } from "./errors.ts";
import type { LatencyBudget } from "./schemas.ts";

export interface ChainRequest {
  /** Chain count fixed by the request (`model: "<name>:c<k>"` or `chains: k`); undefined = elastic. */
  fixedChains?: number;
  latencyBudget?: LatencyBudget;
  /** Prompt length in tokens and requested completion length (for a cost-aware router). */
  promptTokens: number;
  maxTokens: number;
}

/** The chain count to serve `request` with when nothing is known about costs. Fixed sizes are kept as asked. */
export function chooseChains(request: ChainRequest, info: ModelInfo): number {
  if (request.fixedChains !== undefined) return request.fixedChains;
  return info.nChains;
}

export function modelId(info: ModelInfo, chains: number): string {
  return `${info.name}:c${chains}`;
}

/** Parse `model` (+ the `chains` extension) against the loaded model. Throws ApiError. */
export function resolveModel(model: string, chains: number | null | undefined, info: ModelInfo): { fixedChains?: number } {
  let fixed: number | undefined;
  if (model !== info.name) {
    const m = /^(.*):c(\d+)$/.exec(model);
    if (!m || m[1] !== info.name) throw modelNotFound(model);
    const k = Number(m[2]);
    if (!(k >= 1 && k <= info.nChains) || String(k) !== m[2]) throw modelNotFound(model);
    fixed = k;
  }
  if (chains !== null && chains !== undefined) {
    if (chains < 1 || chains > info.nChains) {
      throw invalidField("chains", `Invalid value for 'chains': must be an integer from 1 to ${info.nChains}.`);
    }
    if (fixed !== undefined && fixed !== chains) {
      throw invalidField("chains", `'chains' (${chains}) contradicts the model id '${model}' (${fixed} chains).`);
    }
    fixed = chains;
  }
  return fixed === undefined ? {} : { fixedChains: fixed };
}
