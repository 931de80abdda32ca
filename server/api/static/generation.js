// One generation as the page shows it: its tokens (each a span coloured by its chain count), the
// acknowledged switches, and the timings behind TTFT, TPOT and tokens/s. Also reads the settings
// form into the fields of a `generate` message.
import { paintChains } from "./chains-view.js";

const $ = (id) => document.getElementById(id);

/** A number input's value, or undefined when empty (the server then uses its default). Out-of-range
 * values are sent as typed: the server validates them and the page shows its error. */
function numberField(id) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const v = Number(raw);
  return Number.isFinite(v) ? v : raw;
}

function compact(obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined));
}

/** The `generate` fields from the form: model (elastic or a fixed size), sampling, stop, budget. */
export function readSettings(model) {
  const size = $("size").value;
  const elastic = size === "elastic";
  const stop = $("stop").value.split("\n").filter((s) => s !== "");
  const budget = elastic ? compact({ ttft_ms: numberField("budget-ttft"), tpot_ms: numberField("budget-tpot"), total_ms: numberField("budget-total") }) : {};
  return compact({
    model: elastic ? model : `${model}:c${size}`,
    temperature: numberField("temperature"),
    top_p: numberField("top-p"),
    max_tokens: numberField("max-tokens"),
    seed: numberField("seed"),
    stop: stop.length ? stop : undefined,
    latency_budget: Object.keys(budget).length ? budget : undefined,
  });
}

export class Generation {
  /** @param {{chat: boolean, userText: string|null, promptText: string|null}} what prompt mode shows
   *  its prompt (muted) before the tokens; chat mode shows the conversation elsewhere */
  constructor(id, outputEl, nChains, { chat, userText, promptText }) {
    this.id = id;
    this.outputEl = outputEl;
    this.n = nChains;
    this.chat = chat;
    this.userText = userText;
    /** @type {{index:number, text:string, chains:number, tokenId:number}[]} */
    this.tokens = [];
    this.chains = [];
    this.text = "";
    /** token index → chain count, for each acknowledged switch */
    this.switches = new Map();
    this.spans = [];
    this.unrendered = 0;
    this.sentAt = null;
    this.firstAt = null;
    this.lastAt = null;
    this.finishReason = null;
    this.tail = "";
    this.failed = false;
    /** The chain count of a `switch` sent and not yet acknowledged (or refused). */
    this.awaitingSwitch = null;
    this.cancelRequested = false;
    outputEl.replaceChildren();
    if (promptText) {
      const echo = document.createElement("span");
      echo.className = "prompt-echo";
      echo.textContent = promptText;
      outputEl.append(echo);
    }
    outputEl.dataset.generation = id;
    delete outputEl.dataset.finish;
  }

  markSent() {
    this.sentAt = performance.now();
  }

  addToken(msg) {
    const now = performance.now();
    this.firstAt ??= now;
    this.lastAt = now;
    this.tokens.push({ index: msg.index, text: msg.text, chains: msg.chains, tokenId: msg.token_id });
    this.chains.push(msg.chains);
    this.text += msg.text;
  }

  markSwitch(atIndex, chains) {
    this.switches.set(atIndex, chains);
    this.spans[atIndex]?.classList.add("switch-mark");
  }

  switchIndices() {
    return [...this.switches.keys()];
  }

  /** Append spans for the tokens that arrived since the last frame. */
  flushTokens() {
    const frag = document.createDocumentFragment();
    for (let i = this.spans.length; i < this.tokens.length; i++) {
      const t = this.tokens[i];
      const span = document.createElement("span");
      span.className = t.text === "" ? "tok empty" : "tok";
      span.textContent = t.text;
      span.dataset.index = String(t.index);
      span.title = `token ${t.index} · c${t.chains} · id ${t.tokenId}`;
      paintChains(span, t.chains, this.n);
      if (this.switches.has(t.index)) span.classList.add("switch-mark");
      this.spans.push(span);
      frag.append(span);
    }
    const follow = this.outputEl.scrollTop + this.outputEl.clientHeight >= this.outputEl.scrollHeight - 4;
    this.outputEl.append(frag);
    if (follow) this.outputEl.scrollTop = this.outputEl.scrollHeight;
  }

  finish(msg) {
    this.finishReason = msg.finish_reason;
    this.tail = msg.tail_text ?? "";
    if (msg.tail_text) {
      const tail = document.createElement("span");
      tail.className = "tail";
      tail.title = "text held back until the end (a possible stop-string prefix or a partial character)";
      tail.textContent = msg.tail_text;
      this.flushTokens();
      this.outputEl.append(tail);
      this.text += msg.tail_text;
    }
    this.outputEl.dataset.finish = msg.finish_reason;
  }

  fail() {
    this.failed = true;
    this.outputEl.dataset.finish = "error";
  }

  clearOutput() {
    this.outputEl.replaceChildren();
  }

  stats() {
    const n = this.tokens.length;
    const ttftMs = this.firstAt !== null && this.sentAt !== null ? this.firstAt - this.sentAt : null;
    const tpotMs = n > 1 ? (this.lastAt - this.firstAt) / (n - 1) : null;
    const tokensPerSecond = n > 0 && this.sentAt !== null && this.lastAt > this.sentAt ? (1000 * n) / (this.lastAt - this.sentAt) : null;
    return { ttftMs, tpotMs, tokensPerSecond };
  }
}
