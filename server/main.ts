// `npm start`: serve a CoLM-Air checkpoint over the OpenAI-compatible HTTP API and /v1/stream.
//
//   node --import tsx server/main.ts [--model DIR] [--port N] [--host H] [--quant f32|q8|q4]
//
// Environment: COLM_MODEL (model folder, default models/colm-long when it exists, else models/colm-kjv),
// PORT (8080), HOST (127.0.0.1),
// COLM_DEVICE (cpu | cuda), COLM_QUANT (f32 | q8 | q4; default the checkpoint's own), COLM_API_KEY, COLM_MAX_RUNNING (8),
// COLM_MAX_WAITING (32), COLM_KV_BYTES, COLM_PREFIX_CACHE_BYTES (half the KV budget; 0: no prefix cache),
// COLM_BODY_LIMIT ("1mb"), COLM_SHUTDOWN_TIMEOUT_MS (10000), COLM_WS_PING_MS (30000),
// COLM_WS_MAX_BUFFERED_BYTES (1048576), COLM_SPECULATIVE (auto | on | off; default auto).
import { existsSync } from "node:fs";
import { freemem } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { createApp, listeningUrl } from "./api/app.ts";
import { loadModel } from "./engine/engine.ts";
import { PRECISIONS, type Precision } from "../models/quantized.ts";
import { SPECULATIVE_MODES, type SpeculativeMode } from "./policy/draft-policy.ts";

const MODELS = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "models");
/**
 * The long-context BPE model (issue 15) when it has been exported to models/colm-long, else the
 * bundled byte-level demo models/colm-kjv (which --model / COLM_MODEL still load either way).
 */
export const DEFAULT_MODEL = existsSync(path.join(MODELS, "colm-long", "config.json")) ? path.join(MODELS, "colm-long") : path.join(MODELS, "colm-kjv");

function fail(message: string): never {
  console.error(`colm-serve: ${message}`);
  process.exit(2);
}

function intEnv(name: string, fallback: number, min = 0): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min) fail(`${name} must be an integer ≥ ${min}, got '${raw}'`);
  return v;
}

async function main(): Promise<void> {
  let args;
  try {
    args = parseArgs({
      options: {
        model: { type: "string" },
        port: { type: "string" },
        host: { type: "string" },
        quant: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: false,
    }).values;
  } catch (err) {
    fail((err as Error).message);
  }
  if (args.help) {
    console.log("usage: npm start -- [--model DIR] [--port N] [--host H] [--quant f32|q8|q4]   (see README for environment variables)");
    return;
  }
  const modelDir = path.resolve(args.model ?? process.env.COLM_MODEL ?? DEFAULT_MODEL);
  const port = args.port !== undefined ? Number(args.port) : intEnv("PORT", 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`invalid port '${args.port}'`);
  const host = args.host ?? process.env.HOST ?? "127.0.0.1";
  const deviceEnv = process.env.COLM_DEVICE;
  if (deviceEnv !== undefined && deviceEnv !== "" && deviceEnv !== "cpu" && deviceEnv !== "cuda") fail(`COLM_DEVICE must be cpu or cuda, got '${deviceEnv}'`);
  const device = deviceEnv === "cpu" || deviceEnv === "cuda" ? deviceEnv : undefined;
  const quantArg = args.quant ?? (process.env.COLM_QUANT || undefined);
  if (quantArg !== undefined && !PRECISIONS.includes(quantArg as Precision)) fail(`${args.quant !== undefined ? "--quant" : "COLM_QUANT"} must be f32, q8 or q4, got '${quantArg}'`);
  const quant = quantArg as Precision | undefined;
  const shutdownMs = intEnv("COLM_SHUTDOWN_TIMEOUT_MS", 10_000);
  const specEnv = process.env.COLM_SPECULATIVE || "auto";
  if (!SPECULATIVE_MODES.includes(specEnv as SpeculativeMode)) fail(`COLM_SPECULATIVE must be auto, on or off, got '${specEnv}'`);
  // KV budget: COLM_KV_BYTES, else half the memory free at start-up.
  const kvBudgetBytes = intEnv("COLM_KV_BYTES", Math.floor(freemem() / 2), 1);
  // The prefix cache shares that budget (admission evicts from it before a request would wait), so
  // it may take a large share; half leaves room for running generations without constant eviction.
  const prefixCacheBytes = intEnv("COLM_PREFIX_CACHE_BYTES", Math.floor(kvBudgetBytes / 2), 0);

  const colm = createApp(null, {
    apiKey: process.env.COLM_API_KEY || undefined,
    maxRunning: intEnv("COLM_MAX_RUNNING", 8, 1),
    maxWaiting: intEnv("COLM_MAX_WAITING", 32, 0),
    kvBudgetBytes,
    bodyLimit: process.env.COLM_BODY_LIMIT || "1mb",
    ws: {
      pingIntervalMs: intEnv("COLM_WS_PING_MS", 30_000, 1),
      maxBufferedBytes: intEnv("COLM_WS_MAX_BUFFERED_BYTES", 1 << 20, 1),
    },
    log: (line) => console.error(line),
    router: { speculative: specEnv as SpeculativeMode },
  });

  // Listen first (health answers 503 while loading), then load the model.
  const server = await colm.listen(port, host);
  const url = listeningUrl(server);

  let shuttingDown = false;
  const shutdown = async (signal: string) => {
    if (shuttingDown) return;
    shuttingDown = true;
    console.error(`colm-serve: ${signal}: draining (deadline ${shutdownMs} ms)`);
    try {
      await colm.drain(shutdownMs);
      await colm.close();
      await colm.engine?.close();
    } catch (err) {
      console.error(`colm-serve: error during shutdown: ${(err as Error).message}`);
    }
    console.error("colm-serve: stopped");
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));

  let engine;
  try {
    engine = await loadModel(modelDir, { device, quant, prefixCacheBytes, log: (m) => console.error(`colm-serve: ${m}`) });
  } catch (err) {
    console.error(`colm-serve: cannot load model from ${modelDir}: ${(err as Error).message}`);
    await colm.close();
    process.exit(1);
  }
  if (shuttingDown) return;
  colm.setEngine(engine);
  const i = engine.info;
  console.log(
    `colm-serve: model ${i.name} (chains 1..${i.nChains}, widths ${i.widths.join("/")}, params ${i.paramCounts.join("/")}) ` +
      `at ${i.precision} on ${i.device}, listening at ${url} (ws ${url.replace(/^http/, "ws")}/v1/stream)`,
  );
}

main().catch((err) => {
  console.error(`colm-serve: ${(err as Error)?.stack ?? String(err)}`);
  process.exit(1);
});
