// Server-sent events in OpenAI's streaming format: `data: {json}\n\n` … `data: [DONE]\n\n`.
import type { Response } from "express";

export class SseWriter {
  private opened = false;
  private ended = false;

  constructor(
    private readonly res: Response,
    /** Aborted when the client goes away: pending writes stop waiting. */
    private readonly signal: AbortSignal,
  ) {}

  open(): void {
    if (this.opened) return;
    this.opened = true;
    this.res.status(200);
    this.res.set({
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-cache, no-transform",
      Connection: "keep-alive",
      "X-Accel-Buffering": "no",
    });
    this.res.flushHeaders();
  }

  /** Write one event; waits for the socket to drain when its buffer is full (backpressure). */
  async send(data: unknown): Promise<void> {
    await this.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  async done(): Promise<void> {
    await this.write("data: [DONE]\n\n");
    this.end();
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (!this.res.writableEnded) this.res.end();
  }

  private async write(chunk: string): Promise<void> {
    if (!this.opened) this.open();
    if (this.ended || this.signal.aborted || this.res.writableEnded || this.res.destroyed) return;
    if (this.res.write(chunk)) return;
    await new Promise<void>((resolve) => {
      const finish = () => {
        this.res.off("drain", finish);
        this.res.off("close", finish);
        this.signal.removeEventListener("abort", finish);
        resolve();
      };
      this.res.on("drain", finish);
      this.res.on("close", finish);
      this.signal.addEventListener("abort", finish, { once: true });
    });
  }
}
