// The browser / edge-runtime path: @connectrpc/connect-web's Connect transport (fetch, JSON or
// binary) against the HTTP listener, with the client's generated ModelRouterService.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { ModelRouterService, Outcome, Reason } from "../src/index.ts";
import { ReportStatus } from "../src/gen/modelroute/v1/router_pb.ts";
import { startServer, type TestServer } from "./server.ts";

let server: TestServer;

before(async () => {
  server = await startServer({ http: true });
});

after(async () => {
  await server?.stop();
});

for (const useBinaryFormat of [false, true]) {
  test(`resolve and report over Connect (${useBinaryFormat ? "binary" : "JSON"})`, async () => {
    const transport = createConnectTransport({ baseUrl: server.httpUrl, useBinaryFormat });
    const router = createClient(ModelRouterService, transport);
    const decision = await router.resolveModel({ context: "rag.answer", user: { id: "web-1", tier: "free" } });
    assert.equal(decision.modelId, "gemini-3-flash-preview");
    assert.equal(decision.reason, Reason.CONTEXT_DEFAULT);
    assert.deepEqual(decision.fallbackModelIds, ["gpt-4o-mini"]);
    const reply = await router.reportUsage({
      reports: [
        {
          reportId: `web-${useBinaryFormat}`,
          decisionId: decision.decisionId,
          context: "rag.answer",
          modelId: decision.modelId,
          inputTokens: 10n,
          outputTokens: 2n,
          outcome: Outcome.OK,
        },
      ],
    });
    assert.equal(reply.results[0]?.status, ReportStatus.ACCEPTED);
    const models = await router.listModels({ tier: "free" });
    assert.ok(models.models.some((m) => m.modelId === "gpt-4o-mini"));
  });
}

test("a bad request is INVALID_ARGUMENT with the field violation, as over gRPC", async () => {
  const router = createClient(ModelRouterService, createConnectTransport({ baseUrl: server.httpUrl }));
  await assert.rejects(router.resolveModel({ context: "not a context" }), (err: unknown) => {
    const error = ConnectError.from(err);
    assert.equal(error.code, Code.InvalidArgument);
    assert.match(error.rawMessage, /context/);
    assert.ok(error.details.some((d) => "type" in d && d.type === "google.rpc.BadRequest"));
    return true;
  });
});

test("WatchConfig streams revisions over Connect", async () => {
  const router = createClient(ModelRouterService, createConnectTransport({ baseUrl: server.httpUrl }));
  const abort = new AbortController();
  const stream = router.watchConfig({}, { signal: abort.signal });
  const iterator = stream[Symbol.asyncIterator]();
  const first = await iterator.next();
  assert.ok(!first.done && first.value.configRevision > 0n);
  await server.etcdPut("/modelroute/overrides/reranker", JSON.stringify({ model: "gpt-4o" }));
  const second = await iterator.next();
  assert.ok(!second.done && second.value.configRevision > first.value.configRevision);
  abort.abort();
});
