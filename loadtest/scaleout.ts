// The pieces of `npm run bench:scaleout`: colm-serve replicas as child processes on loopback
// ports, and Debian's HAProxy in front of them as its own process with a generated config
// (active health checks on /health, layer-7 retries), plus its runtime statistics.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A port the kernel just handed out on 127.0.0.1 (free when this resolves). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Poll `url` until it answers 200, or throw after `timeoutMs` (or when `gaveUp()` says so). */
export async function waitHealthy(url: string, timeoutMs: number, gaveUp: () => string | null = () => null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const reason = gaveUp();
    if (reason) throw new Error(reason);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) throw new Error(`${url} not healthy after ${timeoutMs} ms`);
    await sleep(100);
  }
}

/** A child process with its exit awaited and its stderr kept (for the report). */
export interface Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly log: string[];
  /** Resolves with the exit code (or signal name) and the time it exited. */
  readonly exited: Promise<{ code: number | string; at: number }>;
  exitedYet: boolean;
}

function track(name: string, proc: ChildProcess): Child {
  const child: Child = {
    name,
    proc,
    log: [],
    exitedYet: false,
    exited: new Promise((resolve) =>
      proc.once("exit", (code, signal) => {
        child.exitedYet = true;
        resolve({ code: code ?? signal ?? "unknown", at: performance.now() });
      }),
    ),
  };
  const keep = (chunk: Buffer) => child.log.push(...chunk.toString().split("\n").filter((l) => l.trim() !== ""));
  proc.stdout?.on("data", keep);
  proc.stderr?.on("data", keep);
  return child;
}

export interface ReplicaOptions {
  modelDir?: string;
  threads: number;
  drainMs: number;
  maxRunning: number;
  maxWaiting: number;
}

export interface Replica extends Child {
  readonly port: number;
  readonly url: string;
}

/** `node --import tsx server/main.ts` on a free loopback port; resolves once /health is 200. */
export async function startReplica(name: string, o: ReplicaOptions): Promise<Replica> {
  const port = await freePort();
  const env = {
    ...process.env,
    PORT: String(port),
    HOST: "127.0.0.1",
    COLM_THREADS: String(o.threads),
    COLM_SHUTDOWN_TIMEOUT_MS: String(o.drainMs),
    COLM_MAX_RUNNING: String(o.maxRunning),
    COLM_MAX_WAITING: String(o.maxWaiting),
    ...(o.modelDir ? { COLM_MODEL: o.modelDir } : {}),
  };
  const proc = spawn(process.execPath, ["--import", "tsx", "server/main.ts"], { env, stdio: ["ignore", "pipe", "pipe"] });
  const replica: Replica = Object.assign(track(name, proc), { port, url: `http://127.0.0.1:${port}` });
  await waitHealthy(`${replica.url}/health`, 120_000, () => (replica.exitedYet ? `${name} exited while starting:\n${replica.log.join("\n")}` : null));
  return replica;
}

/** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
export async function stopChild(child: Child, graceMs: number): Promise<void> {
  if (child.exitedYet) return;
  child.proc.kill("SIGTERM");
  const timer = setTimeout(() => child.proc.kill("SIGKILL"), graceMs);
  await child.exited;
  clearTimeout(timer);
}

/** Where haproxy is, or null (the benchmark says how to install it). */
export function findHaproxy(): string | null {
  for (const bin of ["haproxy", "/usr/sbin/haproxy"]) {
    if (!spawnSync(bin, ["-v"], { encoding: "utf8" }).error) return bin;
  }
  return null;
}

/**
 * HAProxy config: leastconn over the replicas; a replica is checked every 500 ms on /health and
 * taken out at the first failure (a draining replica answers 503), back after two passes.
 * Failed connections, empty responses and 503s are retried once more on another replica
 * (`option redispatch`): the request body is buffered, so a POST can be replayed; a response
 * that has begun (a stream) is never retried. Each response says which replica served it.
 */
export function haproxyConfig(listenPort: number, replicas: readonly Replica[], statsSocket: string, clientTimeoutS: number): string {
  return [
    "global",
    "  maxconn 4096",
    `  stats socket ${statsSocket} mode 600 level admin`,
    "defaults",
    "  mode http",
    "  timeout connect 2s",
    `  timeout client ${Math.ceil(clientTimeoutS)}s`,
    `  timeout server ${Math.ceil(clientTimeoutS)}s`,
    "  timeout http-request 10s",
    "  option http-buffer-request",
    "  option redispatch 1",
    "  retries 2",
    "  retry-on conn-failure empty-response 503",
    "frontend colm",
    `  bind 127.0.0.1:${listenPort}`,
    "  default_backend replicas",
    "backend replicas",
    "  balance leastconn",
    "  option httpchk GET /health",
    "  http-check expect status 200",
    "  default-server inter 500ms fall 1 rise 2",
    "  http-response set-header X-Colm-Replica %s",
    ...replicas.map((r) => `  server ${r.name} 127.0.0.1:${r.port} check`),
    "",
  ].join("\n");
}

export interface Balancer extends Child {
  readonly url: string;
  /** Per-server counters from HAProxy's runtime API (`show stat`). */
  stats(): Promise<Record<string, { retries: number; redispatches: number; responses5xx: number; status: string }>>;
  close(): Promise<void>;
}

/** Start HAProxy in the foreground (-db) with a generated config; resolves once it routes /health. */
export async function startBalancer(bin: string, replicas: readonly Replica[], clientTimeoutS: number): Promise<Balancer> {
  const dir = mkdtempSync(join(tmpdir(), "colm-scaleout-"));
  const port = await freePort();
  const socket = join(dir, "admin.sock");
  const cfg = join(dir, "haproxy.cfg");
  writeFileSync(cfg, haproxyConfig(port, replicas, socket, clientTimeoutS));
  const check = spawnSync(bin, ["-c", "-f", cfg], { encoding: "utf8" });
  if (check.status !== 0) throw new Error(`haproxy rejected its config:\n${check.stdout}${check.stderr}`);
  const child = track("haproxy", spawn(bin, ["-db", "-f", cfg], { stdio: ["ignore", "pipe", "pipe"] }));
  const url = `http://127.0.0.1:${port}`;
  const balancer: Balancer = Object.assign(child, {
    url,
    stats: () => haproxyStats(socket),
    close: async () => {
      await stopChild(child, 2000);
      rmSync(dir, { recursive: true, force: true });
    },
  });
  await waitHealthy(`${url}/health`, 10_000, () => (child.exitedYet ? `haproxy exited:\n${child.log.join("\n")}` : null));
  return balancer;
}

/** `show stat` on the runtime socket → retries (wretr), redispatches (wredis), 5xx, status per server. */
async function haproxyStats(socket: string): ReturnType<Balancer["stats"]> {
  const csv = await new Promise<string>((resolve, reject) => {
    let out = "";
    const conn = createConnection(socket, () => conn.write("show stat\n"));
    conn.on("data", (d) => (out += d.toString()));
    conn.on("end", () => resolve(out));
    conn.on("error", reject);
  });
  const [header, ...rows] = csv.replace(/^# /, "").trim().split("\n");
  const cols = header.split(",");
  const at = (row: string[], name: string) => row[cols.indexOf(name)];
  const out: Awaited<ReturnType<Balancer["stats"]>> = {};
  for (const line of rows) {
    const row = line.split(",");
    if (at(row, "pxname") !== "replicas") continue;
    out[at(row, "svname")] = {
      retries: Number(at(row, "wretr")) || 0,
      redispatches: Number(at(row, "wredis")) || 0,
      responses5xx: Number(at(row, "hrsp_5xx")) || 0,
      status: at(row, "status"),
    };
  }
  return out;
}
