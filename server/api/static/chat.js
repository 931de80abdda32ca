// Chat mode's conversation, kept in the page: the finished turns, the `messages` array sent with
// the next user message, and the rendered history (the model's turns keep their chain colours).
import { paintChains } from "./chains-view.js";

export class Conversation {
  constructor(listEl) {
    this.listEl = listEl;
    /** @type {{role: string, content: string, tokens?: {text: string, chains: number}[], tail?: string}[]} */
    this.turns = [];
  }

  /** The messages for the next request: the optional system message, the turns, the new user message. */
  messages(system, userText) {
    const msgs = system ? [{ role: "system", content: system }] : [];
    for (const turn of this.turns) msgs.push({ role: turn.role, content: turn.content });
    msgs.push({ role: "user", content: userText });
    return msgs;
  }

  /** Record a finished exchange (also a cancelled one: what was generated stays, as a reply). */
  add(userText, generation, nChains) {
    this.turns.push({ role: "user", content: userText });
    this.turns.push({ role: "assistant", content: generation.text, tokens: generation.tokens, tail: generation.tail });
    this.render(nChains);
  }

  clear() {
    this.turns = [];
    this.render(0);
  }

  render(nChains) {
    this.listEl.replaceChildren(...this.turns.map((turn) => turnItem(turn, nChains)));
    this.listEl.lastElementChild?.scrollIntoView({ block: "nearest" });
  }
}

function turnItem(turn, nChains) {
  const li = document.createElement("li");
  li.className = `turn ${turn.role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = turn.role === "user" ? "You" : "Model";
  const body = document.createElement("span");
  body.className = "body";
  if (turn.tokens) {
    for (const t of turn.tokens) {
      const span = document.createElement("span");
      span.className = "tok";
      span.textContent = t.text;
      paintChains(span, t.chains, nChains);
      body.append(span);
    }
    if (turn.tail) body.append(turn.tail);
  } else body.textContent = turn.content;
  li.append(who, body);
  return li;
}
