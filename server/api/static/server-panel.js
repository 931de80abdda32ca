// The server panel: what the latency router predicts per size and the load it sees (/v1/router),
// running/waiting requests, KV cache use and tokens served per size (/metrics), refreshed live.
import { errorObject, getJson, getText, parseMetrics } from "./api.js";
import { chainLabel } from "./chains-view.js";

const REFRESH_MS = 1000;
const $ = (id) => document.getElementById(id);

function ms(v) {
  return v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1);
}

function bytes(v) {
  if (v >= 1 << 30) return `${(v / (1 << 30)).toFixed(2)} GiB`;
  if (v >= 1 << 20) return `${(v / (1 << 20)).toFixed(1)} MiB`;
  if (v >= 1 << 10) return `${(v / (1 << 10)).toFixed(1)} KiB`;
  return `${v} B`;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function renderRouter(router, metrics) {
  $("srv-batch").textContent = String(router.load.batch);
  $("srv-calibrated").textContent = router.calibrated ? "yes" : "learning";
  $("srv-prefill").textContent = ms(router.prefill_ms_per_token);
  const n = router.chains.length;
  $("router-rows").replaceChildren(
    ...router.chains.map((c) => {
      const tr = document.createElement("tr");
      const size = document.createElement("th");
      size.scope = "row";
      size.append(...chainLabel(c.chains, n));
      const served = metrics.get(`colm_generation_tokens_total{chains="${c.chains}"}`) ?? 0;
      tr.append(size, cell(ms(c.tpot_ms)), cell(ms(c.tpot_ms_b1)), cell(String(served)));
      return tr;
    }),
  );
}

function renderMetrics(metrics) {
  $("srv-running").textContent = String(metrics.get("colm_requests_running") ?? "–");
  $("srv-waiting").textContent = String(metrics.get("colm_requests_waiting") ?? "–");
  const used = metrics.get("colm_kv_cache_bytes_in_use") ?? 0;
  const cap = metrics.get("colm_kv_cache_bytes_capacity") ?? 0;
  const meter = $("srv-kv");
  meter.max = Math.max(cap, 1);
  meter.value = used;
  $("srv-kv-text").textContent = cap > 0 ? `${bytes(used)} of ${bytes(cap)} (${((100 * used) / cap).toFixed(1)}%)` : bytes(used);
}

/** Refresh now and every second while the page is visible; `onError` gets a failed refresh's error object. */
export function startServerPanel(onError) {
  let timer = null;
  let inFlight = false;
  const refresh = async () => {
    timer = null;
    inFlight = true;
    try {
      const [router, text] = await Promise.all([getJson("/v1/router"), getText("/metrics")]);
      const metrics = parseMetrics(text);
      renderMetrics(metrics);
      renderRouter(router, metrics);
      $("srv-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      $("srv-updated").textContent = `refresh failed: ${errorObject(err).message}`;
      onError(err);
    }
    inFlight = false;
    if (!document.hidden) timer = setTimeout(refresh, REFRESH_MS);
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !inFlight) void refresh();
  });
  void refresh();
}
