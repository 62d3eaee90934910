/**
 * The resolve → call → report loop, by hand and with callWithFallback.
 *
 *   modelroute serve --port 50051 &      # in another terminal
 *   MODELROUTE_URL=http://127.0.0.1:50051 npm run example
 *
 * `fakeLlm` stands in for your provider SDK (OpenAI, Gemini, Anthropic...): it answers, and
 * rate-limits one model so you can watch the fallback and the cooldown happen.
 */
import { ModelRouterClient, Outcome, classifyError } from "../src/index.ts";

async function fakeLlm(model: string, prompt: string): Promise<{ text: string; inputTokens: number; outputTokens: number }> {
  if (model === "gemini-3-flash-preview" && process.env["SIMULATE_429"]) {
    throw Object.assign(new Error("429 Too Many Requests"), { status: 429, headers: { "retry-after": "30" } });
  }
  return { text: `[${model}] answer to: ${prompt}`, inputTokens: prompt.length, outputTokens: 20 };
}

const router = new ModelRouterClient({
  baseUrl: process.env["MODELROUTE_URL"] ?? "http://127.0.0.1:50051",
  // Used only if modelroute is unreachable and this process never got an answer from it.
  defaultModel: "gpt-4o-mini",
});
const user = { id: "user-42", tier: "free" };

// 1. By hand: resolve, call, report (reports are batched in the background).
const decision = await router.resolve("rag.answer", { user });
console.log(`resolved ${decision.modelId} (${decision.reason}, from ${decision.source}); fallbacks: ${decision.fallbackModelIds.join(", ")}`);
const started = performance.now();
try {
  const out = await fakeLlm(decision.modelId, "What is modelroute?");
  router.report({
    context: "rag.answer",
    modelId: decision.modelId,
    decisionId: decision.decisionId,
    user,
    outcome: Outcome.OK,
    inputTokens: out.inputTokens,
    outputTokens: out.outputTokens,
    latencyMs: performance.now() - started,
  });
  console.log(out.text);
} catch (err) {
  const c = classifyError(err);
  router.report({ context: "rag.answer", modelId: decision.modelId, decisionId: decision.decisionId, user, outcome: c.outcome, errorMessage: String(err), latencyMs: performance.now() - started, ...(c.retryAfterMs ? { retryAfterMs: c.retryAfterMs } : {}) });
  console.log(`call failed: ${Outcome[c.outcome]}`);
}

// 2. The same loop with fallbacks, classification and reporting done for you.
const result = await router.callWithFallback("rag.answer", (model) => fakeLlm(model, "And with fallbacks?"), {
  user,
  usage: (out) => ({ inputTokens: out.inputTokens, outputTokens: out.outputTokens }),
});
console.log(result.value.text);
console.log("attempts:", result.attempts.map((a) => `${a.modelId}=${a.outcome}`).join(", "));

await router.close(); // sends the queued reports
