// Every benchmark's JSON under loadtest/results/, stamped with the machine and the command that
// produced it, so each figure says where it came from.
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus } from "node:os";

/** A benchmark's `--name=value` arguments, by name. */
export class BenchArgs extends Map<string, string> {
  constructor(argv: readonly string[] = process.argv.slice(2)) {
    super(argv.map((a) => a.replace(/^--/, "").split("=") as [string, string]));
  }

  /** The numeric argument `name`, or `fallback` when it is not given. */
  num(name: string, fallback: number): number {
    return this.has(name) ? Number(this.get(name)) : fallback;
  }
}

export const machine = (): { nproc: number; cpu: string } => ({ nproc: availableParallelism(), cpu: cpus()[0]?.model ?? "unknown" });

/** Writes loadtest/results/<name>.json: machine, `npm run <script>` command line, then `fields`. */
export function writeResult(name: string, script: string, fields: object): void {
  const result = { machine: machine(), command: `npm run ${script} -- ${process.argv.slice(2).join(" ")}`.trim(), ...fields };
  mkdirSync("loadtest/results", { recursive: true });
  writeFileSync(`loadtest/results/${name}.json`, JSON.stringify(result, null, 2) + "\n");
  console.log(`wrote loadtest/results/${name}.json`);
}
