// The playground page: settings → a `generate` message on /v1/stream; tokens coloured by the
// chain count that produced them; `switch` and `cancel` while it streams; live TTFT/TPOT/tokens/s;
// chat mode keeps the conversation in the page. Uses only the public API.
import { ApiError, apiKey, errorObject, getJson, setApiKey } from "./api.js";
import { drawChart, paintChains, renderLegend } from "./chains-view.js";
import { startServerPanel } from "./server-panel.js";
import { StreamClient } from "./stream.js";
import { Conversation } from "./chat.js";
import { Generation, readSettings } from "./generation.js";

const $ = (id) => document.getElementById(id);

const conversation = new Conversation($("history"));

const page = {
  /** The elastic model's id and its sizes (from /v1/models). */
  model: null,
  sizes: [],
  /** The generation streaming now (null when idle) and the last one (its output stays shown). */
  current: null,
  nextId: 1,
  panelStarted: false,
};

const stream = new StreamClient(onServerMessage, (reason) => {
  if (page.current) failGeneration({ message: `The WebSocket closed during the generation (${reason}).`, type: "network_error", param: null, code: null });
});

// ---- errors and the key ----

function showError(error) {
  const box = $("error");
  const title = document.createElement("strong");
  title.textContent = `${error.type ?? "error"}${error.code ? ` (${error.code})` : ""}`;
  const msg = document.createElement("span");
  msg.className = "error-message";
  msg.textContent = error.message ?? String(error);
  const parts = [title, ": ", msg];
  if (error.param) {
    const param = document.createElement("code");
    param.className = "error-param";
    param.textContent = error.param;
    parts.push(" — field ", param);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "secondary close";
  close.textContent = "Dismiss";
  close.addEventListener("click", clearError);
  box.replaceChildren(...parts, " ", close);
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function askForKey(error) {
  $("key-panel").hidden = false;
  $("model-line").textContent = "Waiting for an API key…";
  if (apiKey()) showError(error);
  $("api-key").focus();
}

// ---- start-up: models, sizes, legend ----

async function loadModels() {
  let list;
  try {
    list = await getJson("/v1/models");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return askForKey(err.error);
    if (err instanceof ApiError && err.status === 503) {
      $("model-line").textContent = `Server: ${err.error.message} Retrying…`;
      setTimeout(loadModels, 1000);
      return;
    }
    showError(errorObject(err));
    $("model-line").textContent = "Could not list the models.";
    return;
  }
  $("key-panel").hidden = true;
  clearError();
  const elastic = list.data.find((m) => m.elastic) ?? list.data[0];
  page.model = elastic.id;
  page.sizes = list.data.filter((m) => !m.elastic).sort((a, b) => a.chains - b.chains);
  setUpSizes();
  $("model-line").textContent = `${elastic.id} · ${page.sizes.length} sizes in one weight set · max ${elastic.max_position} positions`;
  $("generate").disabled = false;
  if (!page.panelStarted) {
    page.panelStarted = true;
    startServerPanel((err) => {
      if (err instanceof ApiError && err.status === 401) askForKey(err.error);
    });
  }
}

function setUpSizes() {
  const select = $("size");
  const options = [new Option("elastic (router picks, budget below)", "elastic")];
  for (const s of page.sizes) options.push(new Option(`c${s.chains} — ${s.chains} chain${s.chains > 1 ? "s" : ""}`, String(s.chains)));
  select.replaceChildren(...options);
  select.value = String(page.sizes.length);
  select.disabled = false;
  renderLegend($("legend"), page.sizes);
  const bar = $("switch-bar");
  const label = document.createElement("span");
  label.textContent = "Switch to:";
  bar.replaceChildren(
    label,
    ...page.sizes.map((s) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "switch";
      b.dataset.chains = String(s.chains);
      b.textContent = `c${s.chains}`;
      b.disabled = true;
      b.setAttribute("aria-label", `Switch to ${s.chains} chains from the next token`);
      paintChains(b, s.chains, page.sizes.length);
      b.addEventListener("click", () => requestSwitch(s.chains));
      return b;
    }),
  );
  updateBudgetVisibility();
}

function updateBudgetVisibility() {
  const elastic = $("size").value === "elastic";
  $("budget").hidden = !elastic;
}

// ---- generating ----

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

async function generate() {
  if (page.current || !page.model) return;
  clearError();
  $("events").replaceChildren();
  const settings = readSettings(page.model);
  const id = `g${page.nextId++}`;
  const chat = mode() === "chat";
  const input = chat ? { messages: conversation.messages($("system").value.trim(), $("user-message").value) } : { prompt: $("prompt").value };
  const gen = new Generation(id, $("output"), page.sizes.length, {
    chat,
    userText: chat ? $("user-message").value : null,
    promptText: chat ? null : $("prompt").value,
  });
  page.current = gen;
  setRunning(true);
  renderStats(gen);
  try {
    await stream.open();
    gen.markSent();
    if (!stream.sendNow({ type: "generate", id, ...settings, ...input })) throw new Error("The WebSocket closed before the request was sent.");
  } catch (err) {
    failGeneration(errorObject(err));
  }
}

function requestSwitch(chains) {
  const gen = page.current;
  if (!gen) return;
  if (stream.sendNow({ type: "switch", id: gen.id, chains })) {
    gen.awaitingSwitch = chains;
    gen.switchRequestedAfter = gen.tokens.length;
    note(`Switch to c${chains} requested after ${gen.tokens.length} tokens…`);
  }
}

function cancel() {
  const gen = page.current;
  if (!gen || gen.cancelRequested) return;
  gen.cancelRequested = true;
  stream.sendNow({ type: "cancel", id: gen.id });
  note("Cancel requested…");
}

function setRunning(running) {
  $("generate").disabled = running || !page.model;
  $("cancel").disabled = !running;
  for (const b of document.querySelectorAll("#switch-bar button")) b.disabled = !running;
  $("output").setAttribute("aria-busy", String(running));
  document.body.classList.toggle("generating", running);
}

/** Add a line to this generation's event log (switches, cancel, the end). */
function note(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("events").append(li);
}

// ---- server messages ----

function onServerMessage(msg) {
  const gen = page.current;
  // A cancel or switch that crossed the generation's `done` on the wire: nothing left to act on.
  if (msg.type === "error" && msg.error?.code === "unknown_id" && msg.id !== gen?.id) return;
  if (msg.type === "error" && (msg.id === undefined || !gen || msg.id !== gen.id)) return showError(msg.error);
  if (!gen || msg.id !== gen.id) return;
  switch (msg.type) {
    case "token":
      gen.addToken(msg);
      scheduleRender(gen);
      return;
    case "switched":
      onSwitched(gen, msg);
      return;
    case "done":
      finishGeneration(gen, msg);
      return;
    case "error":
      // A refused switch (an error about `chains`) leaves the generation running; any other error ends it.
      if (gen.awaitingSwitch !== null && msg.error?.param === "chains") {
        gen.awaitingSwitch = null;
        showError(msg.error);
        return;
      }
      failGeneration(msg.error);
  }
}

function onSwitched(gen, msg) {
  gen.awaitingSwitch = null;
  if (msg.at_index === null) {
    note(`Switch to c${msg.chains} not applied: the generation ended first.`);
    return;
  }
  gen.markSwitch(msg.at_index, msg.chains);
  note(`Switched to c${msg.chains} at token ${msg.at_index} (requested after ${gen.switchRequestedAfter ?? "?"} tokens).`);
  scheduleRender(gen);
}

function finishGeneration(gen, msg) {
  gen.finish(msg);
  page.current = null;
  setRunning(false);
  renderNow(gen);
  const missed = msg.latency_budget_missed?.length ? ` · budget missed: ${msg.latency_budget_missed.join(", ")}` : "";
  note(`Done: ${msg.finish_reason} · ${msg.usage.prompt_tokens} prompt + ${msg.usage.completion_tokens} completion tokens · last size ${msg.model}${missed}`);
  if (gen.chat) {
    conversation.add(gen.userText, gen, page.sizes.length);
    $("user-message").value = "";
    gen.clearOutput();
  }
}

function failGeneration(error) {
  const gen = page.current;
  page.current = null;
  setRunning(false);
  if (gen) {
    gen.fail();
    renderNow(gen);
  }
  showError(error);
  note("The generation failed; see the error above.");
}

// ---- rendering ----

let frame = 0;
function scheduleRender(gen) {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    renderNow(gen);
  });
}

function renderNow(gen) {
  gen.flushTokens();
  renderStats(gen);
  drawChart($("chart"), gen.chains, gen.switchIndices(), page.sizes.length || 1);
}

function renderStats(gen) {
  const s = gen.stats();
  const fmt = (v, unit, digits = 1) => (v === null ? "–" : `${v.toFixed(digits)} ${unit}`);
  $("stat-ttft").textContent = fmt(s.ttftMs, "ms");
  $("stat-tpot").textContent = fmt(s.tpotMs, "ms", 2);
  $("stat-tps").textContent = fmt(s.tokensPerSecond, "tok/s");
  $("stat-tokens").textContent = String(gen.tokens.length);
  $("stat-size").textContent = gen.chains.length ? `c${gen.chains[gen.chains.length - 1]}` : "–";
  $("stat-finish").textContent = gen.finishReason ?? (gen.failed ? "error" : "streaming…");
}

// ---- wiring ----

function switchMode() {
  const chat = mode() === "chat";
  $("prompt-mode").hidden = chat;
  $("chat-mode").hidden = !chat;
  (chat ? $("user-message") : $("prompt")).focus();
}

function wire() {
  $("gen-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    void generate();
  });
  $("cancel").addEventListener("click", cancel);
  $("size").addEventListener("change", updateBudgetVisibility);
  for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener("change", switchMode);
  $("clear-chat").addEventListener("click", () => conversation.clear());
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    setApiKey($("api-key").value.trim());
    $("api-key").value = "";
    stream.close();
    void loadModels();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      void generate();
    } else if (ev.key === "Escape" && page.current) {
      ev.preventDefault();
      cancel();
    }
  });
}

wire();
void loadModels();
