// One WebSocket to /v1/stream, opened when first needed and again after it closes. Browsers
// cannot set headers on a WebSocket, so the key travels as `?api_key=` (the server accepts it
// there as well as in `Authorization`).
import { apiKey } from "./api.js";

export class StreamClient {
  /** @param {(msg: object) => void} onMessage every parsed server message
   *  @param {(reason: string) => void} onClose the socket closed (with what it said, if anything) */
  constructor(onMessage, onClose) {
    this.onMessage = onMessage;
    this.onClose = onClose;
    this.socket = null;
    this.opening = null;
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const key = apiKey();
    return `${scheme}//${location.host}/v1/stream${key ? `?api_key=${encodeURIComponent(key)}` : ""}`;
  }

  /** Resolves with an open socket (opening one if needed); rejects if it cannot open. */
  open() {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) return Promise.resolve(this.socket);
    if (this.opening) return this.opening;
    this.opening = new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url());
      let opened = false;
      ws.addEventListener("open", () => {
        opened = true;
        this.socket = ws;
        this.opening = null;
        resolve(ws);
      });
      ws.addEventListener("message", (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        this.onMessage(msg);
      });
      ws.addEventListener("close", (ev) => {
        if (this.socket === ws) this.socket = null;
        if (!opened) {
          this.opening = null;
          // The browser hides the refusal's status and body (401, 503): say what it likely was.
          reject(new Error("Could not open the WebSocket /v1/stream (server down, loading, or the API key was refused)."));
          return;
        }
        this.onClose(ev.reason || `code ${ev.code}`);
      });
    });
    return this.opening;
  }

  /** Send only if a socket is open now (switch and cancel make sense only on the socket generating). */
  sendNow(msg) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(msg));
    return true;
  }

  close() {
    this.socket?.close();
  }
}
