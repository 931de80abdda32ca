// A small SVG chart writer for the performance report: line charts (numeric x) and grouped bar
// charts (categorical x), several series each, linear or log y, with axes, ticks, axis labels, a
// legend and caption lines under the plot (the command and machine a figure came from). Plain
// strings, no dependency: the report needs a handful of static figures, not a charting library.

export type YScale = "linear" | "log";

interface ChartBase {
  title: string;
  xLabel: string;
  yLabel: string;
  /** Default linear. Log needs positive values; non-positive ones are left out. */
  yScale?: YScale;
  /** Lines of small text under the plot: the command, the machine, what the numbers are. */
  caption?: string[];
  /** Force y = 0 into a linear axis (default true for bars, false for lines). */
  yFromZero?: boolean;
  /** Plot area in pixels (default 560 × 340); the legend and margins come on top. */
  width?: number;
  height?: number;
}

export interface LineSeries {
  name: string;
  /** [x, y] pairs; a null or non-finite y breaks the line there. */
  points: Array<[number, number | null]>;
  /** Drawn dashed (e.g. a second statistic of the same policy: p99 beside p50). */
  dashed?: boolean;
  /** Default: the palette colour of the series' index. */
  color?: string;
}

export interface LineChartSpec extends ChartBase {
  series: LineSeries[];
  /** Where x ticks go (default: every x in the data). */
  xTicks?: number[];
  /** Text of an x tick (default: the number). */
  xTickLabel?: (x: number) => string;
}

export interface BarSeries {
  name: string;
  /** One value per category; null = not measured (no bar). */
  values: Array<number | null>;
  color?: string;
}

/** A horizontal dashed line across the plot: a value to compare every bar with. */
export interface ReferenceLine {
  name: string;
  value: number;
  color?: string;
}

export interface BarChartSpec extends ChartBase {
  categories: string[];
  series: BarSeries[];
  references?: ReferenceLine[];
  /** Print each bar's value above it. Default true. */
  valueLabels?: boolean;
}

/** Colour-blind-safe palette (Okabe–Ito), in series order. */
export const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"];

const FONT = `font-family="system-ui, -apple-system, 'Segoe UI', sans-serif"`;

export function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** A short number for ticks and labels: 3 significant digits, k/M for large magnitudes. */
export function formatNumber(v: number): string {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return `${trim(v / 1e6)}M`;
  if (a >= 1e4) return `${trim(v / 1e3)}k`;
  return trim(v);
}

function trim(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return String(Number(v.toFixed(digits)));
}

/** "Nice" linear ticks (steps of 1, 2 or 5 × 10^n) covering [lo, hi], about `count` of them. */
export function linearTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let t = Math.floor(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  if (ticks[0] > lo) ticks.unshift(ticks[0] - step);
  if (ticks[ticks.length - 1] < hi) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

/** Log ticks: every power of ten in range, with 2× and 5× between them when the range is short. */
export function logTicks(lo: number, hi: number): number[] {
  const first = Math.floor(Math.log10(lo));
  const last = Math.ceil(Math.log10(hi));
  const mantissas = last - first <= 2 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let e = first; e <= last; e++) for (const m of mantissas) ticks.push(Number((m * 10 ** e).toPrecision(12)));
  // Keep one tick at or below lo and one at or above hi, drop the rest outside.
  const below = ticks.filter((t) => t <= lo).pop() ?? ticks[0];
  const above = ticks.find((t) => t >= hi) ?? ticks[ticks.length - 1];
  return ticks.filter((t) => t >= below && t <= above);
}

/** A y axis: its ticks and the map from a value to a pixel row. */
interface YAxis {
  ticks: number[];
  toPx: (v: number) => number;
}

function yAxis(values: number[], scale: YScale, fromZero: boolean, top: number, bottom: number): YAxis {
  const usable = values.filter((v) => Number.isFinite(v) && (scale === "linear" || v > 0));
  let lo = usable.length ? Math.min(...usable) : scale === "log" ? 1 : 0;
  let hi = usable.length ? Math.max(...usable) : 1;
  if (scale === "log") {
    if (hi <= lo) hi = lo * 10;
    const ticks = logTicks(lo, hi);
    const [a, b] = [Math.log10(ticks[0]), Math.log10(ticks[ticks.length - 1])];
    return { ticks, toPx: (v) => bottom - ((Math.log10(v) - a) / (b - a || 1)) * (bottom - top) };
  }
  if (fromZero) lo = Math.min(0, lo);
  if (hi <= lo) hi = lo + 1;
  const ticks = linearTicks(lo, hi);
  const [a, b] = [ticks[0], ticks[ticks.length - 1]];
  return { ticks, toPx: (v) => bottom - ((v - a) / (b - a || 1)) * (bottom - top) };
}

/** Plot area and outer size of a chart (legend on the right, caption under the x label). */
interface Frame {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

const CAPTION_LINE = 14;
/** Rough width of a character of 12px sans-serif text (no font metrics in a string writer). */
const CHAR_PX = 6.8;

function frame(spec: ChartBase, legendNames: string[]): Frame {
  const left = 72;
  const right = left + (spec.width ?? 560);
  const legendWidth = 16 + 28 + Math.ceil(Math.max(8, ...legendNames.map((n) => n.length)) * CHAR_PX) + 12;
  const captionWidth = 8 + Math.max(0, ...(spec.caption ?? []).map((l) => l.length)) * CHAR_PX * 0.9;
  const top = 44;
  const bottom = top + (spec.height ?? 340);
  const captionLines = spec.caption?.length ?? 0;
  return { width: Math.ceil(Math.max(right + legendWidth, captionWidth)), height: bottom + 48 + captionLines * CAPTION_LINE + 8, left, right, top, bottom };
}

/** Frame, grid, y ticks, axis labels, title, legend and caption: everything but the data. */
function decorations(spec: ChartBase, f: Frame, y: YAxis, legend: Array<{ name: string; color: string; dashed?: boolean; bar?: boolean }>): string[] {
  const out: string[] = [];
  out.push(`<rect x="0" y="0" width="${f.width}" height="${f.height}" fill="#ffffff"/>`);
  out.push(`<text x="${f.left}" y="24" font-size="16" font-weight="600" ${FONT}>${escapeXml(spec.title)}</text>`);
  for (const t of y.ticks) {
    const py = y.toPx(t).toFixed(1);
    out.push(`<line x1="${f.left}" x2="${f.right}" y1="${py}" y2="${py}" stroke="#e4e4e4" stroke-width="1"/>`);
    out.push(`<text x="${f.left - 6}" y="${py}" font-size="11" text-anchor="end" dominant-baseline="middle" ${FONT}>${formatNumber(t)}</text>`);
  }
  out.push(`<line x1="${f.left}" x2="${f.left}" y1="${f.top}" y2="${f.bottom}" stroke="#333" stroke-width="1"/>`);
  out.push(`<line x1="${f.left}" x2="${f.right}" y1="${f.bottom}" y2="${f.bottom}" stroke="#333" stroke-width="1"/>`);
  const midY = (f.top + f.bottom) / 2;
  const yLabel = spec.yLabel + (spec.yScale === "log" ? " (log scale)" : "");
  out.push(`<text x="18" y="${midY}" font-size="12" text-anchor="middle" transform="rotate(-90 18 ${midY})" ${FONT}>${escapeXml(yLabel)}</text>`);
  out.push(`<text x="${(f.left + f.right) / 2}" y="${f.bottom + 38}" font-size="12" text-anchor="middle" ${FONT}>${escapeXml(spec.xLabel)}</text>`);
  legend.forEach((item, i) => {
    const ly = f.top + 8 + i * 20;
    const lx = f.right + 16;
    out.push(
      item.bar
        ? `<rect x="${lx}" y="${ly - 6}" width="22" height="12" fill="${item.color}"/>`
        : `<line x1="${lx}" x2="${lx + 22}" y1="${ly}" y2="${ly}" stroke="${item.color}" stroke-width="2.5"${item.dashed ? ` stroke-dasharray="6 4"` : ""}/>`,
    );
    out.push(`<text x="${lx + 28}" y="${ly}" font-size="12" dominant-baseline="middle" ${FONT}>${escapeXml(item.name)}</text>`);
  });
  (spec.caption ?? []).forEach((line, i) => {
    out.push(`<text x="8" y="${f.bottom + 62 + i * CAPTION_LINE}" font-size="10.5" fill="#555" ${FONT}>${escapeXml(line)}</text>`);
  });
  return out;
}

function svg(f: Frame, body: string[]): string {
  return [`<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${f.height}" viewBox="0 0 ${f.width} ${f.height}">`, ...body.map((l) => `  ${l}`), "</svg>", ""].join("\n");
}

/** A line chart with a marker at every point; numeric, linear x. */
export function lineChart(spec: LineChartSpec): string {
  const f = frame(spec, spec.series.map((s) => s.name));
  const scale = spec.yScale ?? "linear";
  const plotted = (v: number | null): v is number => v !== null && Number.isFinite(v) && (scale === "linear" || v > 0);
  const ys = spec.series.flatMap((s) => s.points.map(([, v]) => v).filter(plotted));
  const y = yAxis(ys, scale, spec.yFromZero ?? false, f.top + 6, f.bottom);
  const xs = spec.series.flatMap((s) => s.points.map(([x]) => x));
  const xTicks = spec.xTicks ?? [...new Set(xs)].sort((a, b) => a - b);
  const [x0, x1] = [Math.min(...xs, ...xTicks), Math.max(...xs, ...xTicks)];
  const pad = 16;
  const toX = (x: number) => f.left + pad + ((x - x0) / (x1 - x0 || 1)) * (f.right - f.left - 2 * pad);
  const colorOf = (s: LineSeries, i: number) => s.color ?? PALETTE[i % PALETTE.length];

  const body = decorations(spec, f, y, spec.series.map((s, i) => ({ name: s.name, color: colorOf(s, i), dashed: s.dashed })));
  for (const t of xTicks) {
    const px = toX(t).toFixed(1);
    body.push(`<line x1="${px}" x2="${px}" y1="${f.bottom}" y2="${f.bottom + 5}" stroke="#333"/>`);
    body.push(`<text x="${px}" y="${f.bottom + 18}" font-size="11" text-anchor="middle" ${FONT}>${escapeXml(spec.xTickLabel ? spec.xTickLabel(t) : formatNumber(t))}</text>`);
  }
  spec.series.forEach((s, i) => {
    const color = colorOf(s, i);
    // Consecutive plottable points form one polyline; a gap starts a new one.
    const runs: string[][] = [[]];
    for (const [x, v] of s.points) {
      if (plotted(v)) runs[runs.length - 1].push(`${toX(x).toFixed(1)},${y.toPx(v).toFixed(1)}`);
      else if (runs[runs.length - 1].length) runs.push([]);
    }
    const dash = s.dashed ? ` stroke-dasharray="6 4"` : "";
    body.push(`<g class="series" data-name="${escapeXml(s.name)}">`);
    for (const run of runs.filter((r) => r.length)) {
      body.push(`  <polyline points="${run.join(" ")}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
      for (const p of run) {
        const [cx, cy] = p.split(",");
        body.push(`  <circle cx="${cx}" cy="${cy}" r="3" fill="${color}"/>`);
      }
    }
    body.push(`</g>`);
  });
  return svg(f, body);
}

/** A grouped bar chart: one group per category, one bar per series. */
export function barChart(spec: BarChartSpec): string {
  const f = frame(spec, [...spec.series, ...(spec.references ?? [])].map((s) => s.name));
  const scale = spec.yScale ?? "linear";
  const references = spec.references ?? [];
  const values = [...spec.series.flatMap((s) => s.values.filter((v): v is number => v !== null)), ...references.map((r) => r.value)];
  const y = yAxis(values, scale, spec.yFromZero ?? true, f.top + 6, f.bottom);
  const colorOf = (s: BarSeries, i: number) => s.color ?? PALETTE[i % PALETTE.length];
  // Reference lines take the palette colours after the bars'.
  const refColor = (r: ReferenceLine, i: number) => r.color ?? PALETTE[(spec.series.length + i) % PALETTE.length];
  const legend = [
    ...spec.series.map((s, i) => ({ name: s.name, color: colorOf(s, i), bar: true })),
    ...references.map((r, i) => ({ name: r.name, color: refColor(r, i), dashed: true })),
  ];
  const body = decorations(spec, f, y, legend);
  const groupWidth = (f.right - f.left) / Math.max(1, spec.categories.length);
  const barWidth = (groupWidth * 0.8) / Math.max(1, spec.series.length);
  const baseline = scale === "log" ? f.bottom : Math.min(f.bottom, y.toPx(0));
  spec.categories.forEach((cat, c) => {
    const gx = f.left + c * groupWidth;
    body.push(`<text x="${(gx + groupWidth / 2).toFixed(1)}" y="${f.bottom + 18}" font-size="11" text-anchor="middle" ${FONT}>${escapeXml(cat)}</text>`);
  });
  spec.series.forEach((s, i) => {
    body.push(`<g class="series" data-name="${escapeXml(s.name)}">`);
    s.values.forEach((v, c) => {
      if (v === null || !Number.isFinite(v) || (scale === "log" && v <= 0)) return;
      const x = f.left + c * groupWidth + groupWidth * 0.1 + i * barWidth;
      const top = y.toPx(v);
      const [yTop, h] = top < baseline ? [top, baseline - top] : [baseline, top - baseline];
      body.push(`  <rect x="${x.toFixed(1)}" y="${yTop.toFixed(1)}" width="${(barWidth - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${colorOf(s, i)}"><title>${escapeXml(`${s.name}, ${spec.categories[c]}: ${formatNumber(v)}`)}</title></rect>`);
      if (spec.valueLabels ?? true) {
        body.push(`  <text x="${(x + barWidth / 2 - 1).toFixed(1)}" y="${(yTop - 4).toFixed(1)}" font-size="10" text-anchor="middle" ${FONT}>${formatNumber(v)}</text>`);
      }
    });
    body.push(`</g>`);
  });
  references.forEach((r, i) => {
    if (!Number.isFinite(r.value) || (scale === "log" && r.value <= 0)) return;
    const py = y.toPx(r.value).toFixed(1);
    body.push(`<g class="series" data-name="${escapeXml(r.name)}">`);
    body.push(`  <line x1="${f.left}" x2="${f.right}" y1="${py}" y2="${py}" stroke="${refColor(r, i)}" stroke-width="2" stroke-dasharray="6 4"/>`);
    body.push(`</g>`);
  });
  return svg(f, body);
}
