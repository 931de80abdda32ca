// The chat template: messages → one plain-text prompt (documented in the README).
//   each message becomes   "<Role>: <content>\n\n"
//   with Role = System (system, developer), User, Assistant, Tool; content parts are joined;
//   the prompt ends with   "Assistant: " (byte-level tokenizer) or "Assistant:" (see assistantCue)
//   and the generation stops (not emitted) at "\nUser:" or "\nSystem:" besides the request's stops.
import type { Tokenizer } from "../engine/types.ts";
import type { ChatMessage } from "./schemas.ts";

const ROLE_NAMES: Record<ChatMessage["role"], string> = {
  system: "System",
  developer: "System",
  user: "User",
  assistant: "Assistant",
  tool: "Tool",
};

/** Stop strings the template adds, so the model does not write the next turn. */
export const CHAT_TEMPLATE_STOPS: readonly string[] = ["\nUser:", "\nSystem:"];

export function messageText(m: ChatMessage): string {
  if (m.content === null || m.content === undefined) return "";
  if (typeof m.content === "string") return m.content;
  return m.content.map((p) => p.text).join("");
}

/** The text the prompt ends with, after which the model writes the reply. */
export const ASSISTANT_CUE = "Assistant: ";

const cues = new WeakMap<Tokenizer, string>();

/**
 * The cue for this tokenizer. "Assistant: " when the space after the colon stays a token boundary
 * (the byte-level tokenizer: the reply's first word starts a new token either way). A subword
 * tokenizer whose words carry their leading space (GPT-2 byte-level BPE: " The"; SentencePiece:
 * "▁The") would otherwise see the prompt end in a lone space token, which in its training text
 * almost never comes before a word, and reply after it with a second space; for it the cue is
 * "Assistant:" and the reply's first token brings its own space (so the reply text starts with one,
 * as vLLM returns such a model's text).
 */
export function assistantCue(tokenizer: Tokenizer): string {
  let cue = cues.get(tokenizer);
  if (cue === undefined) {
    const bare = tokenizer.encode(ASSISTANT_CUE);
    const withWord = tokenizer.encode(`${ASSISTANT_CUE}The`);
    const boundary = bare.length <= withWord.length && bare.every((id, i) => withWord[i] === id);
    cue = boundary ? ASSISTANT_CUE : ASSISTANT_CUE.trimEnd();
    cues.set(tokenizer, cue);
  }
  return cue;
}

export function renderChat(messages: readonly ChatMessage[], cue: string = ASSISTANT_CUE): string {
  let out = "";
  for (const m of messages) out += `${ROLE_NAMES[m.role]}: ${messageText(m)}\n\n`;
  return out + cue;
}
