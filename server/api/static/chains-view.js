// How chain counts look: one colour per size (a colour-blind-safe sequential ramp, small = dark
// violet, large = yellow), the legend, and the SVG chart of chain count over the tokens.

const RAMP = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"];
const SVG_NS = "http://www.w3.org/2000/svg";

/** The colour of chain count k (1 … n): evenly spread over the ramp. */
export function chainColor(k, n) {
  if (n <= 1) return RAMP[RAMP.length - 1];
  const t = (Math.min(Math.max(k, 1), n) - 1) / (n - 1);
  return RAMP[Math.round(t * (RAMP.length - 1))];
}

/** Black or white, whichever reads better on `hex`. */
function inkOn(hex) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 ? "#000" : "#fff";
}

/** Colour an element (a token, a swatch, a button) as chain count k: CSS reads `--chain` and `--chain-ink`. */
export function paintChains(el, k, n) {
  const color = chainColor(k, n);
  el.style.setProperty("--chain", color);
  el.style.setProperty("--chain-ink", inkOn(color));
  el.dataset.chains = String(k);
}

/** A size's label: its colour swatch and `c<k>`. */
export function chainLabel(chains, n) {
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  paintChains(swatch, chains, n);
  return [swatch, `c${chains}`];
}

/** @param {Array<{chains:number, params?:number}>} sizes */
export function renderLegend(el, sizes) {
  const n = sizes.length;
  el.replaceChildren(
    ...sizes.map((s) => {
      const item = document.createElement("span");
      item.className = "legend-item";
      item.append(...chainLabel(s.chains, n));
      if (s.params) {
        const small = document.createElement("small");
        small.textContent = ` ${formatCount(s.params)} params`;
        item.append(small);
      }
      return item;
    }),
  );
}

export function formatCount(x) {
  if (x >= 1e9) return `${(x / 1e9).toFixed(1)}B`;
  if (x >= 1e6) return `${(x / 1e6).toFixed(1)}M`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)}k`;
  return String(x);
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/**
 * Draw chain count (y, 1 … n) per token index (x) as a step line, one segment per run of equal
 * counts in that count's colour; acknowledged switches as dashed vertical lines.
 * @param {number[]} chains chain count of token i
 * @param {number[]} switches token indices where an acknowledged switch took effect
 */
export function drawChart(el, chains, switches, n) {
  // Drawn at the element's own width, so labels keep their shape on a phone and a wide screen alike.
  const W = Math.max(Math.round(el.clientWidth), 200);
  const H = 120;
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const pad = { l: 28, r: 6, t: 8, b: 16 };
  const total = Math.max(chains.length, 1);
  const x = (i) => pad.l + (i / total) * (W - pad.l - pad.r);
  const y = (k) => (n <= 1 ? H / 2 : pad.t + ((n - k) / (n - 1)) * (H - pad.t - pad.b));
  const parts = [];
  for (let k = 1; k <= n; k++) {
    parts.push(svg("line", { x1: pad.l, x2: W - pad.r, y1: y(k), y2: y(k), class: "grid" }));
    const label = svg("text", { x: pad.l - 6, y: y(k) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = `c${k}`;
    parts.push(label);
  }
  let start = 0;
  for (let i = 1; i <= chains.length; i++) {
    if (i < chains.length && chains[i] === chains[start]) continue;
    parts.push(svg("line", { x1: x(start), x2: x(i), y1: y(chains[start]), y2: y(chains[start]), class: "run", stroke: chainColor(chains[start], n) }));
    if (i < chains.length) parts.push(svg("line", { x1: x(i), x2: x(i), y1: y(chains[start]), y2: y(chains[i]), class: "riser" }));
    start = i;
  }
  for (const at of switches) parts.push(svg("line", { x1: x(at), x2: x(at), y1: pad.t - 4, y2: H - pad.b + 4, class: "switch-line" }));
  const count = svg("text", { x: W - pad.r, y: H - 3, class: "axis", "text-anchor": "end" });
  count.textContent = `${chains.length} tokens`;
  parts.push(count);
  el.replaceChildren(...parts);
}
