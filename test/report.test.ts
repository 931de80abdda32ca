// The performance report: the SVG chart writer (well-formed documents, every series named, log
// and linear axes) and REPORT.md built from fixture JSON (each figure's command and machine, a
// missing result reported as not run). No benchmark runs here.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { buildReport, writeReport, type ResultSet } from "../loadtest/report.ts";
import { barChart, escapeXml, formatNumber, lineChart, linearTicks, logTicks } from "../loadtest/svg-chart.ts";

/** Throws unless every element of `svg` is closed in order (a small XML well-formedness check). */
function assertWellFormed(svg: string): void {
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z][\w-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (selfClosing) continue;
    if (closing) assert.equal(stack.pop(), name, `</${name}> closes the wrong element`);
    else stack.push(name);
  }
  assert.deepEqual(stack, [], "unclosed elements");
  // Text may not hold a raw "<" or "&" (escaped as entities).
  assert.doesNotMatch(svg.replace(/<[^>]*>/g, ""), /<|&(?!amp;|lt;|gt;|quot;)/);
}

const seriesNames = (svg: string) => [...svg.matchAll(/class="series" data-name="([^"]*)"/g)].map((m) => m[1]);

describe("svg-chart", () => {
  test("ticks: nice linear steps cover the range; log ticks are powers of ten (with 2 and 5 over short ranges)", () => {
    assert.deepEqual(linearTicks(0, 97), [0, 20, 40, 60, 80, 100]);
    assert.deepEqual(linearTicks(1.2, 3.9, 5), [1, 2, 3, 4]);
    assert.deepEqual(linearTicks(0.12, 0.31), [0.1, 0.15, 0.2, 0.25, 0.3, 0.35]);
    assert.deepEqual(logTicks(3, 900), [1, 10, 100, 1000]);
    assert.deepEqual(logTicks(12, 80), [10, 20, 50, 100]);
    assert.equal(formatNumber(1509.4), "1509");
    assert.equal(formatNumber(25_000), "25k");
    assert.equal(formatNumber(0.125), "0.125");
    assert.equal(escapeXml(`a<b & "c"`), "a&lt;b &amp; &quot;c&quot;");
  });

  test("line chart: well-formed, every series in the plot and the legend, caption and labels escaped", () => {
    const svg = lineChart({
      title: "TTFT <vs> load",
      xLabel: "load",
      yLabel: "ms",
      yScale: "log",
      xTicks: [0.5, 1, 2],
      xTickLabel: (x) => `${x}×`,
      series: [
        { name: "fixed k=4 p50", points: [[0.5, 10], [1, 40], [2, 900]] },
        { name: "adaptive & switching", points: [[0.5, 11], [1, null], [2, 30]], dashed: true },
      ],
      caption: ["command: npm run bench:sweep --", "machine: nproc 2, Test CPU"],
    });
    assertWellFormed(svg);
    assert.deepEqual(seriesNames(svg), ["fixed k=4 p50", "adaptive &amp; switching"]);
    assert.ok(svg.includes("TTFT &lt;vs&gt; load") && svg.includes("ms (log scale)") && svg.includes("2×"));
    assert.ok(svg.includes("machine: nproc 2, Test CPU"));
    // The null point splits the dashed series into two one-point runs (no line through the gap).
    assert.equal((svg.match(/<polyline/g) ?? []).length, 1 + 2);
    assert.equal((svg.match(/stroke-dasharray/g) ?? []).length, 2 + 1); // two runs + the legend swatch
  });

  test("bar chart: one rect per measured value, nulls skipped, reference lines in the legend", () => {
    const svg = barChart({
      title: "decode",
      xLabel: "k",
      yLabel: "tok/s",
      categories: ["k=1", "k=2", "k=3"],
      series: [
        { name: "ours", values: [275, null, 62] },
        { name: "theirs", values: [100, 90, 80] },
      ],
      references: [{ name: "llama.cpp", value: 37.6 }],
    });
    assertWellFormed(svg);
    assert.deepEqual(seriesNames(svg), ["ours", "theirs", "llama.cpp"]);
    const bars = svg.match(/<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="[\d.]+" fill="#\w+"><title>/g) ?? [];
    assert.equal(bars.length, 5);
  });
});

const MACHINE = { nproc: 2, cpu: "Test CPU" };
const sweepPoint = (load: number, met: number, chains: number) => ({ load, offered_req_s: 20 * load, ttft_p50_ms: 10 * load, ttft_p99_ms: 40 * load, tpot_p50_ms: 8, tpot_p99_ms: 12, mean_chains: chains, budget_met: met, tokens_per_s: 600 * load });
const FIXTURE: ResultSet = {
  sweep: {
    machine: MACHINE,
    command: "npm run bench:sweep -- --requests=120",
    shape: "bench-s",
    requests_per_run: 120,
    k4_sustained_req_s: 20,
    budget: { tpot_ms: 15 },
    points: {
      "fixed-k4": [sweepPoint(0.5, 1, 4), sweepPoint(2, 0.05, 4)],
      routing: [sweepPoint(0.5, 1, 3.5), sweepPoint(2, 0.4, 2.1)],
      adaptive: [sweepPoint(0.5, 1, 3.4), sweepPoint(2, 0.97, 1.8)],
    },
  },
  engine: { machine: MACHINE, command: "npm run bench:engine --", repeats: 3, decode_tokens_per_s: { "1": 275, "2": 114, "3": 62, "4": 39.7 }, prefill_lengths: [512, 2048], prefill_by_length: { "512": { chain1_ms: 112, full_ms: 452 } } },
};

describe("report", () => {
  test("REPORT.md: figures state their command and machine, missing results say not run, headline from what exists", () => {
    const { markdown, charts } = buildReport(FIXTURE);
    assert.ok(markdown.includes("*Mean chain count served vs offered load. Command: `npm run bench:sweep -- --requests=120`; machine: nproc 2, Test CPU;"), markdown);
    assert.ok(markdown.includes("Command: `npm run bench:engine --`; machine: nproc 2, Test CPU; median of 3 timed runs"));
    for (const missing of ["limits.json", "alternatives.json", "batching.json", "serve.json", "colm-kjv.json"]) {
      assert.ok(markdown.includes(`_Not run: \`loadtest/results/${missing}\` is missing`), missing);
    }
    assert.match(markdown, /budget met at 2× k=4 saturation \(bench-s\) \| 97% with switching \| 40% routing only, 5% fixed k=4/);
    // A field the fixture lacks shows as "–", not NaN or undefined.
    assert.doesNotMatch(markdown, /NaN|undefined/);
    for (const file of ["sweep-ttft.svg", "sweep-tpot.svg", "sweep-chains.svg", "sweep-budget.svg", "engine-decode.svg", "engine-prefill.svg"]) {
      assert.ok(charts[file], file);
      assertWellFormed(charts[file]);
      assert.ok(markdown.includes(`](${file})`), file);
    }
    assert.deepEqual(seriesNames(charts["sweep-chains.svg"]), ["fixed k=4", "budget routing, no switching", "budget routing + switching"]);
    assert.ok(charts["sweep-ttft.svg"].includes("command: npm run bench:sweep -- --requests=120"));
  });

  test("no results at all: every section not run; writeReport writes REPORT.md into the folder", () => {
    const dir = mkdtempSync(join(tmpdir(), "colm-report-"));
    try {
      writeFileSync(join(dir, "sweep.json"), JSON.stringify(FIXTURE.sweep));
      const written = writeReport(dir);
      assert.ok(written.includes(join(dir, "REPORT.md")) && written.includes(join(dir, "sweep-chains.svg")));
      const md = readFileSync(join(dir, "REPORT.md"), "utf8");
      assert.ok(md.includes("_Not run: `loadtest/results/engine.json` is missing (`npm run bench:engine`)._"));
      assert.ok(buildReport({}).markdown.includes("_No results yet: run `npm run bench`._"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
