// The `speculative` request field, COLM_SPECULATIVE's modes, the speculation metrics and the router
// view, over a real HTTP server and a real WebSocket client.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { WsClient, metricValue, scrape, serveTestModel, type RunningApp } from "./helpers/server-fixture.ts";

let running: RunningApp;
serveTestModel(21, { router: { speculative: "off" } }, (s) => (running = s.running));

async function complete(body: Record<string, unknown>): Promise<{ status: number; json: any }> {
  const res = await fetch(`${running.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "tiny", prompt: "In the beginning", max_tokens: 24, temperature: 0, ...body }) });
  return { status: res.status, json: await res.json() };
}

describe("speculative decoding over the API", () => {
  test("a request that asks speculates (metrics count its drafts) and gets the same text as one that does not", async () => {
    const before = await scrape(running.url);
    const drafted0 = metricValue(before, "colm_spec_decode_draft_tokens_total", { draft_chains: "1", chains: "4" });
    const plain = await complete({ speculative: false });
    const spec = await complete({ speculative: { draft_chains: 1, max_draft: 4 } });
    const defaults = await complete({ speculative: true });
    assert.equal(plain.status, 200);
    assert.equal(spec.json.choices[0].text, plain.json.choices[0].text);
    assert.equal(defaults.json.choices[0].text, plain.json.choices[0].text);
    const after = await scrape(running.url);
    const drafted = metricValue(after, "colm_spec_decode_draft_tokens_total", { draft_chains: "1", chains: "4" }) - drafted0;
    const accepted = metricValue(after, "colm_spec_decode_accepted_tokens_total", { draft_chains: "1", chains: "4" });
    assert.ok(drafted >= 8, `drafts counted (${drafted})`);
    assert.ok(accepted >= 0 && accepted <= drafted + drafted0);
    const rate = metricValue(after, "colm_spec_decode_acceptance_rate", { draft_chains: "1", chains: "4", sampling: "greedy" });
    assert.ok(rate > 0 && rate < 1, `acceptance gauge ${rate}`);
  });

  test("the server's mode is off here: a request that does not ask never drafts", async () => {
    const before = await scrape(running.url);
    const sum = (s: typeof before) => s.filter((x) => x.name === "colm_spec_decode_draft_tokens_total").reduce((a, x) => a + x.value, 0);
    await complete({});
    assert.equal(sum(await scrape(running.url)), sum(before));
  });

  test("GET /v1/router shows the mode and the learnt acceptance per (draft, target) pair", async () => {
    const view = await (await fetch(`${running.url}/v1/router`)).json();
    assert.equal(view.speculation.mode, "off");
    assert.ok(view.speculation.max_draft >= 1);
    const pair = view.speculation.pairs.find((p: any) => p.draft_chains === 1 && p.chains === 4 && p.sampling === "greedy");
    assert.ok(pair && pair.acceptance > 0 && pair.acceptance < 1, JSON.stringify(view.speculation));
  });

  test("bad values are a 400 naming the field, and the server keeps serving", async () => {
    const cases: Array<[unknown, string]> = [
      [{ draft_chains: 4 }, "speculative.draft_chains"],
      [{ draft_chains: 0 }, "speculative.draft_chains"],
      [{ max_draft: 17 }, "speculative.max_draft"],
      [{ max_draft: 1.5 }, "speculative.max_draft"],
      [{ gamma: 3 }, "speculative.gamma"],
      ["yes", "speculative"],
    ];
    for (const [speculative, param] of cases) {
      const r = await complete({ speculative });
      assert.equal(r.status, 400, JSON.stringify(speculative));
      assert.equal(r.json.error.param, param, JSON.stringify(r.json));
      assert.equal(r.json.error.type, "invalid_request_error");
    }
    assert.equal((await complete({ speculative: { max_draft: 3 } })).status, 200);
  });

  test("chat and WebSocket carry the field too; a WS switch applies at the next verify", async () => {
    const chat = await fetch(`${running.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", messages: [{ role: "user", content: "Hello" }], max_tokens: 12, temperature: 0, speculative: { max_draft: 3 } }),
    });
    assert.equal(chat.status, 200);
    const ws = await WsClient.open(running.wsUrl);
    try {
      ws.send({ type: "generate", id: "s1", model: "tiny", prompt: "And God said", max_tokens: 40, temperature: 0, speculative: { max_draft: 4 } });
      await ws.waitFor((m) => m.type === "token" && m.id === "s1" && m.index >= 2);
      ws.send({ type: "switch", id: "s1", chains: 2 });
      const done = await ws.waitFor((m) => m.type === "done" && m.id === "s1");
      const tokens = ws.received.filter((m) => m.type === "token" && m.id === "s1");
      assert.equal(tokens.length, 40, JSON.stringify(done));
      assert.equal(tokens[tokens.length - 1].chains, 2, "the switch took effect");
      const first2 = tokens.findIndex((t: any) => t.chains === 2);
      assert.ok(tokens.slice(first2).every((t: any) => t.chains === 2), "and held");
    } finally {
      ws.ws.close();
    }
  });
});
