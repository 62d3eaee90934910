// resolve and report against a real server (embedded etcd + SQLite).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ModelRouterClient } from "../src/index.ts";
import { startServer, eventually, type TestServer } from "./server.ts";
import { CapturingLogger } from "./helpers.ts";

let server: TestServer;
let client: ModelRouterClient;
const logger = new CapturingLogger();

before(async () => {
  server = await startServer();
  client = new ModelRouterClient({ baseUrl: server.baseUrl, logger });
  await eventually(() => client.resolve("rag.answer", { noCache: true }));
});

after(async () => {
  await client?.close();
  await server?.stop();
});

test("resolve returns the seeded model, its fallbacks and why", async () => {
  const r = await client.resolve("rag.answer", { user: { id: "user-1", tier: "free" }, noCache: true });
  assert.equal(r.modelId, "gemini-3-flash-preview");
  assert.equal(r.provider, "google");
  assert.deepEqual(r.fallbackModelIds, ["gpt-4o-mini"]);
  assert.equal(r.reason, "CONTEXT_DEFAULT");
  assert.equal(r.source, "server");
  assert.ok(r.decisionId.length > 0, "a decision id to report with");
  assert.ok(r.configRevision > 0);
  assert.equal(r.fallback, undefined);
  assert.equal(r.cacheTtlMs, 5000, "bootstrap's decision_cache_seconds");
});

test("a context the server does not know gets the global default with a warning", async () => {
  const r = await client.resolve("no.such.context", { noCache: true });
  assert.equal(r.modelId, "gemini-3-flash-preview");
  assert.equal(r.reason, "GLOBAL_DEFAULT");
  assert.ok(r.warnings.length > 0);
});

test("excludeModels makes the server skip a model", async () => {
  const r = await client.resolve("rag.answer", { user: "user-2", excludeModels: ["gemini-3-flash-preview"] });
  assert.equal(r.modelId, "gpt-4o-mini");
  assert.deepEqual(r.fallback, { fromModelId: "gemini-3-flash-preview", cause: "EXCLUDED_BY_CALLER" });
});

test("a repeated resolve within the server's cache_ttl is answered from the local cache", async () => {
  const first = await client.resolve("premium.answer", { user: "user-3", tier: "premium" });
  const second = await client.resolve("premium.answer", { user: "user-3", tier: "premium" });
  assert.equal(first.source, "server");
  assert.equal(second.source, "cache");
  assert.equal(second.decisionId, first.decisionId);
  assert.equal(second.modelId, "gemini-3-pro-preview");
  const otherUser = await client.resolve("premium.answer", { user: "user-4", tier: "premium" });
  assert.equal(otherUser.source, "server", "the cache key includes the user");
});

test("an etcd change drops cached decisions at once (WatchConfig), long before their TTL", async () => {
  const first = await client.resolve("reranker", { user: "user-9" });
  assert.equal(first.modelId, "gpt-4o-mini");
  assert.equal((await client.resolve("reranker", { user: "user-9" })).source, "cache");
  const started = Date.now();
  await server.etcdPut("/modelroute/contexts/reranker", JSON.stringify({ model: "gpt-4o", fallbacks: ["gpt-4o-mini"] }));
  const changed = await eventually(async () => {
    const r = await client.resolve("reranker", { user: "user-9" });
    assert.equal(r.modelId, "gpt-4o");
    return r;
  }, 5_000, 10);
  assert.equal(changed.source, "server");
  assert.ok(Date.now() - started < first.cacheTtlMs / 2, `took ${Date.now() - started} ms`);
});

test("a report lands in llm_usage_logs with the decision, tokens, outcome and a computed cost", async () => {
  const r = await client.resolve("rag.answer", { user: { id: "user-5", tier: "free" }, noCache: true });
  const reportId = client.report({
    context: "rag.answer",
    modelId: r.modelId,
    decisionId: r.decisionId,
    user: { id: "user-5", tier: "free" },
    inputTokens: 1_000_000,
    outputTokens: 1000,
    latencyMs: 420,
  });
  assert.equal(client.pendingReports, 1, "queued, not sent on the caller's path");
  await client.flush();
  assert.equal(client.pendingReports, 0);
  const rows = await server.sqlite(
    `select model_id, outcome, decision_id, input_tokens, output_tokens, latency_ms, user_id, tier, estimated_cost from llm_usage_logs where report_id = '${reportId}'`,
  );
  assert.equal(rows.length, 1);
  const [model, outcome, decision, inTok, outTok, latency, userId, tier, cost] = rows[0]!;
  assert.deepEqual([model, outcome, decision, inTok, outTok, latency, userId, tier], ["gemini-3-flash-preview", "OK", r.decisionId, 1_000_000, 1000, 420, "user-5", "free"]);
  assert.ok(Math.abs((cost as number) - (0.5 + 3 * 0.001)) < 1e-9, `cost from the seeded prices, got ${cost}`);
});

test("reports are sent in the background without flush()", async () => {
  const reportId = client.report({ context: "reranker", modelId: "gpt-4o-mini", inputTokens: 5, outputTokens: 1, latencyMs: 10 });
  await eventually(async () => {
    const rows = await server.sqlite(`select outcome from llm_usage_logs where report_id = '${reportId}'`);
    assert.deepEqual(rows, [["OK"]]);
  });
});

test("re-sending a report id stores it once", async () => {
  const reportId = "ts-dup-1";
  client.report({ reportId, context: "reranker", modelId: "gpt-4o-mini", inputTokens: 1 });
  await client.flush();
  client.report({ reportId, context: "reranker", modelId: "gpt-4o-mini", inputTokens: 1 });
  await client.flush();
  const rows = await server.sqlite(`select count(*) from llm_usage_logs where report_id = '${reportId}'`);
  assert.deepEqual(rows, [[1]]);
  assert.deepEqual(logger.warnings, [], "no warnings while the server is up");
});
