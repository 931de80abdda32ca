// WebSocket /v1/stream with a real `ws` client against the real engine.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import request from "supertest";
import { WebSocket } from "ws";
import type { Engine } from "../server/engine/types.ts";
import { waitForBuffer } from "../server/api/ws.ts";
import { serveTestModel, WsClient, startApp, waitFor, type RunningApp } from "./helpers/server-fixture.ts";

let engine: Engine;
let running: RunningApp;
serveTestModel(3, {}, (s) => ({ engine, running } = s));

const tokensOf = (c: WsClient, id: string) => c.received.filter((m) => m.type === "token" && m.id === id);

describe("WebSocket /v1/stream", () => {
  test("two interleaved generations on one socket, each equal to its HTTP twin", async () => {
    const client = await WsClient.open(running.wsUrl);
    client.send({ type: "generate", id: "a", model: "tiny:c4", prompt: "In the beginning", max_tokens: 40, temperature: 0 });
    client.send({ type: "generate", id: "b", model: "tiny:c2", prompt: "And the earth", max_tokens: 40, temperature: 0 });
    const doneA = await client.waitFor((m) => m.type === "done" && m.id === "a");
    const doneB = await client.waitFor((m) => m.type === "done" && m.id === "b");
    for (const [id, done, chains] of [["a", doneA, 4], ["b", doneB, 2]] as const) {
      const toks = tokensOf(client, id);
      assert.deepEqual(toks.map((t) => t.index), Array.from({ length: 40 }, (_, i) => i));
      assert.ok(toks.every((t) => t.chains === chains && typeof t.token_id === "number" && typeof t.text === "string"));
      assert.equal(done.finish_reason, "length");
      assert.equal(done.model, `tiny:c${chains}`);
      assert.equal(done.chains, chains);
      assert.equal(done.usage.completion_tokens, 40);
      assert.equal(done.chains_per_token, undefined);
    }
    // interleaved: b's first token came before a's last
    const order = client.received.filter((m) => m.type === "token").map((m) => m.id);
    assert.ok(order.indexOf("b") < order.lastIndexOf("a"), "tokens of the two generations interleave");
    for (const [id, model, prompt] of [["a", "tiny:c4", "In the beginning"], ["b", "tiny:c2", "And the earth"]]) {
      const http = await request(running.colm.app).post("/v1/completions").send({ model, prompt, max_tokens: 40, temperature: 0 });
      const done = id === "a" ? doneA : doneB;
      assert.equal(tokensOf(client, id).map((t) => t.text).join("") + (done.tail_text ?? ""), http.body.choices[0].text);
    }
    await client.close();
  });

  test("mid-stream switch: tokens from at_index on report the new chain count", async () => {
    const client = await WsClient.open(running.wsUrl);
    client.send({ type: "generate", id: 1, model: "tiny", prompt: "Switch", max_tokens: 240, temperature: 0 });
    await client.waitFor((m) => m.type === "token" && m.id === 1 && m.index >= 2);
    client.send({ type: "switch", id: 1, chains: 1 });
    const sw = await client.waitFor((m) => m.type === "switched");
    assert.equal(sw.id, 1);
    assert.equal(sw.chains, 1);
    assert.equal(typeof sw.at_index, "number", "the switch took effect before the end");
    assert.ok(sw.at_index >= 3);
    const from = client.received.indexOf(sw);
    client.send({ type: "switch", id: 1, chains: 3 });
    const sw2 = await client.waitFor((m) => m.type === "switched" && m.chains === 3, 10_000, from + 1);
    const done = await client.waitFor((m) => m.type === "done" && m.id === 1);
    const toks = tokensOf(client, 1 as unknown as string);
    const expected = (i: number) => (i < sw.at_index ? 4 : sw2.at_index === null || i < sw2.at_index ? 1 : 3);
    for (const t of toks) assert.equal(t.chains, expected(t.index), `token ${t.index}`);
    // the switched message precedes the first token at the new count
    const firstNew = client.received.findIndex((m) => m.type === "token" && m.index === sw.at_index);
    assert.ok(from < firstNew);
    assert.equal(done.chains, toks[toks.length - 1].chains);
    assert.deepEqual(done.chains_per_token, toks.map((t) => t.chains));
    assert.equal(done.model, `tiny:c${done.chains}`, "done names the size its last token ran at");
    await client.close();
  });

  test("switch to the count already in use is answered at once; before the first token it applies from index 0", async () => {
    const client = await WsClient.open(running.wsUrl);
    client.send({ type: "generate", id: "same", model: "tiny:c2", prompt: "Same", max_tokens: 200 });
    client.send({ type: "switch", id: "same", chains: 3 });
    const early = await client.waitFor((m) => m.type === "switched" && m.id === "same");
    assert.equal(early.chains, 3);
    await client.waitFor((m) => m.type === "token" && m.id === "same" && m.index >= 2);
    client.send({ type: "switch", id: "same", chains: 3 });
    const from = client.received.length;
    const again = await client.waitFor((m) => m.type === "switched" && m.id === "same", 5000, from);
    assert.equal(again.chains, 3);
    assert.ok(again.at_index >= 3);
    client.send({ type: "cancel", id: "same" });
    const done = await client.waitFor((m) => m.type === "done" && m.id === "same");
    const toks = tokensOf(client, "same");
    for (const t of toks) assert.equal(t.chains, t.index < early.at_index ? 2 : 3);
    assert.equal(done.chains, 3);
    await client.close();
  });

  test("cancel stops a generation (finish_reason cancelled) and frees its KV", async () => {
    const client = await WsClient.open(running.wsUrl);
    client.send({ type: "generate", id: "c", model: "tiny", prompt: "Cancel me", max_tokens: 240 });
    await client.waitFor((m) => m.type === "token" && m.id === "c" && m.index >= 1);
    client.send({ type: "cancel", id: "c" });
    const done = await client.waitFor((m) => m.type === "done" && m.id === "c");
    assert.equal(done.finish_reason, "cancelled");
    assert.ok(done.usage.completion_tokens < 240);
    assert.equal(engine.kvBytesInUse(), 0);
    assert.equal(running.colm.admission.running, 0);
    // the id is free again
    client.send({ type: "generate", id: "c", model: "tiny", prompt: "again", max_tokens: 2 });
    const again = await client.waitFor((m) => m.type === "done" && m.id === "c" && m.finish_reason === "length");
    assert.equal(again.usage.completion_tokens, 2);
    await client.close();
  });

  test("duplicate id while running → error; chat messages, logprobs and ping work", async () => {
    const client = await WsClient.open(running.wsUrl);
    client.send({ type: "generate", id: "d", model: "tiny", prompt: "dup", max_tokens: 200 });
    client.send({ type: "generate", id: "d", model: "tiny", prompt: "dup", max_tokens: 2 });
    const err = await client.waitFor((m) => m.type === "error" && m.id === "d");
    assert.equal(err.error.code, "duplicate_id");
    client.send({ type: "cancel", id: "d" });
    await client.waitFor((m) => m.type === "done" && m.id === "d");
    client.send({ type: "generate", id: "chat", model: "tiny:c1", messages: [{ role: "user", content: "hi" }], max_tokens: 3, temperature: 0, logprobs: 2 });
    const done = await client.waitFor((m) => m.type === "done" && m.id === "chat");
    assert.equal(done.model, "tiny:c1");
    const toks = tokensOf(client, "chat");
    assert.ok(toks.length <= 3);
    for (const t of toks) {
      assert.ok(t.logprob <= 0);
      assert.equal(t.top_logprobs.length, 2);
    }
    client.send({ type: "ping" });
    await client.waitFor((m) => m.type === "pong");
    await client.close();
  });

  test("closing the socket aborts its generations at once and frees the KV", async () => {
    const client = await WsClient.open(running.wsUrl);
    client.send({ type: "generate", id: "x", model: "tiny", prompt: "close", max_tokens: 240 });
    client.send({ type: "generate", id: "y", model: "tiny", prompt: "close", max_tokens: 240 });
    await client.waitFor((m) => m.type === "token" && m.id === "y");
    client.ws.terminate();
    await waitFor(() => engine.kvBytesInUse() === 0 && running.colm.admission.running === 0, 5000, "KV freed");
  });

  test("queue full → error queue_full with retry_after", async () => {
    const small = await startApp(engine, { maxRunning: 1, maxWaiting: 0 });
    const client = await WsClient.open(small.wsUrl);
    client.send({ type: "generate", id: 1, model: "tiny", prompt: "one", max_tokens: 200 });
    client.send({ type: "generate", id: 2, model: "tiny", prompt: "two", max_tokens: 2 });
    const err = await client.waitFor((m) => m.type === "error" && m.id === 2);
    assert.equal(err.error.code, "queue_full");
    assert.equal(err.error.type, "rate_limit_error");
    assert.equal(err.retry_after, 1);
    client.send({ type: "cancel", id: 1 });
    await client.waitFor((m) => m.type === "done" && m.id === 1);
    await client.close();
    await small.close();
  });

  test("API key: upgrade needs the key (header or api_key query)", async () => {
    const keyed = await startApp(engine, { apiKey: "k3y" });
    await assert.rejects(WsClient.open(keyed.wsUrl), /401/);
    await assert.rejects(WsClient.open(keyed.wsUrl, { Authorization: "Bearer nope" }), /401/);
    const a = await WsClient.open(keyed.wsUrl, { Authorization: "Bearer k3y" });
    const b = await WsClient.open(`${keyed.wsUrl}?api_key=k3y`);
    await a.close();
    await b.close();
    await keyed.close();
  });

  test("keepalive: the server pings; a client that never pongs is dropped", async () => {
    const fast = await startApp(engine, { ws: { pingIntervalMs: 40 } });
    const good = await WsClient.open(fast.wsUrl);
    let pings = 0;
    good.ws.on("ping", () => pings++);
    const silent = new WebSocket(fast.wsUrl, { autoPong: false });
    await new Promise((r) => silent.once("open", r));
    const silentClosed = new Promise<number>((r) => silent.once("close", (code) => r(code)));
    await waitFor(() => pings >= 3, 3000, "pings");
    assert.equal(await silentClosed, 1006);
    assert.equal(good.closed, null);
    await good.close();
    await fast.close();
  });

  test("drain: upgrades are refused and running generations end cancelled", async () => {
    const d = await startApp(engine);
    const client = await WsClient.open(d.wsUrl);
    client.send({ type: "generate", id: "z", model: "tiny", prompt: "drain", max_tokens: 240 });
    await client.waitFor((m) => m.type === "token" && m.id === "z");
    const drained = d.colm.drain(0);
    await assert.rejects(WsClient.open(d.wsUrl), /503/);
    const done = await client.waitFor((m) => m.type === "done" && m.id === "z");
    assert.equal(done.finish_reason, "cancelled");
    await drained;
    client.send({ type: "generate", id: "late", model: "tiny", prompt: "x", max_tokens: 1 });
    const err = await client.waitFor((m) => m.type === "error" && m.id === "late");
    assert.equal(err.error.code, "server_draining");
    await d.close();
    await waitFor(() => client.closed !== null, 3000, "close");
    assert.equal(client.closed!.code, 1001);
  });

  test("backpressure: waitForBuffer waits for the buffer to drain, gives up after the stall timeout", async () => {
    const sock = { bufferedAmount: 5000, readyState: WebSocket.OPEN };
    setTimeout(() => (sock.bufferedAmount = 100), 30);
    assert.equal(await waitForBuffer(sock, 1000, 2000), true);
    sock.bufferedAmount = 5000;
    const t0 = Date.now();
    assert.equal(await waitForBuffer(sock, 1000, 50), false);
    assert.ok(Date.now() - t0 >= 45);
    assert.equal(await waitForBuffer({ bufferedAmount: 5000, readyState: WebSocket.CLOSED }, 1000, 1000), false);
  });
});
