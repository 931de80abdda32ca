// `npm start` as a process: loads --model DIR / COLM_MODEL, logs one start line, serves, and
// shuts down gracefully on SIGTERM / SIGINT (running streams end with a finish_reason, exit 0).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { parseSse, writeTestCheckpoint, type TestCheckpoint } from "./helpers/server-fixture.ts";

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), "..");
let ckpt: TestCheckpoint;

before(async () => {
  ckpt = await writeTestCheckpoint("proc", 21);
});
after(() => ckpt.cleanup());

interface Proc {
  child: ChildProcess;
  url: string;
  startLine: string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** The server as `node … server/main.ts ARGS`, or as the README starts it, `npm start -- ARGS`. */
function start(args: string[], env: Record<string, string | undefined>, viaNpm = false): Promise<Proc> {
  const [command, argv] = viaNpm ? ["npm", ["start", "--", ...args]] : [process.execPath, ["--import", "tsx", "server/main.ts", ...args]];
  const merged: Record<string, string | undefined> = { ...process.env, PORT: "0", HOST: "127.0.0.1", COLM_DEVICE: "cpu", ...env };
  for (const k of Object.keys(merged)) if (merged[k] === undefined) delete merged[k];
  const child = spawn(command, argv, {
    cwd: ROOT,
    env: merged,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stderr!.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`server did not start: ${out}${err}`));
    }, 30_000);
    child.stdout!.on("data", (d) => {
      out += d;
      const m = /listening at (http:\/\/[^\s]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1], startLine: out.split("\n")[0], stderr: () => err, exited });
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}: ${out}${err}`));
    });
  });
}

describe("server/main.ts process", () => {
  test("no --model or COLM_MODEL: models/colm-long when it exists, else the bundled models/colm-kjv", async () => {
    const expected = existsSync(path.join(ROOT, "models", "colm-long", "config.json")) ? "colm-long" : "colm-kjv";
    const p = await start([], { COLM_MODEL: undefined, COLM_SHUTDOWN_TIMEOUT_MS: "0" });
    assert.match(p.startLine, new RegExp(`model ${expected} \\(chains 1\\.\\.`));
    p.child.kill("SIGTERM");
    assert.equal(await p.exited, 0);
  });

  test("--model DIR: start line, serving, SIGTERM cancels a running stream and exits 0", async () => {
    const p = await start(["--model", ckpt.dir], { COLM_SHUTDOWN_TIMEOUT_MS: "0" });
    assert.match(p.startLine, /model proc \(chains 1\.\.4, .*\) at f32 on cpu, listening at http:\/\/127\.0\.0\.1:\d+/);
    assert.equal((await fetch(`${p.url}/health`)).status, 200);
    const res = await fetch(`${p.url}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: "proc", prompt: "sigterm", max_tokens: 240, stream: true }),
    });
    const reader = res.body!.getReader();
    let text = new TextDecoder().decode((await reader.read()).value);
    p.child.kill("SIGTERM");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    const events = parseSse(text);
    assert.equal(events.pop(), "[DONE]");
    const finish = (events as any[]).map((e) => e.choices[0].finish_reason).filter((f) => f !== null);
    assert.equal(finish.length, 1);
    assert.ok(["cancelled", "length"].includes(finish[0]), finish[0]);
    assert.equal(await p.exited, 0);
    assert.match(p.stderr(), /SIGTERM: draining/);
  });

  test("COLM_MODEL + COLM_API_KEY; SIGINT when idle exits 0", async () => {
    const p = await start([], { COLM_MODEL: ckpt.dir, COLM_API_KEY: "abc", COLM_MAX_RUNNING: "2" });
    assert.equal((await fetch(`${p.url}/v1/models`)).status, 401);
    const ok = await fetch(`${p.url}/v1/models`, { headers: { Authorization: "Bearer abc" } });
    assert.equal(ok.status, 200);
    assert.equal(((await ok.json()) as { data: unknown[] }).data.length, 5);
    p.child.kill("SIGINT");
    assert.equal(await p.exited, 0);
  });

  test("COLM_DEVICE=cuda without the CUDA provider: one line says so, the server serves on CPU", async () => {
    const p = await start(["--model", ckpt.dir], { COLM_DEVICE: "cuda" });
    assert.match(p.startLine, / on cpu, listening/);
    const lines = p.stderr().split("\n").filter((l) => /cuda|onnxruntime/i.test(l));
    assert.equal(lines.length, 1, p.stderr());
    assert.match(lines[0], /CUDA execution provider not installed.*falling back to CPU/);
    p.child.kill("SIGTERM");
    assert.equal(await p.exited, 0);
  });

  test("npm start: SIGTERM to npm stops the server it started", { timeout: 30_000 }, async () => {
    const p = await start(["--model", ckpt.dir], { COLM_SHUTDOWN_TIMEOUT_MS: "0" }, true);
    assert.equal((await fetch(`${p.url}/health`)).status, 200);
    p.child.kill("SIGTERM");
    await p.exited;
    const gone = await fetch(`${p.url}/health`).then(
      () => false,
      () => true,
    );
    assert.ok(gone, "nothing answers on the server's port once npm has exited");
  });

  test("--quant q4 / COLM_QUANT=q8: the start line, /v1/models and /metrics say the precision; a bad one exits 2", async () => {
    for (const [args, env, precision] of [[["--quant", "q4"], {}, "q4"], [[], { COLM_QUANT: "q8" }, "q8"]] as const) {
      const p = await start(["--model", ckpt.dir, ...args], env);
      assert.match(p.startLine, new RegExp(` at ${precision} on cpu, listening`));
      const models = (await (await fetch(`${p.url}/v1/models`)).json()) as { data: { precision: string }[] };
      assert.ok(models.data.every((m) => m.precision === precision));
      assert.match(await (await fetch(`${p.url}/metrics`)).text(), new RegExp(`colm_model_info\\{[^}]*precision="${precision}"[^}]*\\} 1`));
      p.child.kill("SIGTERM");
      assert.equal(await p.exited, 0);
    }
    await assert.rejects(start(["--model", ckpt.dir, "--quant", "q3"], {}), /exited with 2.*--quant must be f32, q8 or q4, got 'q3'/s);
  });

  test("a missing model folder exits non-zero with a message", async () => {
    await assert.rejects(start(["--model", path.join(ckpt.dir, "nope")], {}), /exited with 1.*cannot load model/s);
  });
});
