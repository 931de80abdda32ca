// npm run bench:model -- [--dir=models/colm-kjv] [--quant f32|q8|q4] — decode tokens/s per chain
// count and chain-1 prefill for one real checkpoint (default: the bundled model), for its card and
// the README; with --quant, at that precision (quantized at load), plus the held-out validation
// loss per k at f32 and at that precision in the same run (loadtest/model-quality.ts: the model's
// own held-out split; --windows N for an evenly spread subset). Writes loadtest/results/<name>.json (<name>-q8.json, <name>-q4.json).
import { basename } from "node:path";
import { readConfig } from "../models/config.ts";
import { PRECISIONS, type Precision } from "../models/quantized.ts";
import { loadModel } from "../server/engine/engine.ts";
import { measureModel } from "./engine-figures.ts";
import { validationLoss, validationSplit } from "./model-quality.ts";
import { BenchArgs, writeResult } from "./results.ts";

const args = new BenchArgs();
const dir = args.get("dir") ?? "models/colm-kjv";
const quant = (args.get("quant") ?? "f32") as Precision;
if (!PRECISIONS.includes(quant)) throw new Error(`--quant must be f32, q8 or q4, got ${JSON.stringify(quant)}`);
const config = readConfig(`${dir}/config.json`);
const prompt = Math.min(args.num("prompt", 200), config.max_position - 1);
const context = Math.min(args.num("context", 128), config.max_position - 64);
const figures = await measureModel(dir, { prompts: [prompt], context, decodeSteps: args.num("steps", 48), repeats: args.num("repeats", 5), quant });
const name = config.name ?? basename(dir);

/** Validation loss per k at each precision, f32 first (the reference the quantized one is held to). */
async function quality(): Promise<Record<string, unknown>> {
  const split = validationSplit(dir, config);
  const windows = args.num("windows", Infinity);
  const losses: Partial<Record<Precision, number[]>> = {};
  for (const p of [...new Set<Precision>(["f32", quant])]) {
    const engine = await loadModel(dir, { quant: p });
    losses[p] = await validationLoss(engine, split.tokens, split.context, windows);
    await engine.close();
  }
  const q = losses[quant]!;
  return {
    val_loss: losses,
    val_split: split.split,
    val_window_tokens: split.context,
    val_windows: Number.isFinite(windows) ? windows : "all",
    val_loss_over_f32: q.map((x, i) => x / losses.f32![i]),
    val_loss_strictly_improving_with_k: q.every((x, i) => i === 0 || x < q[i - 1]),
  };
}
const quality_ = quant === "f32" && !args.has("windows") ? {} : await quality();
const result = { model: name, precision: quant, decode_context_tokens: context, ...figures, ...quality_ };
writeResult(quant === "f32" ? name : `${name}-${quant}`, "bench:model", result);
const d = figures.decode_tokens_per_s;
console.log(`${name} at ${quant}: decode tok/s (batch 1, ${context} tokens of context): ${Object.entries(d).map(([k, v]) => `k=${k} ${v.toFixed(0)}`).join(", ")}`);
const p = figures.prefill[String(prompt)];
console.log(`prefill ${prompt} tokens: full ${p.full_ms.toFixed(1)} ms, chain-1 ${p.chain1_ms?.toFixed(1)} ms (${p.speedup?.toFixed(2)}×)`);
if ("val_loss" in quality_) {
  const l = quality_.val_loss as Record<string, number[]>;
  const ratio = quality_.val_loss_over_f32 as number[];
  for (const [prec, xs] of Object.entries(l)) console.log(`validation loss (nats/token) at ${prec}: ${xs.map((x, i) => `k=${i + 1} ${x.toFixed(4)}`).join(", ")}`);
  console.log(`${quant} ÷ f32: ${ratio.map((x, i) => `k=${i + 1} ${x.toFixed(4)}`).join(", ")}; strictly improving with k: ${quality_.val_loss_strictly_improving_with_k}`);
}
