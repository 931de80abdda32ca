// deploy/ checked offline. Kubernetes built-in kinds (Deployment, Service, ConfigMap, HPA) are
// validated against the Kubernetes API's OpenAPI schemas bundled in the `kubernetes-models` npm
// package, PodMonitor against the Prometheus Operator CRD schema in
// `@kubernetes-models/prometheus-operator`; those schemas check types, required fields and enums,
// not unknown fields (Kubernetes' OpenAPI allows them). The Gateway API and Inference Extension
// kinds (InferencePool, Gateway, HTTPRoute) and the endpoint picker's config get a structural
// check of their required fields written from the v1 API reference. Then the pieces are checked
// against each other and against the server: selectors match the pod labels, ports agree, every
// metric named by the HPA, the adapter, the endpoint picker and the Grafana dashboard is one the
// server exports, the drain fits the grace period, and every file the Dockerfile copies exists.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Service } from "kubernetes-models/v1/Service";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { Metrics } from "../server/api/metrics.ts";

type Obj = Record<string, any>;
interface Manifest {
  file: string;
  doc: Obj;
}

const DEPLOY = "deploy";

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? yamlFiles(join(dir, e.name)) : /\.ya?ml$/.test(e.name) ? [join(dir, e.name)] : [],
  );
}

function loadManifests(dir: string): Manifest[] {
  return yamlFiles(dir).flatMap((file) =>
    parseAllDocuments(readFileSync(file, "utf8")).map((d) => {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors[0].message}`);
      return { file, doc: d.toJS() as Obj };
    }),
  );
}

const manifests = loadManifests(join(DEPLOY, "k8s"));
const byKind = (kind: string): Manifest[] => manifests.filter((m) => m.doc.kind === kind);
const one = (kind: string): Obj => {
  const found = byKind(kind);
  assert.equal(found.length, 1, `one ${kind}`);
  return found[0].doc;
};

/** Fail with `path` when `ok` is false (structural checks of CRD-backed kinds). */
function need(ok: unknown, path: string, what: string): void {
  if (!ok) throw new Error(`${path}: ${what}`);
}
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);
const isPort = (v: unknown) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function checkMetadata(doc: Obj, path: string): void {
  need(isObj(doc.metadata) && typeof doc.metadata.name === "string" && DNS_LABEL.test(doc.metadata.name), `${path}.metadata.name`, "a DNS label");
}

/** inference.networking.k8s.io/v1 InferencePool: the required fields and their constraints. */
function checkInferencePool(doc: Obj, path: string): void {
  checkMetadata(doc, path);
  const spec = doc.spec;
  need(isObj(spec), `${path}.spec`, "required");
  const labels = spec.selector?.matchLabels;
  need(isObj(labels) && Object.keys(labels).length >= 1 && Object.keys(labels).length <= 64, `${path}.spec.selector.matchLabels`, "1..64 labels");
  need(Array.isArray(spec.targetPorts) && spec.targetPorts.length >= 1 && spec.targetPorts.length <= 8, `${path}.spec.targetPorts`, "1..8 ports");
  spec.targetPorts.forEach((p: Obj, i: number) => need(isObj(p) && isPort(p.number), `${path}.spec.targetPorts[${i}].number`, "1..65535"));
  need(spec.appProtocol === undefined || ["http", "kubernetes.io/h2c"].includes(spec.appProtocol), `${path}.spec.appProtocol`, "http or kubernetes.io/h2c");
  const epp = spec.endpointPickerRef;
  need(isObj(epp) && typeof epp.name === "string" && epp.name.length > 0, `${path}.spec.endpointPickerRef.name`, "required");
  const kind = epp.kind ?? "Service";
  need(kind !== "Service" || (isObj(epp.port) && isPort(epp.port.number)), `${path}.spec.endpointPickerRef.port.number`, "required when kind is Service");
  need(epp.failureMode === undefined || ["FailOpen", "FailClose"].includes(epp.failureMode), `${path}.spec.endpointPickerRef.failureMode`, "FailOpen or FailClose");
  const known = new Set(["selector", "targetPorts", "appProtocol", "endpointPickerRef"]);
  for (const k of Object.keys(spec)) need(known.has(k), `${path}.spec.${k}`, "unknown field");
}

function checkGateway(doc: Obj, path: string): void {
  checkMetadata(doc, path);
  need(typeof doc.spec?.gatewayClassName === "string", `${path}.spec.gatewayClassName`, "required");
  need(Array.isArray(doc.spec.listeners) && doc.spec.listeners.length >= 1, `${path}.spec.listeners`, "at least one");
  doc.spec.listeners.forEach((l: Obj, i: number) => {
    need(typeof l.name === "string" && typeof l.protocol === "string" && isPort(l.port), `${path}.spec.listeners[${i}]`, "name, protocol and port");
  });
}

function checkHttpRoute(doc: Obj, path: string): void {
  checkMetadata(doc, path);
  need(Array.isArray(doc.spec?.parentRefs) && doc.spec.parentRefs.every((p: Obj) => typeof p.name === "string"), `${path}.spec.parentRefs`, "named parents");
  need(Array.isArray(doc.spec.rules) && doc.spec.rules.length >= 1, `${path}.spec.rules`, "at least one");
  doc.spec.rules.forEach((r: Obj, i: number) =>
    (r.backendRefs ?? []).forEach((b: Obj, j: number) => need(typeof b.name === "string", `${path}.spec.rules[${i}].backendRefs[${j}].name`, "required")),
  );
}

/** Schema validation per apiVersion/kind; a kind not listed here fails the test. */
const VALIDATORS: Record<string, (doc: Obj, path: string) => void> = {
  "apps/v1/Deployment": (d) => new Deployment(d as any).validate(),
  "v1/Service": (d) => new Service(d as any).validate(),
  "v1/ConfigMap": (d) => new ConfigMap(d as any).validate(),
  "autoscaling/v2/HorizontalPodAutoscaler": (d) => new HorizontalPodAutoscaler(d as any).validate(),
  "monitoring.coreos.com/v1/PodMonitor": (d) => new PodMonitor(d as any).validate(),
  "inference.networking.k8s.io/v1/InferencePool": checkInferencePool,
  "gateway.networking.k8s.io/v1/Gateway": checkGateway,
  "gateway.networking.k8s.io/v1/HTTPRoute": checkHttpRoute,
  "kustomize.config.k8s.io/v1beta1/Kustomization": () => undefined, // checked below
};

/** Every metric the server registers, name → type (a registry with idle sources: no engine needed). */
const metricTypes = (() => {
  const idle = () => 0;
  const metrics = new Metrics({ running: idle, waiting: idle, kvBytesInUse: idle, kvBytesCapacity: idle, wsConnections: idle, modelInfo: () => null });
  return new Map(metrics.registry.getMetricsAsArray().map((m) => {
    const { name, type } = m as unknown as { name: string; type: unknown };
    return [name, String(type)];
  }));
})();

/** Names of every series /metrics can hold: each metric, and a histogram's _bucket/_sum/_count. */
function exportedSeries(): Set<string> {
  const names = new Set<string>();
  for (const [name, type] of metricTypes) {
    names.add(name);
    if (type === "histogram") for (const s of ["_bucket", "_sum", "_count"]) names.add(name + s);
  }
  return names;
}

/** The colm_* / process_* metric names a PromQL expression or config string mentions. */
const metricNamesIn = (text: string): string[] => [...text.matchAll(/\b((?:colm|process|nodejs)_[a-z0-9_]+)\b/g)].map((m) => m[1]);

const deployment = () => one("Deployment");
const podLabels = () => deployment().spec.template.metadata.labels as Record<string, string>;
const container = () => deployment().spec.template.spec.containers[0] as Obj;
const envOf = (name: string): string | undefined => (container().env as Obj[]).find((e) => e.name === name)?.value;
const selects = (selector: Record<string, string>) => Object.entries(selector).every(([k, v]) => podLabels()[k] === v);

describe("deploy/k8s manifests", () => {
  test("every manifest validates against its kind's schema", () => {
    assert.ok(manifests.length >= 10, `found ${manifests.length} manifests`);
    for (const { file, doc } of manifests) {
      const key = `${doc.apiVersion}/${doc.kind}`;
      const validate = VALIDATORS[key];
      assert.ok(validate, `${file}: no validator for ${key}`);
      assert.doesNotThrow(() => validate(doc, `${file} ${doc.kind}`), `${file} ${key}`);
    }
  });

  test("the schemas do reject a broken manifest (the check has teeth)", () => {
    const broken = structuredClone(deployment());
    broken.spec.template.spec.containers[0].ports[0].containerPort = "eighty";
    assert.throws(() => VALIDATORS["apps/v1/Deployment"](broken, "broken"), /containerPort/);
    const pool = structuredClone(one("InferencePool"));
    delete pool.spec.endpointPickerRef.port;
    assert.throws(() => checkInferencePool(pool, "pool"), /port\.number/);
  });

  test("each kustomization lists files that exist, and every manifest is in one", () => {
    const listed = new Set<string>();
    for (const { file, doc } of byKind("Kustomization")) {
      const dir = file.slice(0, file.lastIndexOf("/"));
      for (const r of doc.resources as string[]) {
        assert.ok(existsSync(join(dir, r)), `${file}: ${r} missing`);
        listed.add(join(dir, r));
      }
    }
    for (const { file, doc } of manifests) if (doc.kind !== "Kustomization") assert.ok(listed.has(file), `${file} is in no kustomization`);
  });

  test("Service, PodMonitor and InferencePool select the Deployment's pods, on its http port", () => {
    const d = deployment();
    assert.ok(selects(d.spec.selector.matchLabels));
    const port = (container().ports as Obj[]).find((p) => p.name === "http");
    assert.equal(port?.containerPort, Number(envOf("PORT")));
    const svc = one("Service");
    assert.ok(selects(svc.spec.selector));
    assert.equal(svc.spec.ports[0].targetPort, "http");
    const pm = one("PodMonitor");
    assert.ok(selects(pm.spec.selector.matchLabels));
    assert.equal(pm.spec.podMetricsEndpoints[0].port, "http");
    assert.equal(pm.spec.podMetricsEndpoints[0].path, "/metrics");
    const pool = one("InferencePool");
    assert.ok(selects(pool.spec.selector.matchLabels));
    assert.deepEqual(pool.spec.targetPorts, [{ number: port?.containerPort }]);
    const route = one("HTTPRoute");
    assert.deepEqual(route.spec.rules[0].backendRefs[0], { group: "inference.networking.k8s.io", kind: "InferencePool", name: pool.metadata.name });
    assert.equal(route.spec.parentRefs[0].name, one("Gateway").metadata.name);
  });

  test("probes use /health, and the drain fits in the grace period", () => {
    const c = container();
    assert.equal(c.readinessProbe.httpGet.path, "/health");
    assert.equal(c.startupProbe.httpGet.path, "/health");
    assert.ok(c.livenessProbe.tcpSocket, "liveness must not fail on the drain's 503");
    const preStopS = Number(c.lifecycle.preStop.exec.command[1]);
    const drainS = Number(envOf("COLM_SHUTDOWN_TIMEOUT_MS")) / 1000;
    assert.ok(deployment().spec.template.spec.terminationGracePeriodSeconds >= preStopS + drainS + 5);
    assert.ok(Number(envOf("COLM_KV_BYTES")) > 0, "an explicit KV budget (free memory is the node's in a container)");
    assert.ok(Number(envOf("COLM_KV_BYTES")) < 2 * 2 ** 30, "KV budget under the memory limit");
    assert.equal(deployment().spec.template.spec.securityContext.runAsNonRoot, true);
  });

  test("the HPA scales the Deployment on a queue gauge the server exports and the adapter publishes", () => {
    const hpa = one("HorizontalPodAutoscaler");
    assert.equal(hpa.spec.scaleTargetRef.name, deployment().metadata.name);
    const metric = hpa.spec.metrics[0].pods.metric.name as string;
    assert.equal(metricTypes.get(metric), "gauge");
    const rules = byKind("ConfigMap").find((m) => m.doc.metadata.name === "colm-serve-adapter-rules");
    assert.ok(rules);
    const adapter = parseAllDocuments(rules.doc.data["config.yaml"])[0].toJS() as Obj;
    assert.ok((adapter.rules as Obj[]).some((r) => r.name.as === metric));
  });

  test("the endpoint picker reads the three gauges of the model-server protocol, all exported by the server", () => {
    const cm = byKind("ConfigMap").find((m) => m.doc.metadata.name === "colm-serve-epp-config");
    assert.ok(cm);
    const config = parseAllDocuments(cm.doc.data["colm-serve.yaml"])[0].toJS() as Obj;
    assert.equal(config.apiVersion, "inference.networking.x-k8s.io/v1alpha1");
    assert.equal(config.kind, "EndpointPickerConfig");
    const extractor = (config.plugins as Obj[]).find((p) => p.type === "core-metrics-extractor");
    const engine = extractor?.parameters.engineConfigs.find((e: Obj) => e.name === extractor.parameters.defaultEngine);
    assert.deepEqual(
      { queued: engine.queuedRequestsSpec, running: engine.runningRequestsSpec, kv: engine.kvUsageSpec },
      { queued: "colm_requests_waiting", running: "colm_requests_running", kv: "colm_kv_cache_usage_ratio" },
    );
    for (const name of [engine.queuedRequestsSpec, engine.runningRequestsSpec, engine.kvUsageSpec]) assert.equal(metricTypes.get(name), "gauge", name);
    const refs = new Set((config.schedulingProfiles as Obj[]).flatMap((p) => p.plugins.map((r: Obj) => r.pluginRef)));
    for (const r of refs) assert.ok((config.plugins as Obj[]).some((p) => (p.name ?? p.type) === r), `plugin ${r} declared`);
    // The legacy flags in the comment name the same metrics.
    const text = readFileSync(cm.file, "utf8");
    for (const flag of ["total-queued-requests-metric=colm_requests_waiting", "total-running-requests-metric=colm_requests_running", "kv-cache-usage-percentage-metric=colm_kv_cache_usage_ratio"]) {
      assert.ok(text.includes(flag), flag);
    }
  });
});

describe("deploy/ observability and container", () => {
  const exported = exportedSeries();

  test("the Grafana dashboard parses and every metric its queries use is exported", () => {
    const dash = JSON.parse(readFileSync(join(DEPLOY, "grafana", "colm-serve-dashboard.json"), "utf8")) as Obj;
    assert.equal(dash.uid, "colm-serve");
    const exprs = (dash.panels as Obj[]).flatMap((p) => (p.targets ?? []).map((t: Obj) => t.expr as string));
    assert.ok(exprs.length >= 12, `${exprs.length} queries`);
    const used = new Set(exprs.flatMap(metricNamesIn));
    for (const name of used) assert.ok(exported.has(name), `dashboard uses ${name}, which the server does not export`);
    for (const needed of ["colm_time_to_first_token_seconds_bucket", "colm_time_per_output_token_seconds_bucket", "colm_e2e_request_latency_seconds_bucket", "colm_generation_tokens_total", "colm_requests_running", "colm_requests_waiting", "colm_kv_cache_usage_ratio", "colm_chain_switches_total", "colm_latency_budget_misses_total", "colm_router_predicted_tpot_seconds"]) {
      assert.ok(used.has(needed), `dashboard shows ${needed}`);
    }
    const ids = (dash.panels as Obj[]).map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, "panel ids unique");
  });

  test("the Prometheus config passes promtool check config", { skip: spawnSync("promtool", ["--version"]).error ? "promtool is not installed" : false }, () => {
    const r = spawnSync("promtool", ["check", "config", join(DEPLOY, "prometheus", "prometheus.yml")], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stdout + r.stderr);
  });

  test("the Dockerfile: multi-stage, npm ci --omit=dev, non-root, HEALTHCHECK on /health, copies only what exists and is not ignored", () => {
    const text = readFileSync(join(DEPLOY, "Dockerfile"), "utf8").replace(/\\\n/g, " ");
    const lines = text.split("\n").filter((l) => l.trim() !== "" && !l.trimStart().startsWith("#"));
    const stages = lines.filter((l) => /^FROM\s/i.test(l));
    assert.ok(stages.length >= 3, "multi-stage");
    assert.ok(lines.some((l) => /^RUN npm ci --omit=dev\b/.test(l)));
    for (const target of ["cpu", "cuda"]) {
      const start = lines.findIndex((l) => new RegExp(`^FROM \\S+ AS ${target}$`).test(l));
      assert.ok(start >= 0, `stage ${target}`);
      const end = lines.findIndex((l, i) => i > start && /^FROM\s/.test(l));
      const stage = lines.slice(start, end < 0 ? undefined : end);
      const user = stage.filter((l) => /^USER /.test(l)).pop();
      assert.ok(user && !/^USER (root|0)\b/.test(user), `${target} runs as non-root (${user})`);
      assert.ok(stage.some((l) => /^HEALTHCHECK .*\/health/.test(l)), `${target} HEALTHCHECK on /health`);
      assert.ok(stage.some((l) => l === 'CMD ["node", "--import", "tsx", "server/main.ts"]'), `${target} CMD`);
    }
    assert.match(JSON.parse(readFileSync("package.json", "utf8")).scripts.start, /node --import tsx server\/main\.ts$/);
    const ignore = readFileSync(join(DEPLOY, "Dockerfile.dockerignore"), "utf8").split("\n").filter((l) => l.trim() && !l.startsWith("#"));
    const included = ignore.filter((l) => l.startsWith("!")).map((l) => l.slice(1));
    for (const l of lines.filter((l) => /^COPY /.test(l) && !/--from=/.test(l))) {
      const sources = l.replace(/^COPY\s+(--\S+\s+)*/, "").trim().split(/\s+/).slice(0, -1);
      for (const src of sources) {
        assert.ok(existsSync(src), `COPY source ${src} exists`);
        assert.ok(included.includes(src), `COPY source ${src} is re-included by Dockerfile.dockerignore`);
      }
    }
  });
});
