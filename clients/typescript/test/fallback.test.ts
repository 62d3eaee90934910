// callWithFallback against a real server: every attempt reported, cooldowns, one clear error.
import { afterEach, beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import { AllModelsFailedError, ModelRouterClient } from "../src/index.ts";
import { startServer, eventually, type TestServer } from "./server.ts";
import { CapturingLogger, ProviderError } from "./helpers.ts";

// A fresh server per test: cooldowns are server state and must not leak between tests.
let server: TestServer;
let client: ModelRouterClient;

beforeEach(async () => {
  server = await startServer();
  client = new ModelRouterClient({ baseUrl: server.baseUrl, logger: new CapturingLogger() });
  await eventually(() => client.resolve("rag.answer", { noCache: true }));
});

afterEach(async () => {
  await client?.close();
  await server?.stop();
});

test("a 429 moves to the fallback, and the server then cools the model down for everyone", async () => {
  const called: string[] = [];
  const result = await client.callWithFallback(
    "rag.answer",
    async (modelId) => {
      called.push(modelId);
      if (modelId === "gemini-3-flash-preview") {
        throw new ProviderError(429, "Too Many Requests", { "retry-after": "120" });
      }
      return `answer from ${modelId}`;
    },
    { user: { id: "user-7", tier: "free" }, usage: () => ({ inputTokens: 12, outputTokens: 34 }) },
  );
  assert.deepEqual(called, ["gemini-3-flash-preview", "gpt-4o-mini"]);
  assert.equal(result.value, "answer from gpt-4o-mini");
  assert.equal(result.modelId, "gpt-4o-mini");
  assert.deepEqual(result.attempts.map((a) => [a.modelId, a.outcome]), [["gemini-3-flash-preview", "RATE_LIMITED"], ["gpt-4o-mini", "OK"]]);
  assert.equal(result.attempts[0]!.retryAfterMs, 120_000);

  // A different user (no client cache involved) now gets the fallback: the server saw the 429.
  const other = new ModelRouterClient({ baseUrl: server.baseUrl });
  try {
    const r = await eventually(async () => {
      const r = await other.resolve("rag.answer", { user: "someone-else", noCache: true });
      assert.equal(r.modelId, "gpt-4o-mini");
      return r;
    });
    assert.deepEqual(r.fallback, { fromModelId: "gemini-3-flash-preview", cause: "COOLDOWN" });
  } finally {
    await other.close();
  }

  // And the calling client's own next resolve does not serve the failing model from its cache.
  assert.equal((await client.resolve("rag.answer", { user: { id: "user-7", tier: "free" } })).modelId, "gpt-4o-mini");

  await client.flush();
  const rows = await server.sqlite(
    `select model_id, outcome, retry_after_ms, decision_id, input_tokens, output_tokens from llm_usage_logs where user_id = 'user-7' order by id`,
  );
  assert.equal(rows.length, 2, "both attempts reported");
  assert.deepEqual(rows.map((r) => r.slice(0, 3)), [["gemini-3-flash-preview", "RATE_LIMITED", 120_000], ["gpt-4o-mini", "OK", null]]);
  assert.equal(rows[0]![3], result.resolution.decisionId);
  assert.deepEqual(rows[1]!.slice(4), [12, 34]);
});

test("when every model fails, one AllModelsFailedError lists the attempts, all reported", async () => {
  const called: string[] = [];
  await assert.rejects(
    client.callWithFallback(
      "rag.answer",
      async (modelId) => {
        called.push(modelId);
        throw new ProviderError(503, `upstream ${modelId} unavailable`);
      },
      { user: "user-8" },
    ),
    (err: unknown) => {
      assert.ok(err instanceof AllModelsFailedError);
      assert.deepEqual(err.attempts.map((a) => [a.modelId, a.outcome]), [["gemini-3-flash-preview", "SERVER_ERROR"], ["gpt-4o-mini", "SERVER_ERROR"]]);
      assert.match(err.message, /all models failed for context "rag\.answer" after 2 attempt/);
      assert.match(err.message, /gemini-3-flash-preview → SERVER_ERROR \(upstream gemini-3-flash-preview unavailable\)/);
      assert.match(err.message, /gpt-4o-mini → SERVER_ERROR/);
      return true;
    },
  );
  assert.deepEqual(called, ["gemini-3-flash-preview", "gpt-4o-mini"], "each model tried once, re-resolve found nothing new");
  await client.flush();
  const rows = await server.sqlite(`select model_id, outcome from llm_usage_logs where user_id = 'user-8' order by id`);
  assert.deepEqual(rows, [["gemini-3-flash-preview", "SERVER_ERROR"], ["gpt-4o-mini", "SERVER_ERROR"]]);
});

test("a longer chain is walked in order until a model answers", async () => {
  const called: string[] = [];
  const result = await client.callWithFallback(
    "premium.answer",
    async (modelId) => {
      called.push(modelId);
      if (modelId !== "claude-3-sonnet") throw Object.assign(new Error("request timed out"), { name: "TimeoutError" });
      return 42;
    },
    { user: { id: "user-9", tier: "premium" } },
  );
  assert.equal(result.value, 42);
  assert.deepEqual(called, ["gemini-3-pro-preview", "gpt-4o", "claude-3-sonnet"]);
  assert.deepEqual(result.attempts.map((a) => a.outcome), ["TIMEOUT", "TIMEOUT", "OK"]);
});

test("an invalid request is not retried on another model, and is still reported", async () => {
  const called: string[] = [];
  const bad = new ProviderError(400, "invalid request: max_tokens too large");
  await assert.rejects(
    client.callWithFallback("rag.answer", async (m) => {
      called.push(m);
      throw bad;
    }, { user: "user-10" }),
    (err) => err === bad,
  );
  assert.deepEqual(called, ["gemini-3-flash-preview"]);
  await client.flush();
  const rows = await server.sqlite(`select model_id, outcome, error_message from llm_usage_logs where user_id = 'user-10'`);
  assert.deepEqual(rows, [["gemini-3-flash-preview", "INVALID_REQUEST", "invalid request: max_tokens too large"]]);
});
