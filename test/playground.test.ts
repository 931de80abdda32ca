// The browser playground at `/`: its files over HTTP (always), and the page itself driven in real
// Chromium (Debian's package through playwright-core) against a real server on a real engine:
// fixed-size streaming, a switch mid-stream, cancel, a server error shown, chat mode, the API key,
// a phone-width layout. Without Chromium the browser part says why and is skipped.
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { Browser, Page, WebSocket as PageSocket } from "playwright-core";
import { chromiumMissing, launchChromium } from "../loadtest/browser.ts";
import { loadTestEngine, scrape, metricValue, serveTestModel, startApp, writeTestCheckpoint, WsClient, type RunningApp, type TestCheckpoint } from "./helpers/server-fixture.ts";
import { createApp, listeningUrl } from "../server/api/app.ts";
import type { Engine } from "../server/engine/types.ts";

const STATIC_DIR = join(import.meta.dirname, "..", "server", "api", "static");

describe("playground files over HTTP", () => {
  const served = serveTestModel(31);

  test("GET / serves the page with a CSP that allows only its own files and connections back", async () => {
    const res = await fetch(`${served.running.url}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
    const csp = res.headers.get("content-security-policy") ?? "";
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'/);
    assert.match(csp, /connect-src 'self'/);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff");
    const html = await res.text();
    assert.match(html, /<script type="module" src="\/playground\/playground.js"><\/script>/);
  });

  test("every file the page and its modules import is served, as JavaScript or CSS", async () => {
    const files = readdirSync(STATIC_DIR).filter((f) => f !== "index.html");
    for (const f of files.filter((f) => f.endsWith(".js"))) {
      for (const m of readFileSync(join(STATIC_DIR, f), "utf8").matchAll(/from "\.\/([^"]+)"/g)) assert.ok(files.includes(m[1]), `${f} imports missing ${m[1]}`);
    }
    for (const f of files) {
      const res = await fetch(`${served.running.url}/playground/${f}`);
      assert.equal(res.status, 200, f);
      assert.match(res.headers.get("content-type") ?? "", f.endsWith(".js") ? /^text\/javascript/ : /^text\/css/, f);
    }
  });

  test("unknown paths stay 404 and other methods on / are 405; metrics label the page's routes", async () => {
    const url = served.running.url;
    for (const path of ["/nope", "/playground/missing.js", "/playground/", "/index.html"]) {
      const res = await fetch(url + path);
      assert.equal(res.status, 404, path);
      assert.equal(((await res.json()) as { error: { code: string } }).error.code, "not_found", path);
    }
    const post = await fetch(`${url}/`, { method: "POST", body: "{}" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET");
    const samples = await scrape(url);
    assert.ok(metricValue(samples, "colm_http_requests_total", { route: "/", method: "GET", status: "200" }) >= 1);
    assert.ok(metricValue(samples, "colm_http_requests_total", { route: "/playground/:file", status: "200" }) >= 1);
  });
});

/** Frames the page's WebSockets sent and received, parsed, and the URLs they opened. */
class SocketLog {
  readonly sent: any[] = [];
  readonly received: any[] = [];
  readonly urls: string[] = [];
  /** Authorization header of each HTTP request the page made to /v1/*. */
  readonly apiAuth: Array<{ path: string; authorization: string | undefined }> = [];
  constructor(page: Page) {
    page.on("request", (r) => {
      const path = new URL(r.url()).pathname;
      if (path.startsWith("/v1/")) this.apiAuth.push({ path, authorization: r.headers()["authorization"] });
    });
    page.on("websocket", (ws: PageSocket) => {
      this.urls.push(ws.url());
      ws.on("framesent", (f) => this.sent.push(JSON.parse(String(f.payload))));
      ws.on("framereceived", (f) => this.received.push(JSON.parse(String(f.payload))));
    });
  }
}

const chromiumSkip = chromiumMissing();
if (chromiumSkip) console.log(`# playground browser tests skipped: ${chromiumSkip}`);

describe("playground in Chromium", { skip: chromiumSkip ?? false }, () => {
  const KEY = "playground-test-key";
  let ckpt: TestCheckpoint;
  let engine: Engine;
  let open: RunningApp;
  let keyed: RunningApp;
  let browser: Browser;
  let page: Page;
  let frames: SocketLog;
  const pageErrors: string[] = [];

  before(async () => {
    // Long positions so a generation lasts long enough to switch and cancel in it.
    ckpt = await writeTestCheckpoint("tiny", 32, { max_position: 4096 });
    engine = await loadTestEngine(ckpt.dir);
    open = await startApp(engine);
    keyed = await startApp(engine, { apiKey: KEY });
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await keyed?.close();
    await open?.close();
    await engine?.close();
    ckpt?.cleanup();
  });

  async function openPage(url: string, viewport = { width: 1280, height: 900 }): Promise<Page> {
    page = await browser.newPage({ viewport });
    page.on("pageerror", (e) => pageErrors.push(e.message));
    frames = new SocketLog(page);
    await page.goto(`${url}/`);
    return page;
  }

  async function ready(): Promise<void> {
    await page.waitForSelector("#generate:not([disabled])");
  }

  async function settings(s: { size?: string; maxTokens?: number; temperature?: string }): Promise<void> {
    if (s.size) await page.selectOption("#size", s.size);
    if (s.maxTokens !== undefined) await page.fill("#max-tokens", String(s.maxTokens));
    if (s.temperature !== undefined) await page.fill("#temperature", s.temperature);
  }

  const tokenChains = () => page.$$eval("#output .tok", (els) => els.map((e) => Number((e as HTMLElement).dataset.chains)));
  const outputText = () => page.$eval("#output", (e) => e.textContent ?? "");
  const finish = (reason: string) => page.waitForSelector(`#output[data-finish="${reason}"]`, { timeout: 30_000 });

  test("generates at a fixed size: every token shows the chain count that produced it, text as the API gives it", async () => {
    await openPage(open.url);
    await ready();
    assert.deepEqual(await page.$$eval("#legend .legend-item", (els) => els.map((e) => e.firstChild?.nextSibling?.textContent)), ["c1", "c2", "c3", "c4"]);
    await settings({ size: "2", maxTokens: 40, temperature: "0" });
    await page.fill("#prompt", "hello playground");
    await page.click("#generate");
    await finish("length");
    const chains = await tokenChains();
    assert.equal(chains.length, 40);
    assert.ok(chains.every((k) => k === 2));
    assert.equal(await page.textContent("#stat-tokens"), "40");
    assert.match((await page.textContent("#stat-ttft")) ?? "", /^\d+\.\d ms$/);
    assert.match((await page.textContent("#stat-tpot")) ?? "", /^\d+\.\d\d ms$/);
    assert.match((await page.textContent("#stat-tps")) ?? "", /tok\/s$/);
    assert.equal(await page.$$eval("#chart line.run", (els) => els.length), 1);
    // The same request from a plain ws client gives the same greedy text.
    const ws = await WsClient.open(open.wsUrl);
    ws.send({ type: "generate", id: "x", model: "tiny:c2", prompt: "hello playground", max_tokens: 40, temperature: 0, top_p: 0.95 });
    const done = await ws.waitFor((m) => m.type === "done");
    await ws.close();
    const text = ws.received.filter((m) => m.type === "token").map((m) => m.text).join("") + (done.tail_text ?? "");
    assert.equal(await outputText(), "hello playground" + text, "the prompt, then the completion");
    const sent = frames.sent.find((m) => m.type === "generate");
    assert.equal(sent.model, "tiny:c2");
    assert.equal(sent.max_tokens, 40);
    assert.equal(sent.temperature, 0);
  });

  test("switch mid-stream: the colour changes at exactly the acknowledged index; the chart marks it", async () => {
    await settings({ size: "4", maxTokens: 3000, temperature: "0.8" });
    await page.fill("#seed", "5");
    await page.click("#generate");
    await page.waitForSelector('#output .tok[data-index="5"]');
    await page.click('#switch-bar button[data-chains="1"]');
    await page.waitForFunction(() => document.getElementById("events")?.textContent?.includes("Switched to c1"));
    await page.click("#cancel");
    await finish("cancelled");
    const ack = frames.received.find((m) => m.type === "switched");
    assert.equal(ack.chains, 1);
    assert.ok(Number.isInteger(ack.at_index) && ack.at_index > 0, JSON.stringify(ack));
    // The switch never reaches back into tokens the page already had when it asked.
    const events = (await page.textContent("#events")) ?? "";
    const requestedAfter = Number(/Switched to c1 at token \d+ \(requested after (\d+) tokens\)/.exec(events)?.[1]);
    assert.ok(requestedAfter >= 5 && ack.at_index >= requestedAfter, events);
    const chains = await tokenChains();
    assert.ok(chains.length > ack.at_index && chains.length < 3000, `${chains.length} tokens, switch at ${ack.at_index}`);
    assert.deepEqual(chains, chains.map((_, i) => (i < ack.at_index ? 4 : 1)));
    const colours = await page.$$eval("#output .tok", (els) => els.map((e) => getComputedStyle(e).backgroundColor));
    assert.notEqual(colours[ack.at_index - 1], colours[ack.at_index]);
    assert.equal(colours[0], colours[ack.at_index - 1]);
    // The token at the switch carries the mark (and "empty" too when its text is held back: which
    // token the click lands on depends on timing).
    const marked = ((await page.getAttribute(`#output .tok[data-index="${ack.at_index}"]`, "class")) ?? "").split(" ");
    assert.ok(marked.includes("tok") && marked.includes("switch-mark") && marked.every((c) => ["tok", "switch-mark", "empty"].includes(c)), marked.join(" "));
    assert.equal(await page.$$eval("#chart line.switch-line", (els) => els.length), 1);
    assert.equal(await page.$$eval("#chart line.run", (els) => els.length), 2);
    assert.equal(await page.textContent("#stat-finish"), "cancelled");
  });

  test("Escape cancels a generation from the keyboard; Generate works again", async () => {
    await page.fill("#seed", "");
    await page.click("#generate");
    await page.waitForSelector('#output .tok[data-index="3"]');
    await page.keyboard.press("Escape");
    await finish("cancelled");
    assert.ok((await tokenChains()).length < 3000);
    assert.equal(await page.isDisabled("#generate"), false);
    assert.equal(await page.isDisabled("#cancel"), true);
    assert.equal(await page.isDisabled('#switch-bar button[data-chains="1"]'), true);
    assert.equal(frames.sent.filter((m) => m.type === "cancel").length, 2);
  });

  test("a validation error is shown as the server's error object; fixing it generates again", async () => {
    await settings({ maxTokens: 5, temperature: "5" });
    await page.click("#generate");
    await page.waitForSelector("#error:not([hidden])");
    assert.match((await page.textContent("#error")) ?? "", /invalid_request_error/);
    assert.equal(await page.textContent("#error .error-param"), "temperature");
    assert.equal(await page.getAttribute("#output", "data-finish"), "error");
    assert.equal(await page.isDisabled("#generate"), false);
    await settings({ temperature: "0" });
    await page.keyboard.press("Control+Enter");
    await finish("length");
    assert.equal(await page.isHidden("#error"), true);
    assert.equal((await tokenChains()).length, 5);
  });

  test("chat mode keeps the conversation and sends it back with the next message", async () => {
    await page.check('input[name="mode"][value="chat"]');
    assert.equal(await page.isHidden("#prompt"), true);
    await settings({ size: "3", maxTokens: 12, temperature: "0" });
    await page.fill("#user-message", "first question");
    await page.keyboard.press("Control+Enter");
    await page.waitForSelector("#history li.assistant");
    await page.fill("#user-message", "second question");
    await page.click("#generate");
    await page.waitForFunction(() => document.querySelectorAll("#history li").length === 4);
    const turns = frames.sent.filter((m) => m.type === "generate").slice(-2);
    assert.deepEqual(turns[0].messages, [{ role: "user", content: "first question" }]);
    const reply = frames.received.filter((m) => m.type === "token" && m.id === turns[0].id).map((m) => m.text).join("");
    assert.deepEqual(turns[1].messages.map((m: { role: string }) => m.role), ["user", "assistant", "user"]);
    assert.equal(turns[1].messages[1].content.startsWith(reply), true);
    assert.equal(turns[1].model, "tiny:c3");
    const assistantChains = await page.$$eval("#history li.assistant .tok", (els) => els.map((e) => Number((e as HTMLElement).dataset.chains)));
    assert.ok(assistantChains.length > 0 && assistantChains.every((k) => k === 3));
    await page.click("#clear-chat");
    assert.equal(await page.$$eval("#history li", (els) => els.length), 0);
  });

  test("elastic: the page sends the latency budget and shows the sizes the router chose", async () => {
    await page.check('input[name="mode"][value="prompt"]');
    await settings({ size: "elastic", maxTokens: 20, temperature: "0" });
    assert.equal(await page.isVisible("#budget-tpot"), true);
    await page.fill("#budget-tpot", "1000");
    await page.fill("#budget-total", "60000");
    await page.click("#generate");
    await finish("length");
    const sent = frames.sent.filter((m) => m.type === "generate").at(-1);
    assert.equal(sent.model, "tiny");
    assert.deepEqual(sent.latency_budget, { tpot_ms: 1000, total_ms: 60000 });
    const done = frames.received.filter((m) => m.type === "done" && m.id === sent.id)[0];
    const shown = await tokenChains();
    assert.equal(shown.length, 20);
    assert.deepEqual(shown, done.chains_per_token ?? shown.map(() => done.chains), "each token's colour is the size the server reports for it");
    assert.match((await page.textContent("#events")) ?? "", new RegExp(`last size ${done.model}`));
    await settings({ size: "2" });
    assert.equal(await page.isHidden("#budget-tpot"), true);
  });

  test("the server panel shows the router's predictions per size and the live metrics", async () => {
    await page.waitForFunction(() => document.querySelectorAll("#router-rows tr").length === 4);
    await page.waitForFunction(() => Number(document.querySelector("#router-rows tr:nth-child(4) td:last-child")?.textContent) > 0);
    assert.match((await page.textContent("#srv-running")) ?? "", /^\d+$/);
    assert.match((await page.textContent("#srv-kv-text")) ?? "", /of/);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  test("with COLM_API_KEY: asks for the key, shows a refusal, keeps the key in the tab and uses it on fetch and WebSocket", async () => {
    await openPage(keyed.url);
    await page.waitForSelector("#key-panel:not([hidden])");
    await page.fill("#api-key", "wrong");
    await page.press("#api-key", "Enter");
    await page.waitForSelector("#error:not([hidden])");
    assert.match((await page.textContent("#error")) ?? "", /invalid_api_key/);
    await page.fill("#api-key", KEY);
    await page.press("#api-key", "Enter");
    await ready();
    assert.equal(await page.isHidden("#key-panel"), true);
    await settings({ size: "1", maxTokens: 6 });
    await page.click("#generate");
    await finish("length");
    assert.equal((await tokenChains()).length, 6);
    assert.ok(frames.urls.some((u) => u.endsWith(`/v1/stream?api_key=${KEY}`)), frames.urls.join());
    await page.waitForFunction(() => document.getElementById("srv-updated")?.textContent?.startsWith("updated"));
    const bearerPaths = frames.apiAuth.filter((r) => r.authorization === `Bearer ${KEY}`).map((r) => r.path);
    assert.ok(bearerPaths.includes("/v1/models") && bearerPaths.includes("/v1/router"), JSON.stringify(frames.apiAuth));
    assert.equal(await page.evaluate(() => localStorage.length), 0);
    await page.reload();
    await ready();
    assert.equal(await page.isHidden("#key-panel"), true);
    await page.close();
  });

  test("while the model loads the page says so and retries; it is ready once the engine is", async () => {
    const loading = createApp(null, { log: () => undefined, router: { calibrate: false } });
    const server = await loading.listen(0, "127.0.0.1");
    try {
      await openPage(listeningUrl(server));
      await page.waitForFunction(() => document.getElementById("model-line")?.textContent?.includes("loading"));
      assert.equal(await page.isDisabled("#generate"), true);
      loading.setEngine(engine);
      await ready();
      assert.match((await page.textContent("#model-line")) ?? "", /^tiny · 4 sizes/);
      await page.close();
    } finally {
      await loading.close();
    }
  });

  test("readable at phone width: one column, nothing wider than the screen", async () => {
    await openPage(open.url, { width: 375, height: 800 });
    await ready();
    await settings({ maxTokens: 60 });
    await page.click("#generate");
    await finish("length");
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 375));
    const [controls, output] = await Promise.all([page.locator("#gen-form").boundingBox(), page.locator(".output-card").boundingBox()]);
    assert.ok(controls && output && output.y >= controls.y + controls.height, "the output card sits below the settings");
    assert.deepEqual(pageErrors, []);
    await page.close();
  });
});
