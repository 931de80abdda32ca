// Screenshot of the playground mid-generation (loadtest/results/playground.png, or under
// COLM_RESULTS_DIR): the bundled model, three background generations as load, and the page
// switching size by hand while it streams (c4 → c2 → c1 → c3).
//   npm run screenshot:playground
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { WebSocket } from "ws";
import { createApp, listeningUrl } from "../server/api/app.ts";
import { loadModel } from "../server/engine/engine.ts";
import { chromiumMissing, launchChromium } from "./browser.ts";

const MODEL = join(import.meta.dirname, "..", "models", "colm-kjv");
const OUT_DIR = process.env.COLM_RESULTS_DIR || join(import.meta.dirname, "results");
const SWITCHES: Array<[atTokens: number, chains: number]> = [[30, 2], [70, 1], [110, 3]];

/** Generations from another client, so the server panel shows load. */
function backgroundLoad(wsUrl: string, count: number): WebSocket {
  const ws = new WebSocket(wsUrl);
  ws.on("open", () => {
    for (let i = 0; i < count; i++) ws.send(JSON.stringify({ type: "generate", id: i, model: "colm-kjv", prompt: "And it came to pass", max_tokens: 230, seed: i }));
  });
  return ws;
}

async function main(): Promise<void> {
  const missing = chromiumMissing();
  if (missing) throw new Error(missing);
  const engine = await loadModel(MODEL, { device: "cpu" });
  const colm = createApp(engine, { log: () => undefined });
  await colm.calibrate();
  const url = listeningUrl(await colm.listen(0, "127.0.0.1"));
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(`${url}/`);
    await page.waitForSelector("#generate:not([disabled])");
    await page.selectOption("#size", "4");
    await page.fill("#prompt", "And God said");
    await page.fill("#max-tokens", "230");
    await page.fill("#seed", "3");
    const load = backgroundLoad(url.replace(/^http/, "ws") + "/v1/stream", 3);
    await page.click("#generate");
    for (const [at, chains] of SWITCHES) {
      await page.waitForSelector(`#output .tok[data-index="${at}"]`);
      await page.click(`#switch-bar button[data-chains="${chains}"]`);
    }
    await page.waitForSelector('#output .tok[data-index="150"]');
    mkdirSync(OUT_DIR, { recursive: true });
    const path = join(OUT_DIR, "playground.png");
    await page.screenshot({ path });
    console.log(`wrote ${path}`);
    load.close();
  } finally {
    await browser.close();
    await colm.close();
    await engine.close();
  }
}

await main();
