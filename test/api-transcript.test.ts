// The whole public API, recorded: 160 requests over HTTP, SSE and WebSocket (and an API-key run)
// sent to a real `npm start` server on the bundled model must get the responses in
// test/fixtures/api-transcript.json. A change to any response, intended or not, shows up here;
// an intended one is recorded again with
//   node --import tsx test/helpers/api-transcript.ts . --out test/fixtures/api-transcript.json
// and the diff reviewed. Logprobs are compared to 1e-4 (another CPU may round differently).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { recordTranscript, type Transcript, type TranscriptEntry } from "./helpers/api-transcript.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Where `a` and `b` differ, as paths; non-integer numbers may differ by 1e-4. */
function differences(a: unknown, b: unknown, path: string, out: string[]): void {
  if (typeof a === "number" && typeof b === "number" && !(Number.isInteger(a) && Number.isInteger(b))) {
    if (Math.abs(a - b) > 1e-4) out.push(`${path}: ${a} vs ${b}`);
    return;
  }
  if (Array.isArray(a) && Array.isArray(b)) {
    if (a.length !== b.length) out.push(`${path}: length ${a.length} vs ${b.length}`);
    else a.forEach((x, i) => differences(x, b[i], `${path}[${i}]`, out));
    return;
  }
  if (a && b && typeof a === "object" && typeof b === "object") {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const k of keys) differences((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${path}.${k}`, out);
    return;
  }
  if (a !== b) out.push(`${path}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
}

function entries(t: Transcript): Map<string, TranscriptEntry> {
  return new Map(t.runs.flatMap((run, r) => run.entries.map((e) => [`${r}:${e.name}`, e] as const)));
}

test("every recorded request gets the recorded response", { timeout: 180_000 }, async () => {
  const expected = entries(JSON.parse(readFileSync(join(ROOT, "test/fixtures/api-transcript.json"), "utf8")) as Transcript);
  const actual = entries(await recordTranscript(ROOT));
  assert.deepEqual([...actual.keys()], [...expected.keys()], "the same requests, in the same order");
  const diffs: string[] = [];
  for (const [name, e] of expected) differences(e, actual.get(name), name, diffs);
  assert.deepEqual(diffs.slice(0, 20), [], `${diffs.length} differences`);
});
