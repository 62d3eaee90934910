// The native OpenFeature provider (src/openfeature.ts) with @openfeature/server-sdk against a
// live server: answers equal ResolveModel, a new revision emits ConfigurationChanged, track()
// is a usage report.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { OpenFeature, ProviderEvents, ErrorCode, type Client } from "@openfeature/server-sdk";
import { ModelRouterClient } from "../src/index.ts";
import { ModelrouteProvider } from "../src/openfeature.ts";
import { startServer, eventually, type TestServer } from "./server.ts";

let server: TestServer;
let provider: ModelrouteProvider;
let flags: Client;
let direct: ModelRouterClient;

before(async () => {
  server = await startServer();
  // Long deadlines: under load the client's fail-safe would answer from its last-known cache.
  provider = new ModelrouteProvider({ baseUrl: server.baseUrl, logger: { warn() {} }, resolveTimeoutMs: 30_000 });
  direct = new ModelRouterClient({ baseUrl: server.baseUrl, logger: { warn() {} }, resolveTimeoutMs: 30_000 });
  await OpenFeature.setProviderAndWait("native", provider);
  flags = OpenFeature.getClient("native");
});

after(async () => {
  await OpenFeature.close();
  await direct?.close();
  await server?.stop();
});

test("string evaluation equals ResolveModel", async () => {
  for (let i = 0; i < 50; i++) {
    const details = await flags.getStringDetails("premium.answer", "caller-default", { targetingKey: `u${i}`, tier: "premium" });
    const expected = await direct.resolve("premium.answer", { user: { id: `u${i}`, tier: "premium" }, noCache: true });
    assert.equal(expected.source, "server");
    assert.equal(details.flagMetadata["source"], "server");
    assert.equal(details.value, expected.modelId);
    assert.equal(details.variant, "CONTEXT_DEFAULT");
    assert.equal(details.reason, "STATIC");
    assert.equal(details.flagMetadata["fallbacks"], expected.fallbackModelIds.join(","));
  }
  const unknown = await flags.getStringDetails("no.such.context", "x", { targetingKey: "u" });
  assert.equal(unknown.reason, "DEFAULT");
  const bad = await flags.getStringDetails("rag.answer", "caller-default", { targetingKey: "u", tier: "not a tier" });
  assert.equal(bad.value, "caller-default");
  assert.equal(bad.errorCode, ErrorCode.INVALID_CONTEXT);
  const wrongType = await flags.getBooleanDetails("rag.answer", false);
  assert.equal(wrongType.errorCode, ErrorCode.TYPE_MISMATCH);
});

test("a new configuration revision emits ConfigurationChanged", async () => {
  await eventually(() => assert.ok(provider.configRevision > 0n));
  const changes: string[] = [];
  flags.addHandler(ProviderEvents.ConfigurationChanged, (details) => changes.push(String(details?.metadata?.["configRevision"])));
  await server.etcdPut("/modelroute/overrides/reranker", JSON.stringify({ model: "gpt-4o" }));
  await eventually(() => assert.ok(changes.length > 0, "no ConfigurationChanged yet"));
  assert.ok(BigInt(changes.at(-1)!) > 0n);
  const after = await flags.getStringDetails("reranker", "x", { targetingKey: "u1" });
  assert.equal(after.value, "gpt-4o");
  assert.equal(after.variant, "OPERATOR_OVERRIDE");
});

test("track() is a usage report linked to the decision", async () => {
  const details = await flags.getStringDetails("rag.answer", "x", { targetingKey: "tracked-user", tier: "free" });
  flags.track("rag.answer", { targetingKey: "tracked-user", tier: "free" }, {
    value: 640,
    modelId: details.value,
    decisionId: String(details.flagMetadata["decisionId"]),
    inputTokens: 812,
    outputTokens: 95,
    outcome: "OK",
  });
  await provider.client.flush();
  const rows = await eventually(async () => {
    const found = await server.sqlite("SELECT model_id, latency_ms, input_tokens, output_tokens, user_id, decision_id FROM llm_usage_logs WHERE user_id = 'tracked-user'");
    assert.equal(found.length, 1);
    return found;
  });
  assert.deepEqual(rows[0], [details.value, 640, 812, 95, "tracked-user", details.flagMetadata["decisionId"]]);
});
