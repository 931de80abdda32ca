// randomCheckpoint: writes a spec-conformant CoLM-Air checkpoint (spec §4) with seeded random
// weights and exactly-zero masked blocks. Tests and benchmarks run on these.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig, type ColmConfig, type ColmConfigJson } from "../models/config.ts";
import { writeSafetensors, type TensorToWrite } from "../models/safetensors.ts";
import { SeededRng, type Rng } from "./rng.ts";

/** Normal(0, std²) samples from a seeded generator (Box–Muller). */
function gaussian(rng: Rng, n: number, std: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - rng.next())) * std;
    const a = 2 * Math.PI * rng.next();
    out[i] = r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

/** Dense [out, in] chain-masked matrix: output chain i reads input columns [0, inPrefix[i+1]). */
function chainMasked(rng: Rng, outPrefix: number[], inPrefix: number[], scale: number): Float32Array {
  const n = outPrefix.length - 1;
  const inTotal = inPrefix[n];
  const w = new Float32Array(outPrefix[n] * inTotal);
  for (let i = 0; i < n; i++) {
    const inW = inPrefix[i + 1];
    const std = scale / Math.sqrt(inW);
    for (let r = outPrefix[i]; r < outPrefix[i + 1]; r++) w.set(gaussian(rng, inW, std), r * inTotal);
  }
  return w;
}

export function randomTensors(config: ColmConfig, seed: number): (TensorToWrite & { data: Float32Array })[] {
  const rng = new SeededRng(seed);
  const { dk, fk, hidden: D, vocab_size: V, kvWidth } = config;
  const c1 = config.chainWidths[0];
  const F = fk[config.nChains];
  const gain = (): Float32Array => gaussian(rng, D, 0.1).map((x) => 1 + x);
  const residualScale = 1 / Math.sqrt(2 * config.n_layers);
  const t: (TensorToWrite & { data: Float32Array })[] = [{ name: "embed.weight", shape: [V, D], data: gaussian(rng, V * D, 0.5) }];
  for (let l = 0; l < config.n_layers; l++) {
    const p = `layers.${l}.`;
    t.push(
      { name: p + "attn_norm.weight", shape: [D], data: gain() },
      { name: p + "attn.q_proj.weight", shape: [D, D], data: chainMasked(rng, dk, dk, 1) },
      { name: p + "attn.k_proj.weight", shape: [kvWidth, c1], data: gaussian(rng, kvWidth * c1, 1 / Math.sqrt(c1)) },
      { name: p + "attn.v_proj.weight", shape: [kvWidth, c1], data: gaussian(rng, kvWidth * c1, 1 / Math.sqrt(c1)) },
      { name: p + "attn.o_proj.weight", shape: [D, D], data: chainMasked(rng, dk, dk, residualScale) },
      { name: p + "ffn_norm.weight", shape: [D], data: gain() },
      { name: p + "ffn.gate_proj.weight", shape: [F, D], data: chainMasked(rng, fk, dk, 1) },
      { name: p + "ffn.up_proj.weight", shape: [F, D], data: chainMasked(rng, fk, dk, 1) },
      { name: p + "ffn.down_proj.weight", shape: [D, F], data: chainMasked(rng, dk, fk, residualScale) },
    );
  }
  t.push({ name: "norm.weight", shape: [D], data: gain() });
  if (!config.tie_embeddings) t.push({ name: "lm_head.weight", shape: [V, D], data: gaussian(rng, V * D, 1 / Math.sqrt(D)) });
  return t;
}

/** Writes config.json and model.safetensors with random weights into `dir`. */
export function writeRandomCheckpoint(dir: string, configJson: ColmConfigJson, seed: number): ColmConfig {
  const config = parseConfig(configJson);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(configJson, null, 2) + "\n");
  writeSafetensors(join(dir, "model.safetensors"), randomTensors(config, seed), { format: "pt", seed: String(seed) });
  return config;
}
