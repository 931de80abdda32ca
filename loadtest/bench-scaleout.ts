// npm run bench:scaleout — colm-serve replicas behind an off-the-shelf load balancer (Debian's
// HAProxy, `apt-get install haproxy`), all on loopback:
//   1. start N replicas (default 2) of `node --import tsx server/main.ts` on the bundled model,
//      each with --threads onnxruntime threads (default 1: one core per replica);
//   2. calibrate: what one replica sustains (closed loop, 2 × max running in flight);
//   3. throughput at the same offered load (Poisson, --overload × that rate) through the balancer
//      with 1 replica, then with all N (same seed, so the same requests);
//   4. stop one replica with SIGTERM halfway through a run of streamed requests (the load
//      generator's SSE clients) and non-streamed ones; report what the clients saw: retried
//      non-streamed requests succeed, streams in flight finish within the drain timeout;
//   5. the same with a drain timeout shorter than the streams (--short-drain-ms): the streams
//      cut by the deadline must end with a clear error, none may hang.
// Writes loadtest/results/scaleout.json (COLM_RESULTS_DIR for trial runs).
import { loadavg } from "node:os";
import { parseCli, runLoad, type LoadOptions, type LoadResult } from "./loadgen.ts";
import { BenchArgs, writeResult } from "./results.ts";
import { findHaproxy, startBalancer, startReplica, stopChild, type Balancer, type Replica, type ReplicaOptions } from "./scaleout.ts";
import type { RequestRecord } from "./stats.ts";

const args = new BenchArgs();
const N = args.num("replicas", 2);
const DURATION_S = args.num("duration", 12);
const OVERLOAD = args.num("overload", 2.5);
const CALIBRATE_S = args.num("calibrate", 8);
const PROMPT_TOKENS = args.get("prompt-tokens") ?? "16:96";
const MAX_TOKENS = args.get("max-tokens") ?? "16:64";
const LONG_MAX_TOKENS = args.get("long-max-tokens") ?? "140:160";
const SEED = args.num("seed", 7);
const replicaOptions: ReplicaOptions = {
  modelDir: args.get("model"),
  threads: args.num("threads", 1),
  drainMs: args.num("drain-ms", 10_000),
  maxRunning: args.num("max-running", 8),
  maxWaiting: args.num("max-waiting", 32),
};
const SHORT_DRAIN_MS = args.num("short-drain-ms", 300);
if (N < 2) throw new Error("--replicas must be at least 2 (one is stopped mid-run)");

const haproxy = findHaproxy();
if (!haproxy) {
  console.error("bench:scaleout needs HAProxy: apt-get install -y haproxy");
  process.exit(2);
}

/** Load-generator options through the balancer (parsed by the load generator's own CLI). */
function load(url: string, model: string, extra: string[], maxTokens = MAX_TOKENS): LoadOptions {
  const cfg = parseCli(["--url", url, "--model", model, "--prompt-tokens", PROMPT_TOKENS, "--max-tokens", maxTokens, "--seed", String(SEED), "--quiet", ...extra]);
  if (cfg === "help") throw new Error("unreachable");
  return cfg.options;
}

function throughput(r: LoadResult) {
  const s = r.summary;
  return {
    requests: s.requests,
    ok: s.ok,
    errors: s.errorCounts,
    wall_s: s.wallS,
    ok_req_per_s: s.ok / s.wallS,
    tokens_per_s: s.tokenThroughput,
    ttft_p50_ms: s.ttftMs.p50,
    ttft_p90_ms: s.ttftMs.p90,
    e2e_p90_ms: s.e2eMs.p90,
  };
}

/** CPU seconds each replica's process has used so far (its own process_cpu_seconds_total). */
async function cpuSeconds(replicas: Replica[]): Promise<number> {
  const each = await Promise.all(
    replicas.map(async (r) => {
      const text = await (await fetch(`${r.url}/metrics`)).text();
      return Number(/^process_cpu_seconds_total (\S+)$/m.exec(text)?.[1] ?? NaN);
    }),
  );
  return each.reduce((a, b) => a + b, 0);
}

/** An open-loop run through a balancer over `replicas`, with the cores the replicas used. */
async function measure(replicas: Replica[], model: string, openLoop: string[]) {
  const cpu0 = await cpuSeconds(replicas);
  const result = await through(replicas, 120, (lb) => runLoad(load(lb.url, model, openLoop)));
  const cpu = (await cpuSeconds(replicas)) - cpu0;
  return { ...throughput(result), replica_cores_busy: cpu / result.summary.wallS };
}

async function through<T>(replicas: Replica[], timeoutS: number, fn: (lb: Balancer) => Promise<T>): Promise<T> {
  const lb = await startBalancer(haproxy!, replicas, timeoutS);
  try {
    return await fn(lb);
  } finally {
    await lb.close();
  }
}

/** One non-streamed completion through the balancer, as the client saw it. */
interface PlainRecord {
  startMs: number;
  e2eMs: number;
  status: number | "timeout" | "network";
  replica: string | null;
  code?: string;
}

/** Non-streamed requests at a steady `rate` for `durationS`, each with a hard client timeout. */
async function plainRequests(url: string, model: string, rate: number, durationS: number, t0: number, timeoutMs: number): Promise<PlainRecord[]> {
  const out: Promise<PlainRecord>[] = [];
  for (let i = 0; (performance.now() - t0) / 1000 < durationS; i++) {
    const startMs = performance.now() - t0;
    const body = { model, prompt: `Request ${i}: And it came to pass`, max_tokens: 16 + (i % 32), temperature: 0 };
    out.push(
      fetch(`${url}/v1/completions`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs) })
        .then(async (res) => {
          const json = (await res.json()) as { error?: { code?: string } };
          return { startMs, e2eMs: performance.now() - t0 - startMs, status: res.status, replica: res.headers.get("x-colm-replica"), ...(json.error ? { code: json.error.code ?? "?" } : {}) };
        })
        .catch((err: Error) => ({ startMs, e2eMs: performance.now() - t0 - startMs, status: err.name === "TimeoutError" ? ("timeout" as const) : ("network" as const), replica: null, code: err.message })),
    );
    await new Promise((r) => setTimeout(r, 1000 / rate));
  }
  return Promise.all(out);
}

const countBy = <T>(xs: readonly T[], key: (x: T) => string) => xs.reduce<Record<string, number>>((acc, x) => ((acc[key(x)] = (acc[key(x)] ?? 0) + 1), acc), {});

/** What the clients saw around the stop at `killMs` (ms since the run's start). */
function outcome(streams: RequestRecord[], plain: PlainRecord[], killMs: number) {
  const inFlight = streams.filter((r) => r.startMs <= killMs && r.startMs + r.e2eMs >= killMs);
  const plainAfter = plain.filter((r) => r.startMs + r.e2eMs >= killMs);
  return {
    streams: {
      total: streams.length,
      ok: streams.filter((r) => r.ok).length,
      errors: countBy(streams.filter((r) => !r.ok), (r) => `${r.error!.status}:${r.error!.code}`),
      in_flight_at_stop: inFlight.length,
      in_flight_ok: inFlight.filter((r) => r.ok).length,
      in_flight_errors: countBy(inFlight.filter((r) => !r.ok), (r) => `${r.error!.status}:${r.error!.code}: ${r.error!.message.slice(0, 120)}`),
      in_flight_finish_reasons: countBy(inFlight, (r) => r.finishReason ?? "none"),
      hung: streams.filter((r) => r.error?.status === "cut").length,
      last_in_flight_end_after_stop_ms: Math.max(0, ...inFlight.map((r) => r.startMs + r.e2eMs - killMs)),
      // Streams the drain deadline cut (only the stopped replica's): when their clients heard.
      last_cancelled_end_after_stop_ms: Math.max(0, ...inFlight.filter((r) => !r.ok || r.finishReason === "cancelled").map((r) => r.startMs + r.e2eMs - killMs)),
    },
    non_streamed: {
      total: plain.length,
      ok: plain.filter((r) => r.status === 200).length,
      statuses: countBy(plain, (r) => String(r.status)),
      served_by: countBy(plain, (r) => r.replica ?? "none"),
      answered_after_stop: plainAfter.length,
      ok_after_stop: plainAfter.filter((r) => r.status === 200).length,
      hung: plain.filter((r) => r.status === "timeout").length,
    },
  };
}

/** Streams and non-streamed requests through all replicas; SIGTERM `victim` halfway. */
async function stopMidRun(replicas: Replica[], victim: Replica, model: string, rate: number, maxTokens: string, drainMs: number) {
  const timeoutS = drainMs / 1000 + 60;
  return through(replicas, timeoutS, async (lb) => {
    const t0 = performance.now();
    const open = ["--rate", String(rate), "--duration", String(DURATION_S), "--requests", String(Math.ceil(rate * DURATION_S * 2)), "--grace", String(drainMs / 1000 + 20)];
    const streams = runLoad(load(lb.url, model, open, maxTokens));
    const plain = plainRequests(lb.url, model, Math.max(2, rate / 3), DURATION_S, t0, drainMs + 30_000);
    await new Promise((r) => setTimeout(r, (DURATION_S * 1000) / 2));
    const killMs = performance.now() - t0;
    victim.proc.kill("SIGTERM");
    const exited = victim.exited.then((e) => ({ code: e.code, after_sigterm_ms: e.at - t0 - killMs }));
    const [s, p, e] = await Promise.all([streams, plain, exited]);
    return { stop_at_ms: killMs, drain_timeout_ms: drainMs, victim: victim.name, victim_exit: e, victim_log: victim.log.filter((l) => /drain|deadline|cancel|stopped/i.test(l)), balancer: await lb.stats(), ...outcome(s.records, p, killMs) };
  });
}

const loadAverageAtStart = loadavg();
const replicas: Replica[] = [];
try {
  for (let i = 0; i < N; i++) replicas.push(await startReplica(`r${i}`, replicaOptions));
  const model = ((await (await fetch(`${replicas[0].url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0].id;
  console.log(`${N} replicas up (${replicaOptions.threads} onnxruntime thread(s) each), model ${model}`);

  const calibration = await through([replicas[0]], 120, (lb) =>
    runLoad(load(lb.url, model, ["--concurrency", String(2 * replicaOptions.maxRunning), "--duration", String(CALIBRATE_S), "--requests", "100000", "--grace", "30"])),
  );
  const sustained = calibration.summary.ok / calibration.summary.wallS;
  const rate = OVERLOAD * sustained;
  console.log(`one replica sustains ${sustained.toFixed(2)} req/s; offered load ${rate.toFixed(2)} req/s (${OVERLOAD}×) for ${DURATION_S} s`);

  const openLoop = ["--rate", String(rate), "--duration", String(DURATION_S), "--requests", String(Math.ceil(rate * DURATION_S * 2)), "--grace", "60"];
  const one = await measure([replicas[0]], model, openLoop);
  const all = await measure(replicas, model, openLoop);
  const ratio = all.tokens_per_s / one.tokens_per_s;
  console.log(`1 replica: ${one.tokens_per_s.toFixed(0)} tok/s, ${one.ok_req_per_s.toFixed(2)} ok req/s, errors ${JSON.stringify(one.errors)}, TTFT p90 ${one.ttft_p90_ms.toFixed(0)} ms, replicas busy ${one.replica_cores_busy.toFixed(2)} cores`);
  console.log(`${N} replicas: ${all.tokens_per_s.toFixed(0)} tok/s, ${all.ok_req_per_s.toFixed(2)} ok req/s, errors ${JSON.stringify(all.errors)}, TTFT p90 ${all.ttft_p90_ms.toFixed(0)} ms, replicas busy ${all.replica_cores_busy.toFixed(2)} cores`);
  console.log(`throughput ratio ${N}:1 = ${ratio.toFixed(2)}`);

  const victim = replicas[N - 1];
  // Below what the surviving replica sustains, so whatever the clients see comes from the stop.
  const stop = await stopMidRun(replicas, victim, model, sustained / 2, MAX_TOKENS, replicaOptions.drainMs);
  console.log(`SIGTERM ${victim.name} (drain ${replicaOptions.drainMs} ms): ${JSON.stringify({ streams: stop.streams, non_streamed: stop.non_streamed, exit: stop.victim_exit })}`);

  // Bring the victim back with a drain deadline shorter than its streams.
  replicas[N - 1] = await startReplica(victim.name, { ...replicaOptions, drainMs: SHORT_DRAIN_MS });
  // Streams ~4× longer than the calibration's: a quarter of the rate keeps the survivor's load alike.
  const cut = await stopMidRun(replicas, replicas[N - 1], model, sustained / 8, LONG_MAX_TOKENS, SHORT_DRAIN_MS);
  console.log(`SIGTERM ${victim.name} (drain ${SHORT_DRAIN_MS} ms, ${LONG_MAX_TOKENS}-token streams): ${JSON.stringify({ streams: cut.streams, non_streamed: cut.non_streamed, exit: cut.victim_exit })}`);

  writeResult("scaleout", "bench:scaleout", {
    // Other processes on the machine share its cores: this says how busy it was as the run began.
    load_average_at_start: loadAverageAtStart,
    balancer: "haproxy (Debian), leastconn, health check GET /health every 500 ms, retry-on conn-failure empty-response 503",
    replicas: N,
    replica_options: replicaOptions,
    prompt_tokens: PROMPT_TOKENS,
    max_tokens: MAX_TOKENS,
    one_replica_sustained_req_s: sustained,
    offered_req_s: rate,
    overload: OVERLOAD,
    duration_s: DURATION_S,
    one_replica: one,
    all_replicas: all,
    throughput_ratio: ratio,
    stop_within_drain: stop,
    stop_past_drain: { long_max_tokens: LONG_MAX_TOKENS, ...cut },
  });
} finally {
  await Promise.all(replicas.map((r) => stopChild(r, 15_000)));
}
