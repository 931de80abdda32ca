// npm run bench — the whole benchmark suite in one command, then the report:
//   engine, limits, alternatives, batching, prefix, serve, sweep, model, spec  (each `npm run bench:<part>`)
//   report                                                       (loadtest/report.ts → REPORT.md)
// Each part runs as its own child process (fresh memory, its own timings) with this terminal's
// output. A failing part is reported and the rest still run; the exit code is non-zero at the
// end if any part failed. Limits reads engine.json, so engine runs before it.
//
//   npm run bench -- --only=sweep,report     just these parts
//   npm run bench -- --skip=engine,limits    everything but these
//   npm run bench -- --list                  the parts, in order
import { spawnSync } from "node:child_process";
import { writeReport } from "./report.ts";

/** The parts in the order they run; every one but "report" is `npm run bench:<name>`. */
const PARTS = ["engine", "limits", "alternatives", "batching", "prefix", "serve", "sweep", "model", "spec", "report"] as const;
type Part = (typeof PARTS)[number];

function parseParts(argv: string[]): Part[] {
  const listArg = (name: string): Part[] | undefined => {
    const arg = argv.find((a) => a.startsWith(`--${name}=`));
    if (arg === undefined) return undefined;
    const names = arg.slice(name.length + 3).split(",").map((s) => s.trim()).filter(Boolean);
    const unknown = names.filter((n) => !(PARTS as readonly string[]).includes(n));
    if (unknown.length) throw new Error(`--${name}: unknown part(s) ${unknown.join(", ")}; the parts are ${PARTS.join(", ")}`);
    return names as Part[];
  };
  const only = listArg("only");
  const skip = listArg("skip") ?? [];
  return PARTS.filter((p) => (only === undefined || only.includes(p)) && !skip.includes(p));
}

function runPart(part: Part): boolean {
  if (part === "report") {
    try {
      for (const file of writeReport("loadtest/results")) console.log(`wrote ${file}`);
      return true;
    } catch (err) {
      console.error(`report failed: ${(err as Error)?.stack ?? String(err)}`);
      return false;
    }
  }
  const run = spawnSync("npm", ["run", `bench:${part}`], { stdio: "inherit" });
  if (run.error) console.error(`bench:${part} could not start: ${run.error.message}`);
  return run.status === 0;
}

const argv = process.argv.slice(2);
if (argv.includes("--list")) {
  console.log(PARTS.join("\n"));
  process.exit(0);
}
let parts: Part[];
try {
  parts = parseParts(argv);
} catch (err) {
  console.error((err as Error).message);
  process.exit(2);
}

const outcomes: Array<{ part: Part; ok: boolean; seconds: number }> = [];
for (const part of parts) {
  console.log(`\n=== ${part === "report" ? "report" : `npm run bench:${part}`} (${outcomes.length + 1}/${parts.length})`);
  const t0 = performance.now();
  const ok = runPart(part);
  outcomes.push({ part, ok, seconds: (performance.now() - t0) / 1000 });
  if (!ok) console.error(`=== ${part} FAILED; going on with the rest`);
}

console.log("\n=== summary");
for (const o of outcomes) console.log(`${o.ok ? "ok    " : "FAILED"} ${o.part.padEnd(13)} ${o.seconds.toFixed(0).padStart(5)} s`);
const failed = outcomes.filter((o) => !o.ok).map((o) => o.part);
if (failed.length) {
  console.error(`${failed.length} part(s) failed: ${failed.join(", ")}`);
  process.exitCode = 1;
}
