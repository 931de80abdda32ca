// The performance report: reads every benchmark's JSON under loadtest/results/ (whichever exist)
// and writes loadtest/results/REPORT.md plus SVG charts beside it.
//
//   node --import tsx loadtest/report.ts [--dir=loadtest/results]
//
// Each figure says which command produced it, on which machine (the JSON's `machine` stamp) and
// what kind of number it is (a median or a ratio from one run). A missing JSON gives a "not run"
// line instead of its section. The JSON is read defensively (a field that is absent or of the
// wrong type shows as "–"), so a report can be written from results of older benchmark versions.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { barChart, lineChart, type LineSeries, PALETTE } from "./svg-chart.ts";

// ---------------------------------------------------------------- reading the JSON

/** The result files the report knows, by name (loadtest/results/<file>) and the script that writes each. */
export const RESULT_FILES = {
  engine: { file: "engine.json", script: "bench:engine" },
  limits: { file: "limits.json", script: "bench:limits" },
  alternatives: { file: "alternatives.json", script: "bench:alternatives" },
  batching: { file: "batching.json", script: "bench:batching" },
  serve: { file: "serve.json", script: "bench:serve" },
  sweep: { file: "sweep.json", script: "bench:sweep" },
  model: { file: "colm-kjv.json", script: "bench:model" },
  model_long: { file: "colm-long.json", script: "bench:model -- --dir models/colm-long" },
  prefix: { file: "prefix.json", script: "bench:prefix" },
  engine_q8: { file: "engine-q8.json", script: "bench:engine -- --quant q8" },
  engine_q4: { file: "engine-q4.json", script: "bench:engine -- --quant q4" },
  model_q8: { file: "colm-kjv-q8.json", script: "bench:model -- --quant q8" },
  model_q4: { file: "colm-kjv-q4.json", script: "bench:model -- --quant q4" },
  spec: { file: "spec-colm-kjv.json", script: "bench:spec" },
  spec_long: { file: "spec-colm-long.json", script: "bench:spec -- --dir models/colm-long" },
  soak: { file: "soak.json", script: "bench:soak" },
} as const;

export type ResultName = keyof typeof RESULT_FILES;
/** Parsed JSON per result; absent = not run. */
export type ResultSet = Partial<Record<ResultName, unknown>>;

export function readResults(dir: string): ResultSet {
  const out: ResultSet = {};
  for (const [name, { file }] of Object.entries(RESULT_FILES) as Array<[ResultName, { file: string }]>) {
    const path = join(dir, file);
    if (existsSync(path)) out[name] = JSON.parse(readFileSync(path, "utf8")) as unknown;
  }
  return out;
}

/** The value at `path` under `value`, or undefined if any step is missing. */
function at(value: unknown, ...path: Array<string | number>): unknown {
  let v = value;
  for (const key of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string, unknown>)[String(key)];
  }
  return v;
}

function num(value: unknown, ...path: Array<string | number>): number | undefined {
  const v = at(value, ...path);
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

/** " (quartiles a–b over N <what>)" for a ratio whose spread the result records, else "". */
function quartiles(r: unknown, key: string, count: number | undefined, what: string): string {
  const [q1, q3] = [num(r, key, 0), num(r, key, 1)];
  return q1 === undefined || q3 === undefined ? "" : ` (quartiles ${q1.toFixed(2)}–${q3.toFixed(2)} over ${count ?? "?"} ${what})`;
}

function str(value: unknown, ...path: Array<string | number>): string | undefined {
  const v = at(value, ...path);
  return typeof v === "string" ? v : undefined;
}

function keys(value: unknown, ...path: Array<string | number>): string[] {
  const v = at(value, ...path);
  return v !== null && typeof v === "object" && !Array.isArray(v) ? Object.keys(v) : [];
}

function list(value: unknown, ...path: Array<string | number>): unknown[] {
  const v = at(value, ...path);
  return Array.isArray(v) ? v : [];
}

// ---------------------------------------------------------------- formatting

/** A number for a table: 3 significant digits at most (no exponent), "–" when unknown. */
function fmt(v: number | undefined, digits?: number): string {
  if (v === undefined) return "–";
  if (digits !== undefined) return v.toFixed(digits);
  const a = Math.abs(v);
  return a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toPrecision(2);
}

const pct = (v: number | undefined) => (v === undefined ? "–" : `${(v * 100).toFixed(0)}%`);
const times = (v: number | undefined) => (v === undefined ? "–" : `${fmt(v)}×`);
const mib = (bytes: number | undefined) => (bytes === undefined ? "–" : `${(bytes / 2 ** 20).toFixed(0)} MiB`);

function table(header: string[], rows: string[][]): string[] {
  return [`| ${header.join(" | ")} |`, `| ${header.map(() => "---").join(" | ")} |`, ...rows.map((r) => `| ${r.join(" | ")} |`)];
}

/** "nproc 2, AMD EPYC" from a result's `machine` stamp. */
export function machineOf(result: unknown): string {
  const nproc = num(result, "machine", "nproc");
  const cpu = str(result, "machine", "cpu");
  return `nproc ${nproc ?? "?"}, ${cpu ?? "unknown CPU"}`;
}

/** The command that produced a result (its stamp, else the npm script). */
export function commandOf(result: unknown, name: ResultName): string {
  return str(result, "command") ?? `npm run ${RESULT_FILES[name].script}`;
}

function notRun(name: ResultName): string[] {
  const { file, script } = RESULT_FILES[name];
  return [`_Not run: \`loadtest/results/${file}\` is missing (\`npm run ${script}\`)._`, ""];
}

// ---------------------------------------------------------------- the report

export interface Report {
  markdown: string;
  /** SVG text by file name (written beside REPORT.md). */
  charts: Record<string, string>;
}

/** Accumulates one section's markdown and its charts. */
class Section {
  readonly lines: string[] = [];
  constructor(
    readonly charts: Record<string, string>,
    private readonly result: unknown,
    private readonly name: ResultName,
  ) {}

  /** Caption lines shared by the SVG and the markdown: command, machine, what the numbers are. */
  caption(what: string): string[] {
    return [`command: ${commandOf(this.result, this.name)}`, `machine: ${machineOf(this.result)}`, what];
  }

  /** Store `svg` as `file` and reference it with its caption. */
  figure(file: string, alt: string, svg: string, what: string): void {
    this.charts[file] = svg;
    const [command, machine] = [commandOf(this.result, this.name), machineOf(this.result)];
    this.lines.push(`![${alt}](${file})`, "", `*${alt}. Command: \`${command}\`; machine: ${machine}; ${what}.*`, "");
  }
}

const KS = ["1", "2", "3", "4"];

function engineSection(r: unknown, charts: Record<string, string>): string[] {
  const s = new Section(charts, r, "engine");
  const repeats = num(r, "repeats");
  const what = `median of ${repeats ?? "?"} timed runs in one invocation`;
  s.lines.push(`Shape: ${str(r, "shape") ?? "–"}; dense baseline of the same full width, one chain.`, "");
  const decode = KS.map((k) => num(r, "decode_tokens_per_s", k));
  const dense = num(r, "dense", "decode_tokens_per_s", "1");
  const llama = num(r, "vs_llama_cpp_m", "anchors", "decode_tok_s");
  const llamaFlash = num(r, "vs_llama_cpp_m", "anchors", "flash_decode_tok_s");
  s.lines.push(
    ...table(
      ["", ...KS.map((k) => `CoLM k=${k}`), "dense (ours)", "llama.cpp dense M"],
      [[`decode tok/s (batch 1, ${num(r, "decode_context_tokens") ?? "?"} tokens of context)`, ...decode.map((v) => fmt(v)), fmt(dense), `${fmt(llama)} (${fmt(llamaFlash)} flash)`]],
    ),
    "",
  );
  s.figure(
    "engine-decode.svg",
    "Decode tokens/s per chain count vs dense",
    barChart({
      title: "Decode tokens/s at batch 1 (bench-m)",
      xLabel: "sub-model (chain count k)",
      yLabel: "tokens/s",
      yScale: "log",
      categories: KS.map((k) => `k=${k}`),
      series: [{ name: "CoLM-Air (ours)", values: decode.map((v) => v ?? null) }],
      references: [
        ...(dense !== undefined ? [{ name: `dense, same width (ours): ${fmt(dense)}`, value: dense }] : []),
        ...(llama !== undefined ? [{ name: `llama.cpp dense M: ${fmt(llama)}`, value: llama }] : []),
      ],
      caption: s.caption(`${what}; llama.cpp: the anchors in loadtest/README.md, same machine type`),
    }),
    what,
  );

  const lengths = list(r, "prefill_lengths").filter((v): v is number => typeof v === "number");
  const prefillLengths = lengths.length ? lengths : keys(r, "prefill_by_length").map(Number);
  const llamaPrefill = (n: number): number | undefined => {
    const rate = num(r, "vs_llama_cpp_m", "anchors", `prefill_${n}_tok_s`);
    return rate === undefined ? undefined : (n / rate) * 1000;
  };
  const rows: Array<[string, (n: number) => number | undefined]> = [
    ["time to first token at k=4: chain-1 prefill + last token (ms)", (n) => num(r, "prefill_by_length", n, "chain1_ms")],
    ["full 4-chain prefill (ms)", (n) => num(r, "prefill_by_length", n, "full_ms")],
    ["dense prefill (ms)", (n) => num(r, "dense", "prefill", n, "full_ms")],
    ["llama.cpp dense M prefill (ms)", llamaPrefill],
  ];
  s.lines.push(...table(["prompt tokens", ...prefillLengths.map(String)], rows.map(([label, f]) => [label, ...prefillLengths.map((n) => fmt(f(n)))])), "");
  s.figure(
    "engine-prefill.svg",
    "Time to first token vs prompt length",
    lineChart({
      title: "Prefill time vs prompt length (bench-m, k=4 answer)",
      xLabel: "prompt tokens",
      yLabel: "ms",
      yScale: "log",
      xTicks: prefillLengths,
      series: rows.map(([label, f]) => ({ name: label.replace(/ \(ms\)$/, "").replace(/^time to first token at k=4: /, ""), points: prefillLengths.map((n): [number, number | null] => [n, f(n) ?? null]) })),
      caption: s.caption(`${what}; llama.cpp: the anchors in loadtest/README.md`),
    }),
    what,
  );
  s.lines.push(
    `- Chain-1 prefill speedup over the full 4-chain prefill at ${num(r, "prompt_tokens") ?? "?"} tokens: ${times(num(r, "prefill_speedup"))}${quartiles(r, "prefill_speedup_quartiles", num(r, "repeats"), "repeats")} ` +
      `(vs our dense prefill ${times(num(r, "prefill_speedup_vs_dense"))}); last-token logits agree to ${fmt(num(r, "prefill_max_abs_diff"))}.`,
    `- Time to first token for a 2048-token prompt vs llama.cpp's dense M prefill: ${times(num(r, "vs_llama_cpp_m", "ttft_2048_speedup_vs_llama_cpp_dense_prefill"))} shorter.`,
    `- Decode at k=4 vs llama.cpp dense M: ${times(num(r, "vs_llama_cpp_m", "decode_k4_over_llama_cpp"))}; vs our dense model: ${times(num(r, "decode_k4_over_dense"))}${quartiles(r, "decode_k4_over_dense_quartiles", num(r, "decode_k4_vs_dense_paired", "rounds"), "alternating rounds")}; k=1 vs k=4: ${times(num(r, "decode_ratio_k1_over_k4"))}${quartiles(r, "decode_ratio_k1_over_k4_quartiles", num(r, "repeats"), "rounds")}.`,
    `- Resident memory with every size ready: ${times(num(r, "rss_over_weight_bytes"))} the weight bytes (${mib(num(r, "weight_bytes"))} of weights).`,
    "",
  );
  return s.lines;
}

function limitsSection(r: unknown, charts: Record<string, string>): string[] {
  const s = new Section(charts, r, "limits");
  s.lines.push(
    `Peak float32 MatMul: **${fmt(num(r, "peak_gflops"))} GFLOP/s**; streaming memory bandwidth: **${fmt(num(r, "bandwidth_gbps"))} GB/s** ` +
      `(best round's median of ${num(r, "repeats") ?? "?"} runs, ${num(r, "rounds") ?? "?"} rounds; onnxruntime, ${num(r, "threads") ?? "?"} threads). ` +
      `Engine times from \`${str(r, "engine_inputs", "command") ?? "npm run bench:engine"}\`.`,
    "",
  );
  const lengths = keys(r, "prefill_mfu", "by_length");
  const kinds: Array<[string, string]> = [
    ["colm_chain1", "CoLM chain-1 prefill"],
    ["colm_full", "CoLM full 4-chain prefill"],
    ["dense", "dense prefill"],
  ];
  if (lengths.length) {
    s.lines.push(
      ...table(
        ["prefill MFU (GFLOP/s)", ...lengths.map((n) => `${n} tokens`)],
        kinds.map(([key, label]) => [label, ...lengths.map((n) => `${pct(num(r, "prefill_mfu", "by_length", n, key, "mfu"))} (${fmt(num(r, "prefill_mfu", "by_length", n, key, "gflops"))})`)]),
      ),
      "",
    );
  }
  const cats = [...KS, "dense"];
  const fraction = cats.map((k) => num(r, "decode_roofline_fraction", k));
  s.lines.push(
    ...table(
      ["decode", ...KS.map((k) => `k=${k}`), "dense"],
      [
        ["share of memory bandwidth (roofline)", ...fraction.map(pct)],
        ["achieved GB/s", ...cats.map((k) => fmt(num(r, "decode_roofline", k, "gbps")))],
      ],
    ),
    "",
  );
  const what = "ratios of medians from one run";
  s.figure(
    "limits-decode-roofline.svg",
    "Decode: share of the measured memory bandwidth",
    barChart({
      title: "Decode roofline fraction (bench-m, batch 1)",
      xLabel: "model",
      yLabel: "fraction of measured bandwidth",
      categories: cats.map((k) => (k === "dense" ? "dense" : `k=${k}`)),
      series: [{ name: "bytes read per token × tok/s ÷ bandwidth", values: fraction.map((v) => v ?? null) }],
      caption: s.caption(what),
    }),
    what,
  );
  return s.lines;
}

function alternativesSection(r: unknown, charts: Record<string, string>): string[] {
  const s = new Section(charts, r, "alternatives");
  s.lines.push(`Ours: ${str(r, "colm_shape") ?? "–"}. Instead: four dense models of widths ${list(r, "dense_shapes").map((d) => num(d, "width") ?? "?").join(", ")} (one chain each, same depth) in one process.`, "");
  const mem = (who: string, field: string) => num(r, "memory", who, field);
  s.lines.push(
    ...table(
      ["", "CoLM-Air (one weight set)", "four dense models", "dense ÷ ours"],
      [
        ["resident memory (RSS)", mib(mem("colm", "rss_bytes")), mib(mem("dense_four", "rss_bytes")), times(num(r, "memory", "rss_ratio_dense_over_colm"))],
        ["weight bytes", mib(mem("colm", "weight_bytes")), mib(mem("dense_four", "weight_bytes")), times(num(r, "memory", "weight_ratio_dense_over_colm"))],
      ],
    ),
    "",
  );
  const toMiB = (v: number | undefined) => (v === undefined ? null : v / 2 ** 20);
  const memWhat = "one measurement per fresh process";
  s.figure(
    "alternatives-memory.svg",
    "Memory: one elastic model vs four dense models",
    barChart({
      title: "Memory for every size ready: ours vs four dense models",
      xLabel: "",
      yLabel: "MiB",
      categories: ["resident memory (RSS)", "weight bytes"],
      series: [
        { name: "CoLM-Air, one weight set", values: [toMiB(mem("colm", "rss_bytes")), toMiB(mem("colm", "weight_bytes"))] },
        { name: "four dense d_1…d_4", values: [toMiB(mem("dense_four", "rss_bytes")), toMiB(mem("dense_four", "weight_bytes"))] },
      ],
      caption: s.caption(memWhat),
    }),
    memWhat,
  );
  const context = num(r, "context_tokens");
  const targets = keys(r, "switch_by_target");
  const sw = (k: string, f: string) => num(r, "switch_by_target", k, f);
  s.lines.push(
    ...table(
      [`switch to k with a ${context ?? "?"}-token context`, ...targets.map((k) => `k=${k}`)],
      [
        ["dense: re-prefill on the target model + first token (ms)", ...targets.map((k) => fmt(sw(k, "switch_ms")))],
        ["CoLM-Air: next token at k (ms)", ...targets.map((k) => fmt(sw(k, "colm_switch_ms")))],
        ["dense ÷ ours", ...targets.map((k) => times(sw(k, "dense_over_colm")))],
      ],
    ),
    "",
  );
  const swWhat = `medians of ${num(r, "repeats") ?? "?"} dense switches and ${num(r, "step_repeats") ?? "?"} CoLM steps, one run`;
  s.figure(
    "alternatives-switch.svg",
    "Cost of switching model size mid-conversation",
    barChart({
      title: `Switching size mid-conversation (${context ?? "?"}-token context)`,
      xLabel: "target size",
      yLabel: "ms until the next token",
      yScale: "log",
      categories: targets.map((k) => `k=${k}`),
      series: [
        { name: "dense: re-prefill", values: targets.map((k) => sw(k, "switch_ms") ?? null) },
        { name: "CoLM-Air: next token", values: targets.map((k) => sw(k, "colm_switch_ms") ?? null) },
      ],
      caption: s.caption(swWhat),
    }),
    swWhat,
  );
  return s.lines;
}

function batchingSection(r: unknown, charts: Record<string, string>): string[] {
  const s = new Section(charts, r, "batching");
  const conc = keys(r, "throughput");
  s.lines.push(
    `Shape: ${str(r, "shape") ?? "–"}; ${num(r, "prompt_tokens") ?? "?"}-token prompts, ${num(r, "max_tokens") ?? "?"} tokens each at k=${num(r, "chains") ?? "?"}.`,
    "",
    ...table(
      ["concurrent requests", ...conc],
      [
        ["generated tok/s, concurrent", ...conc.map((c) => fmt(num(r, "throughput", c, "concurrent_tok_s")))],
        ["generated tok/s, one at a time", ...conc.map((c) => fmt(num(r, "throughput", c, "sequential_tok_s")))],
        ["ratio", ...conc.map((c) => times(num(r, "throughput", c, "ratio")))],
      ],
    ),
    "",
  );
  return s.lines;
}

function prefixSection(r: unknown, charts: Record<string, string>): string[] {
  const s = new Section(charts, r, "prefix");
  const ks = keys(r, "by_chains");
  const byK = (k: string, field: string) => num(r, "by_chains", k, field);
  s.lines.push(
    `Shape: ${str(r, "shape") ?? "–"}. Turn 1: a ${num(r, "turn1_prompt_tokens") ?? "?"}-token prompt and ${num(r, "turn1_answer_tokens") ?? "?"} generated tokens; turn 2 adds ${num(r, "turn2_new_tokens") ?? "?"} tokens. Medians of ${num(r, "repeats") ?? "?"} runs, cache off and on alternating on one engine.`,
    "",
    ...table(
      ["", ...ks.map((k) => k.replace("k", "k="))],
      [
        ["turn-2 TTFT, cache off (ms)", ...ks.map((k) => fmt(byK(k, "turn2_ttft_ms_cache_off")))],
        ["turn-2 TTFT, cache on (ms)", ...ks.map((k) => fmt(byK(k, "turn2_ttft_ms_cache_on")))],
        ["off ÷ on", ...ks.map((k) => times(byK(k, "turn2_ttft_off_over_on")))],
        ["turn-2 prompt tokens (cached)", ...ks.map((k) => `${fmt(byK(k, "turn2_prompt_tokens"))} (${fmt(byK(k, "turn2_cached_tokens"))})`)],
      ],
    ),
    "",
    `Bytes per cached token: ${fmt(num(r, "bytes_per_cached_token"))} (chain 1's keys/values, every size shares them) against ${fmt(num(r, "dense_bytes_per_token"))} for a dense model of the same width (${times(num(r, "dense_over_cached_bytes_per_token"))}). Hit rate over the run: ${pct(num(r, "hit_rate"))}.`,
    "",
  );
  const load = at(r, "shared_system_prompt_load");
  if (load !== undefined) {
    const row = (which: string) => [which.replace("_", " "), fmt(num(load, which, "goodput_req_s"), 2), pct(num(load, which, "slo_met")), fmt(num(load, which, "ttft_p50_ms")), fmt(num(load, which, "ttft_p99_ms"))];
    s.lines.push(
      `Shared system prompt (${str(load, "shape") ?? "–"}): every request starts with the same ${num(load, "system_prompt_tokens") ?? "?"} tokens, ${fmt(num(load, "rate_req_s"), 2)} req/s Poisson arrivals, TTFT SLO ${fmt(num(load, "ttft_slo_ms"))} ms.`,
      "",
      ...table(["", "goodput (req/s)", "within SLO", "TTFT p50 (ms)", "TTFT p99 (ms)"], [row("cache_off"), row("cache_on")]),
      "",
    );
  }
  return s.lines;
}

function serveSection(r: unknown, charts: Record<string, string>): string[] {
  const s = new Section(charts, r, "serve");
  const row = (label: string, f: (who: string) => string) => [label, f("adaptive"), f("fixed_k4")];
  s.lines.push(
    `Shape: ${str(r, "shape") ?? "–"}; ${num(r, "requests") ?? "?"} requests (Poisson) at ${fmt(num(r, "offered_req_s"))} req/s = ${times(num(r, "overload"))} what k=4 sustains; budget \`tpot_ms\` ${fmt(num(r, "budget", "tpot_ms"))}. Command: \`${commandOf(r, "serve")}\`; machine: ${machineOf(r)}; one run.`,
    "",
    ...table(
      ["", "latency routing + switching", "fixed k=4"],
      [
        row("budget met", (w) => pct(num(r, w, "budget_met"))),
        row("mean chain count", (w) => fmt(num(r, w, "mean_chains"))),
        row("TPOT p50 (ms)", (w) => fmt(num(r, w, "tpot_p50_ms"))),
        row("TTFT p50 (ms)", (w) => fmt(num(r, w, "ttft_p50_ms"))),
        row("generated tok/s", (w) => fmt(num(r, w, "tokens_per_s"))),
      ],
    ),
    "",
  );
  return s.lines;
}

/** The sweep's policies in chart order, with their display names. */
const SWEEP_POLICIES: Array<[string, string]> = [
  ["fixed-k4", "fixed k=4"],
  ["routing", "budget routing, no switching"],
  ["adaptive", "budget routing + switching"],
];

function sweepSection(r: unknown, charts: Record<string, string>): string[] {
  const s = new Section(charts, r, "sweep");
  const points = (policy: string) => list(r, "points", policy);
  const loads = [...new Set(SWEEP_POLICIES.flatMap(([p]) => points(p).map((pt) => num(pt, "load")).filter((v): v is number => v !== undefined)))].sort((a, b) => a - b);
  const sustained = num(r, "k4_sustained_req_s");
  s.lines.push(
    `Shape: ${str(r, "shape") ?? "–"}; ${num(r, "prompt_tokens") ?? "?"}-token prompts, ${num(r, "max_tokens") ?? "?"} tokens each, batch ${num(r, "batch") ?? "?"}. ` +
      `Load 1× = what a fixed k=4 sustains with the batch full (${fmt(sustained)} req/s, TPOT p50 ${fmt(num(r, "k4_tpot_p50_ms_full_batch"))} ms); ` +
      `each point is ${num(r, "requests_per_run") ?? "?"} Poisson arrivals (same seed for every policy). Budget \`tpot_ms\` ${fmt(num(r, "budget", "tpot_ms"))} ` +
      `(${pct(num(r, "budget_frac_of_k4_tpot"))} of k=4's TPOT at full batch) on every elastic request; fixed-k=4 requests are judged by the same budget.`,
    "",
    ...SWEEP_POLICIES.flatMap(([policy, label]) => {
      const how = str(r, "policies", policy);
      return how === undefined ? [] : [`- ${label}: ${how.replace(/</g, "&lt;")}.`]; // "<name>" is not an HTML tag
    }),
    "",
  );
  const what = `p50/p99 over the ${num(r, "requests_per_run") ?? "?"} requests of one run per point`;
  const xTickLabel = (x: number) => `${x}×`;
  const byPolicy = (field: string, dashed = false, suffix = ""): LineSeries[] =>
    SWEEP_POLICIES.map(([policy, label], i) => ({
      name: label + suffix,
      color: PALETTE[i],
      dashed,
      points: points(policy).flatMap((pt): Array<[number, number | null]> => {
        const x = num(pt, "load");
        return x === undefined ? [] : [[x, num(pt, field) ?? null]];
      }),
    }));
  const loadChart = (file: string, alt: string, title: string, yLabel: string, series: LineSeries[], yScale: "linear" | "log", caption: string, yFromZero = false) =>
    s.figure(file, alt, lineChart({ title, xLabel: `offered load (× k=4 sustained rate, ${fmt(sustained)} req/s)`, yLabel, yScale, yFromZero, xTicks: loads, xTickLabel, series, caption: s.caption(caption) }), caption);

  loadChart("sweep-ttft.svg", "Time to first token vs offered load", "Time to first token vs load (solid p50, dashed p99)", "TTFT (ms)", [...byPolicy("ttft_p50_ms", false, " p50"), ...byPolicy("ttft_p99_ms", true, " p99")], "log", what);
  loadChart("sweep-tpot.svg", "Time per output token vs offered load", "Time per output token vs load (solid p50, dashed p99)", "TPOT (ms)", [...byPolicy("tpot_p50_ms", false, " p50"), ...byPolicy("tpot_p99_ms", true, " p99")], "linear", what);
  loadChart("sweep-chains.svg", "Mean chain count served vs offered load", "Mean chain count served vs load (the elastic curve)", "mean chains per token", byPolicy("mean_chains"), "linear", "mean over every token served, one run per point", true);
  loadChart("sweep-budget.svg", "Share of requests meeting the budget vs offered load", "Requests meeting the TPOT budget vs load", "share met", byPolicy("budget_met"), "linear", "share of one run's requests per point", true);

  const rows: string[][] = [];
  for (const load of loads) {
    for (const [policy, label] of SWEEP_POLICIES) {
      const pt = points(policy).find((p) => num(p, "load") === load);
      if (!pt) continue;
      rows.push([
        `${load}× (${fmt(num(pt, "offered_req_s"))} req/s)`,
        label,
        `${fmt(num(pt, "ttft_p50_ms"))} / ${fmt(num(pt, "ttft_p99_ms"))}`,
        `${fmt(num(pt, "tpot_p50_ms"))} / ${fmt(num(pt, "tpot_p99_ms"))}`,
        fmt(num(pt, "mean_chains"), 2),
        pct(num(pt, "budget_met")),
        fmt(num(pt, "tokens_per_s")),
      ]);
    }
  }
  s.lines.push(...table(["offered load", "policy", "TTFT p50 / p99 (ms)", "TPOT p50 / p99 (ms)", "mean chains", "budget met", "tok/s"], rows), "");
  return s.lines;
}

function modelSection(r: unknown, charts: Record<string, string>, name: ResultName = "model"): string[] {
  const s = new Section(charts, r, name);
  const prompts = keys(r, "prefill");
  s.lines.push(
    `Model \`${str(r, "model") ?? "?"}\` (weights ${mib(num(r, "weight_bytes"))}). Command: \`${commandOf(r, name)}\`; machine: ${machineOf(r)}; medians from one run.`,
    "",
    ...table(["", ...KS.map((k) => `k=${k}`)], [[`decode tok/s (batch 1, ${num(r, "decode_context_tokens") ?? "?"} tokens of context)`, ...KS.map((k) => fmt(num(r, "decode_tokens_per_s", k)))]]),
    "",
    ...prompts.map((p) => `Prefill of ${p} tokens: full ${fmt(num(r, "prefill", p, "full_ms"), 1)} ms, chain-1 ${fmt(num(r, "prefill", p, "chain1_ms"), 1)} ms (${times(num(r, "prefill", p, "speedup"))}).`),
    "",
  );
  return s.lines;
}

/** Quantized weights: per precision, bench-m's figures and the bundled model's validation loss against f32, each from one run. */
function quantSection(results: ResultSet): string[] {
  const lines: string[] = [];
  const rows: string[][] = [];
  for (const p of ["q8", "q4"] as const) {
    const e = results[`engine_${p}`];
    if (!e) continue;
    rows.push([
      p,
      mib(num(e, "weight_bytes")),
      KS.map((k) => fmt(num(e, "decode_tokens_per_s", k))).join(" / "),
      `${times(num(e, "decode_k4_over_f32"))} (${fmt(num(e, "decode_k4_vs_f32_paired", "quantized_tokens_per_s"))} vs ${fmt(num(e, "decode_k4_vs_f32_paired", "f32_tokens_per_s"))})`,
      `${times(num(e, "vs_llama_cpp_m", "decode_k4_over_llama_cpp"))} of ${fmt(num(e, "vs_llama_cpp_m", "anchors", "decode_tok_s"))}`,
      `${fmt(num(e, "vs_llama_cpp_m", "ttft_2048_ms"))} ms (${times(num(e, "vs_llama_cpp_m", "ttft_2048_speedup_vs_llama_cpp_prefill"))} shorter)`,
      times(num(e, "prefill_speedup")),
      fmt(num(e, "rss_over_weight_bytes"), 2),
    ]);
  }
  if (rows.length) {
    lines.push(`bench-m quantized (\`npm run bench:engine -- --quant q8|q4\`); machine: ${machineOf(results.engine_q8 ?? results.engine_q4)}. k=4 ÷ f32 is a median of alternating rounds in the same run; llama.cpp is Q8_0 / Q4_0 on dense M.`, "");
    const note = str(results.engine_q8, "note") ?? str(results.engine_q4, "note");
    if (note) lines.push(`_${note}_`, "");
    lines.push(...table(["precision", "weights", "decode tok/s k=1 / 2 / 3 / 4", "k=4 ÷ f32 k=4", "k=4 vs llama.cpp", "TTFT 2048 tokens", "chain-1 prefill speedup", "RSS / weights"], rows), "");
  }
  const quality: string[][] = [];
  for (const p of ["q8", "q4"] as const) {
    const m = results[`model_${p}`];
    const ratio = list(m, "val_loss_over_f32") as number[];
    if (m && ratio.length) quality.push([p, ...ratio.map((x) => `${((x - 1) * 100).toFixed(2)}%`), String(at(m, "val_loss_strictly_improving_with_k"))]);
  }
  if (quality.length) {
    lines.push("The bundled model's validation loss (nats/byte, whole held-out split) against f32, per k (`npm run bench:model -- --quant q8|q4`):", "");
    lines.push(...table(["precision", ...KS.map((k) => `k=${k}`), "strictly improving with k"], quality), "");
  }
  return lines.length ? lines : ["_Not run: `loadtest/results/engine-q8.json` / `engine-q4.json` are missing (`npm run bench:engine -- --quant q8|q4`)._", ""];
}

/** The headline: one line per claim, from whichever results exist. */
function specSection(r: unknown, charts: Record<string, string>, name: ResultName = "spec"): string[] {
  const s = new Section(charts, r, name);
  const variants = keys(r, "greedy", "tokens_per_s");
  const label = (v: string) => (v === "plain" ? "plain" : v === "auto" ? "auto" : `γ=${v.replace("gamma", "")}`);
  const pairs = list(r, "acceptance");
  s.lines.push(
    `Model: ${str(r, "model") ?? "–"}, batch 1 at k=${num(r, "chains") ?? "?"}; ${num(r, "prompts") ?? "?"} held-out prompts (World English Bible, median ${fmt(num(r, "prompt_tokens_median"))} tokens) × ${num(r, "rounds") ?? "?"} rounds, ${num(r, "tokens") ?? "?"} tokens each; decode tok/s per generation from its first token to its last (medians). Draft: sub-model 1.`,
    "",
    ...table(
      ["", ...variants.map(label)],
      [
        ["greedy tok/s", ...variants.map((v) => fmt(num(r, "greedy", "tokens_per_s", v)))],
        ["greedy ÷ plain", ...variants.map((v) => times(num(r, "greedy", "speedup", v)))],
        ["temperature 0.8 ÷ plain", ...variants.map((v) => times(num(r, "temperature_0_8", "speedup", v)))],
      ],
    ),
    "",
    `Greedy tokens identical to plain decoding for every prompt and variant: ${at(r, "greedy", "greedy_identical") === true ? "yes" : "NO"}. Acceptance (per draft, given the earlier drafts were accepted; greedy, γ = 4): ${pairs.map((p) => `${num(p, "draft_chains")}→${num(p, "chains")} ${fmt(num(p, "acceptance"), 3)}`).join(", ")}.`,
    "",
    `${num(r, "auto_at_concurrency", "concurrency") ?? "?"} concurrent greedy generations: ${fmt(num(r, "auto_at_concurrency", "tokens_per_s", "auto"))} tok/s with \`auto\` against ${fmt(num(r, "auto_at_concurrency", "tokens_per_s", "off"))} with speculation off (${times(num(r, "auto_at_concurrency", "ratio"))}).`,
    "",
  );
  const m = at(r, "bench_m_step_costs");
  if (m !== undefined) {
    const gammas = keys(m, "verify_ms");
    s.lines.push(
      `Step costs on bench-m (random weights, batch 1, 128-token prompt): decode k=1 ${fmt(num(m, "decode_ms", "k1"), 1)} ms, k=4 ${fmt(num(m, "decode_ms", "kn"), 1)} ms; draft step ${fmt(num(m, "draft_ms"), 1)} ms; verify of γ+1 tokens at k=4: ${gammas.map((g) => `γ=${g} ${fmt(num(m, "verify_ms", g), 1)} ms`).join(", ")}. At the acceptance measured above (${fmt(num(r, "bench_m_projected_speedup_at_measured_acceptance", "acceptance"), 3)}) they imply ${gammas.map((g) => `γ=${g} ${times(num(r, "bench_m_projected_speedup_at_measured_acceptance", "by_gamma", g))}`).join(", ")}.`,
      "",
    );
  }
  return s.lines;
}

/** bench:soak: its verdicts, and the chart it draws itself (soak.svg). */
function soakSection(r: unknown): string[] {
  const v = at(r, "verdicts");
  const yes = (x: unknown) => (x === true ? "yes" : "NO");
  const samples = list(r, "samples");
  const rss = (i: number) => num(samples.at(i), "rss_less_cache_mb");
  return [
    `${num(r, "minutes") ?? "?"} minutes of mixed traffic (JSON, SSE, chat with budgets, abandoned streams, refusals, WebSocket switches and cancels) at ${num(r, "concurrency") ?? "?"} concurrent clients against \`npm start\`'s server on the default model, prefix cache ${str(r, "prefix_cache_mb") ?? fmt(num(r, "prefix_cache_mb"))} MiB; ${num(r, "requests") ?? "?"} requests, ${num(v, "failed_requests") ?? "?"} failed. Command: \`${commandOf(r, "soak")}\`; machine: ${machineOf(r)}.`,
    "",
    ...table(
      ["verdict", "figures", "holds"],
      [
        ["memory flat (resident less the prefix cache, last half vs minute " + fmt(num(v, "memory", "base_minute"), 0) + ")", `${fmt(num(v, "memory", "base_rss_less_cache_mb"), 1)} MB → at most ${fmt(num(v, "memory", "max_late_rss_less_cache_mb"), 1)} MB (limit ${fmt(num(v, "memory", "limit_mb"), 1)}); first sample ${fmt(rss(0), 1)}, last ${fmt(rss(-1), 1)}`, yes(at(v, "memory", "flat"))],
        ["V8 heap used", `${fmt(num(v, "heap", "base_mb"), 1)} MB at the base minute, at most ${fmt(num(v, "heap", "max_late_mb"), 1)} MB in the last half`, "–"],
        ["no latency drift (p99, last 10 min ÷ minutes 5–15)", `TTFT ${fmt(num(v, "latency", "ttft", "early_p99_ms"), 1)} → ${fmt(num(v, "latency", "ttft", "last_p99_ms"), 1)} ms (${times(num(v, "latency", "ttft", "ratio"))}); TPOT ${fmt(num(v, "latency", "tpot", "early_p99_ms"), 1)} → ${fmt(num(v, "latency", "tpot", "last_p99_ms"), 1)} ms (${times(num(v, "latency", "tpot", "ratio"))})`, yes(at(v, "latency", "no_drift"))],
        ["idle at the end", `running ${num(v, "idle", "running") ?? "?"}, KV in use ${num(v, "idle", "kv_bytes_in_use") ?? "?"} B`, yes(at(v, "idle", "ok"))],
      ],
    ),
    "",
    "![Soak: memory and latency over the run](soak.svg)",
    "",
  ];
}

function headline(results: ResultSet): string[] {
  const { engine, limits, alternatives, batching, sweep, model, prefix } = results;
  const rows: string[][] = [];
  const src = (name: ResultName) => `\`${commandOf(results[name], name)}\``;
  if (engine) {
    rows.push(["decode tok/s at k=1 / 2 / 3 / 4 (bench-m, batch 1)", KS.map((k) => fmt(num(engine, "decode_tokens_per_s", k))).join(" / "), `dense (ours) ${fmt(num(engine, "dense", "decode_tokens_per_s", "1"))}; llama.cpp M ${fmt(num(engine, "vs_llama_cpp_m", "anchors", "decode_tok_s"))}`, src("engine")]);
    rows.push(["time to first token, 2048-token prompt (ms)", fmt(num(engine, "vs_llama_cpp_m", "ttft_2048_ms")), `${times(num(engine, "vs_llama_cpp_m", "ttft_2048_speedup_vs_llama_cpp_dense_prefill"))} shorter than llama.cpp dense M`, src("engine")]);
    rows.push([`chain-1 prefill speedup (${num(engine, "prompt_tokens") ?? "?"} tokens)`, times(num(engine, "prefill_speedup")), `vs our full 4-chain prefill; ${times(num(engine, "prefill_speedup_vs_dense"))} vs our dense`, src("engine")]);
  }
  if (limits) rows.push(["machine: peak MatMul / bandwidth", `${fmt(num(limits, "peak_gflops"))} GFLOP/s / ${fmt(num(limits, "bandwidth_gbps"))} GB/s`, `prefill MFU ${pct(num(limits, "prefill_mfu", "chain1_k4"))} (chain 1), decode roofline k=4 ${pct(num(limits, "decode_roofline_fraction", "4"))}`, src("limits")]);
  if (alternatives) {
    rows.push(["resident memory, every size ready", `${mib(num(alternatives, "memory", "colm", "rss_bytes"))}`, `four dense models: ${mib(num(alternatives, "memory", "dense_four", "rss_bytes"))} (${times(num(alternatives, "memory", "rss_ratio_dense_over_colm"))})`, src("alternatives")]);
    const ratios = keys(alternatives, "switch_cost_ratio").map((k) => num(alternatives, "switch_cost_ratio", k)).filter((v): v is number => v !== undefined);
    if (ratios.length) rows.push([`switching size with a ${num(alternatives, "context_tokens") ?? "?"}-token context`, `next token, ${fmt(num(alternatives, "switch_by_target", "4", "colm_switch_ms"))} ms at k=4`, `dense re-prefill costs ${fmt(Math.min(...ratios))}–${fmt(Math.max(...ratios))}× that`, src("alternatives")]);
  }
  if (prefix) rows.push(["prefix cache: turn-2 TTFT after a 2000-token turn, off ÷ on", keys(prefix, "by_chains").map((k) => `${k.replace("k", "k=")} ${times(num(prefix, "by_chains", k, "turn2_ttft_off_over_on"))}`).join(", "), `${fmt(num(prefix, "bytes_per_cached_token"))} B per cached token, dense ${fmt(num(prefix, "dense_bytes_per_token"))}`, src("prefix")]);
  if (batching) rows.push(["continuous batching (bench-s, 16 concurrent)", times(num(batching, "throughput_ratio_c16")), "generated tok/s vs one at a time", src("batching")]);
  if (sweep) {
    const last = (policy: string) => list(sweep, "points", policy).at(-1);
    const load = num(last("adaptive"), "load");
    rows.push([
      `budget met at ${load ?? "?"}× k=4 saturation (bench-s)`,
      `${pct(num(last("adaptive"), "budget_met"))} with switching`,
      `${pct(num(last("routing"), "budget_met"))} routing only, ${pct(num(last("fixed-k4"), "budget_met"))} fixed k=4; mean chains ${fmt(num(last("adaptive"), "mean_chains"), 2)}`,
      src("sweep"),
    ]);
  }
  if (model) rows.push(["bundled colm-kjv decode tok/s k=1…4", KS.map((k) => fmt(num(model, "decode_tokens_per_s", k))).join(" / "), "batch 1", src("model")]);
  const long = results.model_long;
  if (long) rows.push(["default colm-long decode tok/s k=1…4", KS.map((k) => fmt(num(long, "decode_tokens_per_s", k))).join(" / "), "batch 1; 2048-token context", src("model_long")]);
  for (const p of ["q8", "q4"] as const) {
    const e = results[`engine_${p}`];
    if (e) rows.push([`${p} k=4 decode (bench-m)`, `${fmt(num(e, "decode_tokens_per_s", "4"))} tok/s; ${times(num(e, "decode_k4_over_f32"))} our f32 k=4`, `llama.cpp ${p === "q8" ? "Q8_0" : "Q4_0"} M ${fmt(num(e, "vs_llama_cpp_m", "anchors", "decode_tok_s"))}`, src(`engine_${p}`)]);
  }
  for (const name of ["spec", "spec_long"] as const) {
    const r = results[name];
    if (r) rows.push([`self-speculative decoding, ${str(r, "model") ?? "?"} k=${num(r, "chains") ?? "?"}, batch 1`, `greedy ${times(num(r, "greedy", "speedup", "auto"))} (auto), identical tokens; T 0.8 ${times(num(r, "temperature_0_8", "speedup", "auto"))}`, `plain decoding; ${times(num(r, "auto_at_concurrency", "ratio"))} at ${num(r, "auto_at_concurrency", "concurrency") ?? "?"} concurrent`, src(name)]);
  }
  const soak = results.soak;
  if (soak) {
    const v = at(soak, "verdicts");
    rows.push([`soak: ${num(soak, "minutes") ?? "?"} minutes of mixed traffic`, `memory ${at(v, "memory", "flat") === true ? "flat" : "NOT flat"}, TTFT / TPOT p99 drift ${times(num(v, "latency", "ttft", "ratio"))} / ${times(num(v, "latency", "tpot", "ratio"))}`, `${num(soak, "requests") ?? "?"} requests, ${num(v, "failed_requests") ?? "?"} failed; idle at the end: ${at(v, "idle", "ok") === true ? "yes" : "no"}`, src("soak")]);
  }
  if (!rows.length) return ["_No results yet: run `npm run bench`._", ""];
  return [...table(["", "CoLM-Air (colm-serve)", "compared with", "from"], rows), ""];
}

const SECTIONS: Array<[ResultName, string, (r: unknown, charts: Record<string, string>) => string[]]> = [
  ["engine", "Engine: prefill and decode", engineSection],
  ["limits", "Machine limits: MFU and roofline", limitsSection],
  ["alternatives", "What users would run instead: four dense models", alternativesSection],
  ["batching", "Continuous batching", batchingSection],
  ["prefix", "Prefix cache: multi-turn chat and a shared system prompt", prefixSection],
  ["serve", "Latency budgets under overload", serveSection],
  ["sweep", "Serving sweep: light load to 2× saturation", sweepSection],
  ["model", "The first bundled model (colm-kjv)", modelSection],
  ["model_long", "The default model (colm-long)", (r, charts) => modelSection(r, charts, "model_long")],
  ["spec", "Self-speculative decoding: the bundled model", specSection],
  ["spec_long", "Self-speculative decoding: the long-context model", (r, charts) => specSection(r, charts, "spec_long")],
  ["soak", "An hour of traffic: memory and latency", (r) => soakSection(r)],
];

/** The report for `results` (pure: no file access). */
export function buildReport(results: ResultSet): Report {
  const charts: Record<string, string> = {};
  const machines = [...new Set(Object.values(results).map((r) => machineOf(r)))];
  const lines: string[] = [
    "# colm-serve performance report",
    "",
    "Generated by `node --import tsx loadtest/report.ts` from the JSON in this folder; `npm run bench` re-measures everything and regenerates it.",
    `Machine(s): ${machines.length ? machines.join("; ") : "–"}. The machines are shared and noisy: every figure is a median or a ratio from one run of its command; reruns move by several percent.`,
    "",
    "## Headline",
    "",
    ...headline(results),
  ];
  for (const [name, title, section] of SECTIONS) {
    lines.push(`## ${title}`, "");
    const r = results[name];
    lines.push(...(r === undefined ? notRun(name) : section(r, charts)));
  }
  lines.push("## Quantized weights (q8, q4)", "", ...quantSection(results));
  return { markdown: lines.join("\n").replace(/\n{3,}/g, "\n\n"), charts };
}

/** Read `dir`'s JSON, write REPORT.md and the charts into it; returns the files written. */
export function writeReport(dir: string): string[] {
  const report = buildReport(readResults(dir));
  const written: string[] = [];
  for (const [file, svg] of Object.entries(report.charts)) {
    writeFileSync(join(dir, file), svg);
    written.push(join(dir, file));
  }
  writeFileSync(join(dir, "REPORT.md"), report.markdown);
  written.push(join(dir, "REPORT.md"));
  return written;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dirArg = process.argv.slice(2).find((a) => a.startsWith("--dir="));
  const dir = dirArg ? dirArg.slice("--dir=".length) : "loadtest/results";
  for (const file of writeReport(dir)) console.log(`wrote ${file}`);
}
