// modelroute down must never make an LLM call fail: last-known answer, else the static default.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ModelRouterClient, ModelRouteUnavailableError } from "../src/index.ts";
import { startServer, eventually } from "./server.ts";
import { CapturingLogger, deadPort } from "./helpers.ts";

test("server unreachable: the static default is used, with a warning, and the LLM call still succeeds", async () => {
  const logger = new CapturingLogger();
  const client = new ModelRouterClient({
    baseUrl: `http://127.0.0.1:${await deadPort()}`,
    defaultModel: "gpt-4o-mini",
    defaultFallbacks: ["gemini-3-flash-preview"],
    logger,
  });
  try {
    const r = await client.resolve("rag.answer", { user: "user-11" });
    assert.equal(r.modelId, "gpt-4o-mini");
    assert.deepEqual(r.fallbackModelIds, ["gemini-3-flash-preview"]);
    assert.equal(r.source, "static-default");
    assert.equal(r.decisionId, "");
    assert.equal(logger.warnings.length, 1);
    assert.match(logger.warnings[0]!, /modelroute unreachable.*static-default answer gpt-4o-mini for context "rag\.answer"/);

    const result = await client.callWithFallback("rag.answer", async (model) => `ok from ${model}`, { user: "user-11" });
    assert.equal(result.value, "ok from gpt-4o-mini");
    assert.equal(logger.warnings.length, 1, "the warning is rate-limited, not repeated on every call");
    assert.equal(client.pendingReports, 1, "the report waits for the server instead of failing the call");
  } finally {
    const started = Date.now();
    await client.close(500);
    assert.ok(Date.now() - started < 3000, "close() is bounded even when the server is down");
  }
});

test("server goes away: the last known answer keeps being served", async () => {
  const server = await startServer();
  const logger = new CapturingLogger();
  const client = new ModelRouterClient({ baseUrl: server.baseUrl, defaultModel: "claude-3-sonnet", logger });
  try {
    const live = await eventually(() => client.resolve("reranker", { user: "user-12", noCache: true }));
    assert.equal(live.modelId, "gpt-4o-mini");
    await server.stop();

    const r = await client.resolve("reranker", { user: "user-12", noCache: true });
    assert.equal(r.source, "last-known");
    assert.equal(r.modelId, "gpt-4o-mini", "not the static default: the server's last answer wins");
    assert.deepEqual(r.fallbackModelIds, live.fallbackModelIds);
    // Another user of the same context gets the context's last answer too.
    assert.equal((await client.resolve("reranker", { user: "user-13" })).modelId, "gpt-4o-mini");
    assert.ok(logger.warnings.some((w) => /modelroute unreachable.*last-known answer gpt-4o-mini/.test(w)));
    // A context never seen falls back to the static default.
    assert.equal((await client.resolve("template_gates")).modelId, "claude-3-sonnet");
  } finally {
    await client.close(500);
    await server.stop();
  }
});

test("server unreachable with nothing known and no default: a clear error", async () => {
  const client = new ModelRouterClient({ baseUrl: `http://127.0.0.1:${await deadPort()}`, logger: new CapturingLogger() });
  try {
    await assert.rejects(client.resolve("rag.answer"), (err: unknown) => {
      assert.ok(err instanceof ModelRouteUnavailableError);
      assert.match(err.message, /no last-known answer or defaultModel/);
      return true;
    });
  } finally {
    await client.close(100);
  }
});
