// npm run bench:soak -- [--minutes 60] [--sample-s 30] [--concurrency 4] [--prefix-cache-mb 256]
// Hours of traffic: starts `npm start`'s server on the bundled model in its own process, keeps the
// mixed traffic of loadtest/traffic-mix.ts going (JSON, SSE, chat with budgets, abandoned streams,
// refusals, WebSocket switches and cancels), and every --sample-s seconds reads the server's own
// /metrics (resident memory, V8 heap used, KV bytes in use, active handles, running requests) and
// the window's client-side TTFT / TPOT p50 and p99. Then it stops the traffic and checks the
// server is idle. Verdicts, scaled to the run's length (for 60 minutes: the numbers):
//   memory flat: every sample of the last half within max(+2 %, +10 MB) of the sample at 25 %, on
//     resident memory less the prefix cache's bytes (it fills up to COLM_PREFIX_CACHE_BYTES by design);
//   no drift: TTFT and TPOT p99 of the last sixth ≤ 1.2 × those of the 8–25 % window;
//   idle: colm_requests_running and colm_kv_cache_bytes_in_use back to 0.
// Writes loadtest/results/soak.json and soak.svg.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { BenchArgs, machine, writeResult } from "./results.ts";
import { freePort, waitHealthy } from "./scaleout.ts";
import { percentile } from "./stats.ts";
import { lineChart } from "./svg-chart.ts";
import { runMix, type MixRecord } from "./traffic-mix.ts";

const args = new BenchArgs();
const MINUTES = args.num("minutes", 60);
const SAMPLE_S = args.num("sample-s", 30);
const CONCURRENCY = args.num("concurrency", 4);
/**
 * The server's prefix cache budget (COLM_PREFIX_CACHE_BYTES): the default, half the KV budget, is
 * gigabytes here and the mix's prompts fill it for hours by design; bounded, it is full within
 * minutes and the rest of the run measures steady-state eviction. 0: the server's default.
 */
const PREFIX_CACHE_MB = args.num("prefix-cache-mb", 256);

interface Sample {
  minute: number;
  rss_mb: number;
  /** Resident memory less the prefix cache's bytes: what must stay flat. */
  rss_less_cache_mb: number;
  prefix_cache_mb: number;
  heap_used_mb: number;
  kv_bytes_in_use: number;
  active_handles: number;
  running: number;
  requests: number;
  ttft_p50_ms: number | null;
  ttft_p99_ms: number | null;
  tpot_p50_ms: number | null;
  tpot_p99_ms: number | null;
}

/** The server's own gauges, from one /metrics scrape: each name's samples summed over its labels. */
async function gauges(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)(?:\{[^}]*\})? ([-0-9.e+]+)$/.exec(line);
    if (m) out[m[1]] = (out[m[1]] ?? 0) + Number(m[2]);
  }
  return out;
}

async function startServer(): Promise<{ url: string; stop: () => Promise<void> }> {
  const port = await freePort();
  const child = spawn(process.execPath, ["--import", "tsx", "server/main.ts", "--port", String(port)], {
    stdio: ["ignore", "ignore", "inherit"],
    env: PREFIX_CACHE_MB ? { ...process.env, COLM_PREFIX_CACHE_BYTES: String(PREFIX_CACHE_MB * 2 ** 20) } : process.env,
  });
  const url = `http://127.0.0.1:${port}`;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  await waitHealthy(`${url}/health`, 60_000, () => (child.exitCode !== null ? "the server exited while starting" : null)).catch((err) => {
    child.kill("SIGKILL");
    throw err;
  });
  return { url, stop: () => (child.kill("SIGTERM"), exited) };
}

const p = (xs: number[], q: number) => (xs.length ? percentile([...xs].sort((a, b) => a - b), q) : null);

function sampleOf(minute: number, g: Record<string, number>, window: MixRecord[]): Sample {
  const ttft = window.flatMap((r) => (r.ttftMs === undefined ? [] : [r.ttftMs]));
  const tpot = window.flatMap((r) => (r.tpotMs === undefined ? [] : [r.tpotMs]));
  return {
    minute,
    rss_mb: g.process_resident_memory_bytes / 2 ** 20,
    rss_less_cache_mb: (g.process_resident_memory_bytes - (g.colm_prefix_cache_bytes ?? 0)) / 2 ** 20,
    prefix_cache_mb: (g.colm_prefix_cache_bytes ?? 0) / 2 ** 20,
    heap_used_mb: g.nodejs_heap_size_used_bytes / 2 ** 20,
    kv_bytes_in_use: g.colm_kv_cache_bytes_in_use,
    active_handles: g.nodejs_active_handles, // by type, summed (promtool rejects a gauge named _total)
    running: g.colm_requests_running,
    requests: window.length,
    ttft_p50_ms: p(ttft, 0.5),
    ttft_p99_ms: p(ttft, 0.99),
    tpot_p50_ms: p(tpot, 0.5),
    tpot_p99_ms: p(tpot, 0.99),
  };
}

/** The verdicts, on minutes scaled to this run's length. */
function verdicts(samples: Sample[], records: Array<MixRecord & { minute: number }>, idle: Record<string, number>) {
  const at = (f: number) => samples.reduce((best, s) => (Math.abs(s.minute - f * MINUTES) < Math.abs(best.minute - f * MINUTES) ? s : best));
  const base = at(0.25);
  const late = samples.filter((s) => s.minute >= MINUTES / 2);
  const rssLimit = Math.max(base.rss_less_cache_mb * 1.02, base.rss_less_cache_mb + 10);
  const window = (lo: number, hi: number, key: "ttftMs" | "tpotMs") => p(records.filter((r) => r.minute >= lo * MINUTES && r.minute < hi * MINUTES && r[key] !== undefined).map((r) => r[key]!), 0.99);
  const drift = (key: "ttftMs" | "tpotMs") => {
    const early = window(5 / 60, 15 / 60, key);
    const last = window(50 / 60, 1, key);
    return { early_p99_ms: early, last_p99_ms: last, ratio: early && last ? last / early : null };
  };
  const ttft = drift("ttftMs");
  const tpot = drift("tpotMs");
  return {
    memory: {
      base_minute: base.minute,
      base_rss_less_cache_mb: base.rss_less_cache_mb,
      limit_mb: rssLimit,
      max_late_rss_less_cache_mb: Math.max(...late.map((s) => s.rss_less_cache_mb)),
      max_prefix_cache_mb: Math.max(...samples.map((s) => s.prefix_cache_mb)),
      flat: late.every((s) => s.rss_less_cache_mb <= rssLimit),
    },
    heap: { base_mb: base.heap_used_mb, max_late_mb: Math.max(...late.map((s) => s.heap_used_mb)) },
    latency: { ttft, tpot, no_drift: (ttft.ratio ?? 0) <= 1.2 && (tpot.ratio ?? 0) <= 1.2 },
    idle: { running: idle.colm_requests_running, kv_bytes_in_use: idle.colm_kv_cache_bytes_in_use, ok: idle.colm_requests_running === 0 && idle.colm_kv_cache_bytes_in_use === 0 },
    failed_requests: records.filter((r) => !r.ok).length,
  };
}

const server = await startServer();
const t0 = performance.now();
const minute = () => (performance.now() - t0) / 60_000;
const records: Array<MixRecord & { minute: number }> = [];
const samples: Sample[] = [];
let windowStart = 0;
const sampler = setInterval(async () => {
  const window = records.slice(windowStart);
  windowStart = records.length;
  const s = sampleOf(minute(), await gauges(server.url), window);
  samples.push(s);
  console.log(`${s.minute.toFixed(1)} min: RSS ${s.rss_mb.toFixed(1)} MB, heap ${s.heap_used_mb.toFixed(1)} MB, ${s.requests} requests, TTFT p99 ${s.ttft_p99_ms?.toFixed(1)} ms, handles ${s.active_handles}`);
}, SAMPLE_S * 1000);
const sent = await runMix({ url: server.url, concurrency: CONCURRENCY, stop: () => minute() >= MINUTES, onRecord: (r) => records.push({ ...r, minute: minute() }) });
clearInterval(sampler);
await new Promise((r) => setTimeout(r, 2000));
const idle = await gauges(server.url);
await server.stop();

const result = { minutes: MINUTES, sample_s: SAMPLE_S, concurrency: CONCURRENCY, prefix_cache_mb: PREFIX_CACHE_MB || "default", requests: sent, verdicts: verdicts(samples, records, idle), samples };
console.log(JSON.stringify(result.verdicts, null, 2));
writeResult("soak", "bench:soak", result);
const minutes = samples.map((s) => s.minute);
writeFileSync(
  `${process.env.COLM_RESULTS_DIR || "loadtest/results"}/soak.svg`,
  lineChart({
    title: `Soak: ${MINUTES} minutes of mixed traffic on the bundled model`,
    xLabel: "minute",
    yLabel: "MB / ms",
    series: [
      { name: "RSS (MB)", points: samples.map((s, i) => [minutes[i], s.rss_mb]) },
      { name: "RSS less prefix cache (MB)", points: samples.map((s, i) => [minutes[i], s.rss_less_cache_mb]) },
      { name: "V8 heap used (MB)", points: samples.map((s, i) => [minutes[i], s.heap_used_mb]) },
      { name: "TTFT p99 (ms)", points: samples.map((s, i) => [minutes[i], s.ttft_p99_ms]), dashed: true },
    ],
    caption: [`npm run bench:soak -- --minutes ${MINUTES}`, `${machine().nproc} cores, ${machine().cpu}`],
  }),
);
