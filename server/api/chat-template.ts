// The chat template: messages → one plain-text prompt (documented in the README).
//   each message becomes   "<Role>: <content>\n\n"
//   with Role = System (system, developer), User, Assistant, Tool; content parts are joined;
//   the prompt ends with   "Assistant: "
//   and the generation stops (not emitted) at "\nUser:" or "\nSystem:" besides the request's stops.
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

export function renderChat(messages: readonly ChatMessage[]): string {
  let out = "";
  for (const m of messages) out += `${ROLE_NAMES[m.role]}: ${messageText(m)}\n\n`;
  return out + "Assistant: ";
}
