// Every benchmark's JSON under loadtest/results/, stamped with the machine and the command that
// produced it, so each figure says where it came from.
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus } from "node:os";

/** A benchmark's `--name=value` (or `--name value`) arguments, by name. */
export class BenchArgs extends Map<string, string> {
  /** `--name=value` or `--name value`; a bare `--name` is "true". */
  constructor(argv: readonly string[] = process.argv.slice(2)) {
    super();
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i];
      if (!arg.startsWith("--")) throw new Error(`unexpected argument ${JSON.stringify(arg)} (options are --name=value or --name value)`);
      const eq = arg.indexOf("=");
      if (eq >= 0) this.set(arg.slice(2, eq), arg.slice(eq + 1));
      else if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) this.set(arg.slice(2), argv[++i]);
      else this.set(arg.slice(2), "true");
    }
  }

  /** The numeric argument `name`, or `fallback` when it is not given. */
  num(name: string, fallback: number): number {
    if (!this.has(name)) return fallback;
    const value = Number(this.get(name));
    if (!Number.isFinite(value)) throw new Error(`--${name} needs a number, got ${JSON.stringify(this.get(name))}`);
    return value;
  }
}

export const machine = (): { nproc: number; cpu: string } => ({ nproc: availableParallelism(), cpu: cpus()[0]?.model ?? "unknown" });

/**
 * Writes <dir>/<name>.json: machine, `npm run <script>` command line, then `fields`. The folder is
 * loadtest/results (the committed figures) unless COLM_RESULTS_DIR names another, for a trial run.
 */
export function writeResult(name: string, script: string, fields: object): void {
  const result = { machine: machine(), command: `npm run ${script} -- ${process.argv.slice(2).join(" ")}`.trim(), ...fields };
  const dir = process.env.COLM_RESULTS_DIR || "loadtest/results";
  mkdirSync(dir, { recursive: true });
  writeFileSync(`${dir}/${name}.json`, JSON.stringify(result, null, 2) + "\n");
  console.log(`wrote ${dir}/${name}.json`);
}
