// OFREP with the official OpenFeature JS server SDK and its OFREP provider, against a live
// server: string flags equal ResolveModel (model and variant) for 1,000 users; errors reach
// the caller as its default value with the right error code.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { OpenFeature, ErrorCode, type Client } from "@openfeature/server-sdk";
import { OFREPProvider } from "@openfeature/ofrep-provider";
import { ModelRouterClient } from "../src/index.ts";
import { startServer, eventually, type TestServer } from "./server.ts";

let server: TestServer;
let router: ModelRouterClient;
let flags: Client;
const PREFIX = "/modelroute/";

before(async () => {
  server = await startServer({ http: true });
  router = new ModelRouterClient({ baseUrl: server.baseUrl, logger: { warn() {} } });
  // No provider limits: 2,000 decisions must not walk into quota fallbacks.
  for (const provider of ["google", "openai"]) {
    await server.etcdPut(`${PREFIX}providers/${provider}`, JSON.stringify({ requests_per_minute: 0, cooldown_seconds: 60 }));
  }
  await server.etcdPut(
    `${PREFIX}experiments/rag-js`,
    JSON.stringify({
      context: "rag.answer",
      variants: [
        { id: "control", model: "gemini-3-flash-preview", weight: 50 },
        { id: "mini", model: "gpt-4o-mini", weight: 50 },
      ],
      bucket_by: "USER",
      enabled: true,
    }),
  );
  await eventually(async () => {
    const r = await router.resolve("rag.answer", { user: "probe", noCache: true });
    assert.equal(r.experimentId, "rag-js");
  });
  await OpenFeature.setProviderAndWait("ofrep", new OFREPProvider({ baseUrl: server.httpUrl }));
  flags = OpenFeature.getClient("ofrep");
});

after(async () => {
  await OpenFeature.close();
  await router?.close();
  await server?.stop();
});

test("string evaluation equals ResolveModel's model and variant for 1,000 users", async () => {
  const variants = new Set<string>();
  const check = async (i: number) => {
    const user = `user-${i}`;
    const tier = i % 2 ? "premium" : "free";
    const details = await flags.getStringDetails("rag.answer", "caller-default", { targetingKey: user, tier });
    // A long deadline: under load the client's fail-safe would answer another user's model.
    const expected = await router.resolve("rag.answer", { user: { id: user, tier }, noCache: true, timeoutMs: 30_000 });
    assert.equal(expected.source, "server");
    assert.equal(details.errorCode, undefined, details.errorMessage);
    assert.equal(details.value, expected.modelId, user);
    assert.equal(details.variant, expected.variantId, user);
    assert.equal(details.reason, "SPLIT");
    assert.equal(details.flagMetadata["experimentId"], "rag-js");
    assert.equal(details.flagMetadata["fallbacks"], expected.fallbackModelIds.join(","));
    assert.match(String(details.flagMetadata["decisionId"]), /^d1\./);
    variants.add(details.variant!);
  };
  for (let start = 0; start < 1000; start += 20) {
    await Promise.all(Array.from({ length: 20 }, (_, k) => check(start + k)));
  }
  assert.deepEqual([...variants].sort(), ["control", "mini"]);
});

test("an unknown context is the default model with reason DEFAULT", async () => {
  const details = await flags.getStringDetails("no.such.context", "caller-default", { targetingKey: "u" });
  assert.equal(details.value, "gemini-3-flash-preview");
  assert.equal(details.reason, "DEFAULT");
  assert.equal(details.variant, "GLOBAL_DEFAULT");
});

test("errors come back as the caller's default with the right error code", async () => {
  const cases: [string, Record<string, unknown>, ErrorCode][] = [
    ["rag.answer", { targetingKey: "u", tier: "not a tier" }, ErrorCode.INVALID_CONTEXT],
    ["rag.answer", { targetingKey: "u", nested: { a: 1 } }, ErrorCode.INVALID_CONTEXT],
    ["not a context!", { targetingKey: "u" }, ErrorCode.FLAG_NOT_FOUND],
  ];
  for (const [key, context, code] of cases) {
    const details = await flags.getStringDetails(key, "caller-default", context as never);
    assert.equal(details.value, "caller-default", key);
    assert.equal(details.errorCode, code, `${key}: ${details.errorMessage}`);
    assert.equal(details.reason, "ERROR");
  }
  // A wrong API key once keys are configured: 401 → GENERAL, the default value.
  await server.etcdPut(
    `${PREFIX}clients/js-app`,
    JSON.stringify({ key_sha256: "2c70e12b7a0646f92279f427c7b38e7334d8e5389cff167a1dc30e73f826b683" }), // sha256("key")
  );
  await OpenFeature.setProviderAndWait(
    "wrong-key",
    new OFREPProvider({ baseUrl: server.httpUrl, headers: [["X-API-Key", "guessed"]] }),
  );
  const wrong = OpenFeature.getClient("wrong-key");
  await eventually(async () => {
    const details = await wrong.getStringDetails("rag.answer", "caller-default", { targetingKey: "u" });
    assert.equal(details.value, "caller-default");
    assert.equal(details.errorCode, ErrorCode.GENERAL);
  });
  await OpenFeature.setProviderAndWait(
    "right-key",
    new OFREPProvider({ baseUrl: server.httpUrl, headers: [["Authorization", "Bearer key"]] }),
  );
  const right = await OpenFeature.getClient("right-key").getStringDetails("reranker", "caller-default", { targetingKey: "u" });
  assert.equal(right.value, "gpt-4o-mini", right.errorMessage);
});
