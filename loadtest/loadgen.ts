// Load generator for the colm-serve HTTP+SSE and WebSocket APIs.
//
//   npm run loadtest -- --url http://127.0.0.1:8080 --rate 4 --duration 30
//   npm run loadtest -- --url http://127.0.0.1:8080 --concurrency 8 --requests 200 --mode ws \
//       --prompt-tokens 64:512 --max-tokens 32:128 --mix "budget:tpot_ms=50:0.5,chains=1:0.25,chains=4:0.25"
//
// Open loop (--rate: Poisson arrivals, req/s) or closed loop (--concurrency: N workers, each
// sending its next request when the last one ends). The run stops after --requests requests or
// --duration seconds, whichever comes first; requests still running then get --grace seconds
// to finish and are cut after that. Only loopback servers are accepted. Every random choice
// (arrival gaps, lengths, prompts, classes) comes from --seed.
import { setMaxListeners } from "node:events";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { SeededRng, type Rng } from "../kernels/rng.ts";
import {
  parseIntDist,
  parseMix,
  pickClass,
  poissonArrivals,
  sampleInt,
  sliceText,
  syntheticIds,
  syntheticText,
  type IntDist,
  type MixClass,
} from "./arrivals.ts";
import { SseClient, WsClient, type LoadClient, type RequestSpec } from "./clients.ts";
import { formatSummary, summarize, type RequestRecord, type Summary } from "./stats.ts";

export type Mode = "sse" | "ws";

export interface LoadOptions {
  url: string;
  mode: Mode;
  /** Open loop: Poisson arrivals at this rate (req/s). Exactly one of rate/concurrency. */
  rate?: number;
  /** Closed loop: this many requests in flight. */
  concurrency?: number;
  requests: number;
  durationS: number;
  graceS: number;
  promptTokens: IntDist;
  /** Text to slice prompts from (else synthetic ASCII, or ids with promptForm "ids"). */
  promptCorpus?: string;
  promptForm: "text" | "ids";
  /** Token ids for the "ids" form are drawn from [idLow, idHigh). */
  idLow: number;
  idHigh: number;
  /**
   * Every prompt starts with the same this many tokens (a shared system prompt, drawn once from
   * the seed), then its own --prompt-tokens. Default 0.
   */
  sharedPrefixTokens?: number;
  /** false: every request opts out of the prefix cache (`cache: false`). */
  cache?: boolean;
  maxTokens: IntDist;
  mix: MixClass[];
  seed: number;
  temperature?: number;
  apiKey?: string;
  /** Model name; asked from GET /v1/models when absent. */
  model?: string;
}

export interface LoadResult {
  options: Omit<LoadOptions, "promptCorpus" | "apiKey"> & { promptFile?: string };
  model: string;
  startedAt: string;
  records: RequestRecord[];
  summary: Summary;
}

const LOOPBACK = new Set(["127.0.0.1", "[::1]", "::1", "localhost"]);

/** Parse `url` and refuse anything that is not http(s) on a loopback host. Returns the base URL. */
export function checkLoopbackUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`--url: not a valid URL: ${JSON.stringify(url)}`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`--url: must be http:// or https://, got ${u.protocol}`);
  if (!LOOPBACK.has(u.hostname.toLowerCase())) {
    throw new Error(`--url: refusing to load-test ${u.hostname}: only loopback hosts (127.0.0.1, ::1, localhost) are allowed`);
  }
  return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, "")}`;
}

/** The base model name from GET /v1/models (the entry without a ":c<k>" suffix). */
export async function fetchModelName(baseUrl: string, apiKey?: string): Promise<string> {
  const res = await fetch(`${baseUrl}/v1/models`, { headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {} });
  if (res.status !== 200) throw new Error(`GET /v1/models answered HTTP ${res.status}`);
  const body = (await res.json()) as { data?: Array<{ id?: unknown }> };
  const ids = (body.data ?? []).flatMap((m) => (typeof m.id === "string" ? [m.id] : []));
  if (ids.length === 0) throw new Error("GET /v1/models listed no models");
  return ids.find((id) => !/:c\d+$/.test(id)) ?? ids[0].replace(/:c\d+$/, "");
}

/** Draw request `id`'s spec. */
export function makeSpec(id: number, o: LoadOptions, model: string, rng: Rng): RequestSpec {
  const cls = pickClass(o.mix, rng);
  const n = sampleInt(o.promptTokens, rng);
  const maxTokens = sampleInt(o.maxTokens, rng);
  const draw = (count: number, from: Rng): string | number[] => {
    if (o.promptCorpus !== undefined) return sliceText(o.promptCorpus, count, from);
    return o.promptForm === "ids" ? syntheticIds(count, from, o.idLow, o.idHigh) : syntheticText(count, from);
  };
  let prompt = draw(n, rng);
  const shared = o.sharedPrefixTokens ?? 0;
  if (shared > 0) {
    // The same prefix for every request: drawn from its own generator, seeded by --seed alone.
    const prefix = draw(shared, new SeededRng(o.seed * 7919 + 17));
    prompt = typeof prefix === "string" ? prefix + (prompt as string) : [...prefix, ...(prompt as number[])];
  }
  return {
    id,
    cls: cls.label,
    model: cls.modelChains !== undefined ? `${model}:c${cls.modelChains}` : model,
    prompt,
    promptTokens: shared + n,
    ...(o.cache === false ? { cache: false } : {}),
    maxTokens,
    ...(cls.chains !== undefined ? { chains: cls.chains } : {}),
    ...(cls.budget !== undefined ? { budget: cls.budget } : {}),
    ...(o.temperature !== undefined ? { temperature: o.temperature } : {}),
  };
}

export interface RunHooks {
  /** Called about once a second with a progress line (default: none). */
  progress?: (line: string) => void;
  progressIntervalMs?: number;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((res) => {
    if (ms <= 0 || signal?.aborted) return res();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      res();
    }
    signal?.addEventListener("abort", done, { once: true });
  });

/** Run the load; resolves when every request has finished or been cut. */
export async function runLoad(o: LoadOptions, hooks: RunHooks = {}): Promise<LoadResult> {
  const base = checkLoopbackUrl(o.url);
  if ((o.rate === undefined) === (o.concurrency === undefined)) throw new Error("give exactly one of --rate and --concurrency");
  const model = o.model ?? (await fetchModelName(base, o.apiKey));
  const rng = new SeededRng(o.seed);
  const client: LoadClient = o.mode === "ws" ? await WsClient.open(base, o.apiKey) : new SseClient(base, o.apiKey);
  const startedAt = new Date().toISOString();
  const t0 = performance.now();
  const elapsedMs = () => performance.now() - t0;
  const stop = new AbortController(); // no new requests after this
  const cut = new AbortController(); // in-flight requests are cut
  setMaxListeners(0, cut.signal); // every in-flight request listens on it
  const stopTimer = setTimeout(() => stop.abort(), o.durationS * 1000);
  const records: RequestRecord[] = [];
  let sent = 0;
  let tokens = 0;
  let lastTokens = 0;
  let lastTick = t0;
  const inflight = new Set<Promise<void>>();

  const fire = (spec: RequestSpec) => {
    sent++;
    const p = client.run(spec, elapsedMs(), cut.signal).then((r) => {
      records.push(r);
      tokens += r.tokens;
      inflight.delete(p);
    });
    inflight.add(p);
    return p;
  };

  const progress = hooks.progress
    ? setInterval(() => {
        const now = performance.now();
        const rate = ((tokens - lastTokens) * 1000) / Math.max(1, now - lastTick);
        lastTokens = tokens;
        lastTick = now;
        const errors = records.filter((r) => !r.ok).length;
        hooks.progress!(
          `[${(elapsedMs() / 1000).toFixed(1)}s] sent ${sent} done ${records.length} in-flight ${inflight.size} errors ${errors} ${rate.toFixed(1)} tok/s`,
        );
      }, hooks.progressIntervalMs ?? 1000)
    : undefined;

  try {
    if (o.rate !== undefined) {
      // Open loop: the whole schedule (and every request's draws) is fixed by the seed up front.
      const arrivals = poissonArrivals(o.rate, rng, o.requests, o.durationS);
      const specs = arrivals.map((_, i) => makeSpec(i, o, model, rng));
      for (let i = 0; i < arrivals.length && !stop.signal.aborted; i++) {
        await sleep(arrivals[i] * 1000 - elapsedMs(), stop.signal);
        if (stop.signal.aborted) break;
        void fire(specs[i]);
      }
    } else {
      // Closed loop: spec i is the i-th draw, whichever worker sends it.
      let next = 0;
      const worker = async () => {
        while (!stop.signal.aborted && next < o.requests) {
          await fire(makeSpec(next++, o, model, rng));
        }
      };
      const workers = Array.from({ length: o.concurrency! }, worker);
      await Promise.race([Promise.all(workers), new Promise<void>((r) => stop.signal.addEventListener("abort", () => r(), { once: true }))]);
    }
    stop.abort();
    // Drain: wait for in-flight requests up to the grace deadline, then cut them.
    if (inflight.size > 0) {
      const graceTimer = setTimeout(() => cut.abort(), o.graceS * 1000);
      while (inflight.size > 0) await Promise.all([...inflight]);
      clearTimeout(graceTimer);
    }
  } finally {
    clearTimeout(stopTimer);
    if (progress) clearInterval(progress);
    await client.close();
  }
  const wallS = elapsedMs() / 1000;
  records.sort((a, b) => a.id - b.id);
  const { promptCorpus, apiKey, ...rest } = o;
  void apiKey;
  return {
    options: { ...rest, ...(promptCorpus !== undefined ? { promptFile: "(given)" } : {}) },
    model,
    startedAt,
    records,
    summary: summarize(records, wallS),
  };
}

const USAGE = `usage: npm run loadtest -- --url http://127.0.0.1:8080 (--rate R | --concurrency N) [options]

  --url URL              server base URL (loopback only: 127.0.0.1, ::1, localhost)
  --rate R               open loop: Poisson arrivals, R requests/s
  --concurrency N        closed loop: N requests in flight
  --requests N           stop after N requests (default 100)
  --duration S           stop sending after S seconds (default 60)
  --grace S              then wait up to S seconds for in-flight requests, cut the rest (default 30)
  --mode sse|ws          HTTP+SSE /v1/completions (default) or one WebSocket at /v1/stream
  --prompt-tokens D      prompt length: N or MIN:MAX (default 128)
  --prompt-file PATH     sample prompts as random slices of this text file (length from --prompt-tokens)
  --prompt-form text|ids synthetic prompts as ASCII text (default; N chars = N tokens for the byte
                         tokenizer) or as token ids (for other tokenizers)
  --vocab-size V         ids form: draw ids from [0, V) (default 256; ASCII 32..126 when V=256)
  --shared-prefix-tokens N  every prompt starts with the same N tokens (a shared system prompt)
  --no-cache             send cache: false (the server's prefix cache is neither read nor written)
  --max-tokens D         output length (max_tokens): N or MIN:MAX (default 64)
  --mix SPEC             request classes with weights, e.g.
                         "budget:tpot_ms=50:0.5,chains=1:0.25,chains=4:0.25"
                         classes: budget:KEY=MS[+KEY=MS] (ttft_ms|tpot_ms|total_ms), chains=K,
                         model=cK (model "<name>:cK"), default (default: "default")
  --temperature T        sampling temperature sent with every request
  --model NAME           model name (default: asked from GET /v1/models)
  --api-key KEY          bearer token (default: $COLM_API_KEY)
  --seed S               seed for every random choice (default 1)
  --out PATH             JSON results (default .cache/loadgen/loadgen-<timestamp>.json, untracked)
  --quiet                no progress line`;

export interface CliConfig {
  options: LoadOptions;
  out?: string;
  quiet: boolean;
  promptFile?: string;
}

function num(v: string | undefined, name: string, check: (x: number) => boolean, want: string): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (v.trim() === "" || !Number.isFinite(x) || !check(x)) throw new Error(`--${name}: expected ${want}, got ${JSON.stringify(v)}`);
  return x;
}

/** Parse the command line (without node and script). Throws with a readable message. */
export function parseCli(argv: string[], env: NodeJS.ProcessEnv = process.env): CliConfig | "help" {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      url: { type: "string" },
      rate: { type: "string" },
      concurrency: { type: "string" },
      requests: { type: "string" },
      duration: { type: "string" },
      grace: { type: "string" },
      mode: { type: "string" },
      "prompt-tokens": { type: "string" },
      "prompt-file": { type: "string" },
      "prompt-form": { type: "string" },
      "shared-prefix-tokens": { type: "string" },
      "no-cache": { type: "boolean" },
      "vocab-size": { type: "string" },
      "max-tokens": { type: "string" },
      mix: { type: "string" },
      temperature: { type: "string" },
      model: { type: "string" },
      "api-key": { type: "string" },
      seed: { type: "string" },
      out: { type: "string" },
      quiet: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  if (values.url === undefined) throw new Error("--url is required");
  const url = checkLoopbackUrl(values.url);
  const rate = num(values.rate, "rate", (x) => x > 0, "a positive number");
  const concurrency = num(values.concurrency, "concurrency", (x) => Number.isInteger(x) && x >= 1, "a positive integer");
  if ((rate === undefined) === (concurrency === undefined)) throw new Error("give exactly one of --rate (open loop) and --concurrency (closed loop)");
  const mode = values.mode ?? "sse";
  if (mode !== "sse" && mode !== "ws") throw new Error(`--mode: expected sse or ws, got ${JSON.stringify(mode)}`);
  const promptForm = values["prompt-form"] ?? "text";
  if (promptForm !== "text" && promptForm !== "ids") throw new Error(`--prompt-form: expected text or ids, got ${JSON.stringify(promptForm)}`);
  const vocab = num(values["vocab-size"], "vocab-size", (x) => Number.isInteger(x) && x >= 2, "an integer >= 2") ?? 256;
  const promptFile = values["prompt-file"];
  let promptCorpus: string | undefined;
  if (promptFile !== undefined) {
    promptCorpus = readFileSync(promptFile, "utf8");
    if (promptCorpus.length === 0) throw new Error(`--prompt-file: ${promptFile} is empty`);
  }
  const options: LoadOptions = {
    url,
    mode,
    ...(rate !== undefined ? { rate } : {}),
    ...(concurrency !== undefined ? { concurrency } : {}),
    requests: num(values.requests, "requests", (x) => Number.isInteger(x) && x >= 1, "a positive integer") ?? 100,
    durationS: num(values.duration, "duration", (x) => x > 0, "a positive number of seconds") ?? 60,
    graceS: num(values.grace, "grace", (x) => x >= 0, "a number of seconds >= 0") ?? 30,
    promptTokens: parseIntDist(values["prompt-tokens"] ?? "128", "prompt-tokens"),
    ...(promptCorpus !== undefined ? { promptCorpus } : {}),
    promptForm,
    idLow: vocab === 256 ? 32 : 0,
    idHigh: vocab === 256 ? 127 : vocab,
    maxTokens: parseIntDist(values["max-tokens"] ?? "64", "max-tokens"),
    sharedPrefixTokens: num(values["shared-prefix-tokens"], "shared-prefix-tokens", (x) => Number.isInteger(x) && x >= 0, "an integer >= 0") ?? 0,
    ...(values["no-cache"] === true ? { cache: false } : {}),
    mix: parseMix(values.mix ?? "default"),
    seed: num(values.seed, "seed", (x) => Number.isInteger(x), "an integer") ?? 1,
    ...(values.temperature !== undefined ? { temperature: num(values.temperature, "temperature", (x) => x >= 0, "a number >= 0")! } : {}),
    ...(values.model !== undefined ? { model: values.model } : {}),
    ...((values["api-key"] ?? env.COLM_API_KEY) ? { apiKey: values["api-key"] ?? env.COLM_API_KEY } : {}),
  };
  return { options, ...(values.out !== undefined ? { out: values.out } : {}), quiet: values.quiet === true, ...(promptFile !== undefined ? { promptFile } : {}) };
}

export function defaultOutPath(now = new Date()): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // Untracked: a user's load test does not dirty the checkout (committed results are the benchmarks').
  return resolve(here, "..", ".cache", "loadgen", `loadgen-${now.toISOString().replace(/[:.]/g, "-")}.json`);
}

export function writeResult(path: string, result: LoadResult): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(result, null, 2) + "\n");
}

async function main(): Promise<void> {
  let cfg: CliConfig | "help";
  try {
    cfg = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`loadgen: ${(err as Error).message}\n\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  if (cfg === "help") {
    process.stdout.write(USAGE + "\n");
    return;
  }
  const o = cfg.options;
  process.stderr.write(
    `loadgen: ${o.mode} ${o.rate !== undefined ? `open loop ${o.rate} req/s` : `closed loop ×${o.concurrency}`} → ${o.url}, ` +
      `≤${o.requests} requests, ≤${o.durationS}s, seed ${o.seed}\n`,
  );
  const result = await runLoad(o, cfg.quiet ? {} : { progress: (line) => process.stderr.write(line + "\n") });
  if (cfg.promptFile !== undefined) result.options.promptFile = cfg.promptFile;
  const out = cfg.out ?? defaultOutPath();
  writeResult(out, result);
  process.stdout.write(`model ${result.model}\n${formatSummary(result.summary)}\n\nwrote ${out}\n`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`loadgen: ${(err as Error)?.message ?? String(err)}\n`);
    process.exitCode = 1;
  });
}
