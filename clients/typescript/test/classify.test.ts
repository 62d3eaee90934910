// The failure classifier: what callWithFallback reports and whether it tries another model.
import { test } from "node:test";
import assert from "node:assert/strict";
import { classifyError, DEFAULT_RULES, Outcome, type ClassifierRule } from "../src/index.ts";
import { ProviderError } from "./helpers.ts";

test("HTTP 429 is RATE_LIMITED, retried elsewhere, with the Retry-After header", () => {
  assert.deepEqual(classifyError(new ProviderError(429, "Too Many Requests", { "Retry-After": "30" })), {
    outcome: Outcome.RATE_LIMITED,
    retryable: true,
    retryAfterMs: 30_000,
  });
});

test("quota and resource-exhausted messages are QUOTA_EXCEEDED, with the retry delay from the text", () => {
  const gemini = new ProviderError(429, "RESOURCE_EXHAUSTED: Quota exceeded for metric generate_content. Please retry in 12.5s.");
  assert.deepEqual(classifyError(gemini), { outcome: Outcome.QUOTA_EXCEEDED, retryable: true, retryAfterMs: 12_500 });
  assert.equal(classifyError(new Error("You exceeded your current quota (insufficient_quota)")).outcome, Outcome.QUOTA_EXCEEDED);
  assert.equal(classifyError(new Error("Rate limit reached for gpt-4o-mini")).outcome, Outcome.RATE_LIMITED);
});

test("SDK errors carrying the status on response.status and fetch Headers are understood", () => {
  const err = Object.assign(new Error("boom"), { response: { status: 429, headers: new Headers({ "retry-after": "2" }) } });
  assert.deepEqual(classifyError(err), { outcome: Outcome.RATE_LIMITED, retryable: true, retryAfterMs: 2000 });
});

test("timeouts, 5xx and unknown errors are retried; invalid requests and content filters are not", () => {
  const cases: [unknown, Outcome, boolean][] = [
    [Object.assign(new Error("This operation was aborted"), { name: "AbortError" }), Outcome.TIMEOUT, true],
    [Object.assign(new Error("connect"), { code: "ETIMEDOUT" }), Outcome.TIMEOUT, true],
    [new ProviderError(504, "Gateway Timeout"), Outcome.TIMEOUT, true],
    [new ProviderError(500, "Internal Server Error"), Outcome.SERVER_ERROR, true],
    [new ProviderError(529, "Overloaded"), Outcome.SERVER_ERROR, true],
    [new ProviderError(400, "Invalid request: messages must not be empty"), Outcome.INVALID_REQUEST, false],
    [new ProviderError(400, "The response was filtered due to the prompt triggering content_filter"), Outcome.CONTENT_FILTERED, false],
    [new Error("something odd"), Outcome.OTHER, true],
    ["a thrown string", Outcome.OTHER, true],
  ];
  for (const [err, outcome, retryable] of cases) {
    const c = classifyError(err);
    assert.equal(c.outcome, outcome, String(err));
    assert.equal(c.retryable, retryable, String(err));
  }
});

test("the table is extensible: a caller's rule in front of the defaults wins", () => {
  const overloaded: ClassifierRule = (f) =>
    f.text.includes("model is overloaded") ? { outcome: Outcome.RATE_LIMITED, retryable: true, providerWide: true } : undefined;
  const rules = [overloaded, ...DEFAULT_RULES];
  assert.deepEqual(classifyError(new ProviderError(503, "The model is overloaded"), rules), {
    outcome: Outcome.RATE_LIMITED,
    retryable: true,
    providerWide: true,
  });
  assert.equal(classifyError(new ProviderError(503, "down"), rules).outcome, Outcome.SERVER_ERROR);
});
