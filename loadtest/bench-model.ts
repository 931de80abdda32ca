// npm run bench:model -- [--dir=models/colm-kjv] — decode tokens/s per chain count and chain-1
// prefill for one real checkpoint (default: the bundled model), for its card and the README.
// Writes loadtest/results/<name>.json.
import { basename } from "node:path";
import { readConfig } from "../models/config.ts";
import { measureModel } from "./engine-figures.ts";
import { BenchArgs, writeResult } from "./results.ts";

const args = new BenchArgs();
const dir = args.get("dir") ?? "models/colm-kjv";
const config = readConfig(`${dir}/config.json`);
const prompt = Math.min(args.num("prompt", 200), config.max_position - 1);
const context = Math.min(args.num("context", 128), config.max_position - 64);
const figures = await measureModel(dir, { prompts: [prompt], context, decodeSteps: args.num("steps", 48), repeats: args.num("repeats", 5) });
const name = config.name ?? basename(dir);
const result = {
  model: name,
  decode_context_tokens: context,
  ...figures,
};
writeResult(name, "bench:model", result);
const d = figures.decode_tokens_per_s;
console.log(`${name}: decode tok/s (batch 1, ${context} tokens of context): ${Object.entries(d).map(([k, v]) => `k=${k} ${v.toFixed(0)}`).join(", ")}`);
const p = figures.prefill[String(prompt)];
console.log(`prefill ${prompt} tokens: full ${p.full_ms.toFixed(1)} ms, chain-1 ${p.chain1_ms?.toFixed(1)} ms (${p.speedup?.toFixed(2)}×)`);
