// The layers import downward only: models → kernels → ops → server/engine → server/policy →
// server/api → server/main.ts. A file may import from its own layer or any layer below it; this
// test reads every source file's imports and names each one that reaches up.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, normalize, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Bottom first: the rank of a layer is its index. */
const LAYERS = ["models", "kernels", "ops", "server/engine", "server/policy", "server/api", "server/main.ts"];

function layerOf(path: string): number {
  const rel = relative(ROOT, path).split("\\").join("/");
  let best = -1;
  LAYERS.forEach((layer, rank) => {
    if (rel === layer || rel.startsWith(`${layer}/`)) best = rank;
  });
  return best;
}

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === "node_modules" || name === "train" ? [] : sources(path);
    return name.endsWith(".ts") ? [path] : [];
  });
}

function relativeImports(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const specs = [...text.matchAll(/(?:^|\s)(?:import|export)\s[^;]*?from\s+["'](\.{1,2}\/[^"']+)["']/gm)].map((m) => m[1]);
  specs.push(...[...text.matchAll(/import\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)/g)].map((m) => m[1]));
  return specs.map((spec) => normalize(join(dirname(file), spec)));
}

const files = ["models", "kernels", "ops", "server"].flatMap((d) => sources(join(ROOT, d)));

test("every source file belongs to a layer", () => {
  assert.ok(files.length > 30, `found only ${files.length} source files`);
  for (const f of files) assert.notEqual(layerOf(f), -1, `${relative(ROOT, f)} is in no layer`);
});

test("no source file imports from a layer above its own", () => {
  const upward: string[] = [];
  for (const file of files) {
    for (const target of relativeImports(file)) {
      const to = layerOf(target);
      if (to > layerOf(file)) upward.push(`${relative(ROOT, file)} → ${relative(ROOT, target)}`);
    }
  }
  assert.deepEqual(upward, [], `imports reaching up a layer:\n${upward.join("\n")}`);
});
