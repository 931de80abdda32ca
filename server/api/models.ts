// Model ids: the loaded model serves `<name>` (elastic: the server picks the size) and
// `<name>:c<k>` (sub-model k, fixed). /v1/models lists them all.
import type { ModelInfo } from "../engine/types.ts";
import { modelNotFound } from "./errors.ts";

export function modelId(info: ModelInfo, chains: number): string {
  return `${info.name}:c${chains}`;
}

/** The chain count a model id fixes (undefined: the elastic id). Throws a 404 for any other id. */
export function chainsOfModelId(model: string, info: ModelInfo): number | undefined {
  if (model === info.name) return undefined;
  const m = /^(.*):c(\d+)$/.exec(model);
  const k = m ? Number(m[2]) : NaN;
  if (!m || m[1] !== info.name || !(k >= 1 && k <= info.nChains) || String(k) !== m[2]) throw modelNotFound(model);
  return k;
}

/** The /v1/models entries: the elastic id first, then one per sub-model. */
export function modelEntries(info: ModelInfo, created: number) {
  const n = info.nChains;
  const entry = (id: string, k: number, elastic: boolean) => ({
    id,
    object: "model",
    created,
    owned_by: "colm-serve",
    chains: k,
    width: info.widths[k - 1],
    params: info.paramCounts[k - 1],
    max_position: info.maxPosition,
    precision: info.precision,
    elastic,
    ...(elastic ? { chain_options: Array.from({ length: n }, (_, i) => i + 1) } : {}),
  });
  return [entry(info.name, n, true), ...Array.from({ length: n }, (_, i) => entry(modelId(info, i + 1), i + 1, false))];
}
