/**
 * @modelroute/client: ask modelroute which LLM model to call, call it with fallbacks, and
 * report what happened.
 *
 *   const router = new ModelRouterClient({ baseUrl: "http://127.0.0.1:50051", defaultModel: "gpt-4o-mini" });
 *   const { value, modelId } = await router.callWithFallback("rag.answer", (model) => llm(model, prompt), { user: "u-1" });
 *   await router.close();
 *
 * Design notes (the why):
 * - modelroute must never be the reason an LLM call fails: when it is unreachable, `resolve`
 *   answers the last answer it got for the same request (or context), else the configured
 *   static default, and warns (rate-limited) instead of throwing.
 * - Reports are queued and sent in batches in the background, so the LLM call path never
 *   waits on them; QUOTA_EXCEEDED / RATE_LIMITED reports are sent at once, because they are
 *   what makes every replica move traffic away from a failing model.
 * - Every report carries a client-chosen `report_id`, so re-sending a batch after a network
 *   error is safe (the server stores it once).
 */
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { DurationSchema, timestampFromDate, type Duration } from "@bufbuild/protobuf/wkt";
import {
  ModelRouterService,
  ReportStatus,
  UsageReportSchema,
  type ReportResult,
  type ResolveModelResponse,
  type UsageReport,
} from "./gen/modelroute/v1/router_pb.ts";
import { FallbackCause, Outcome, Reason, UserSchema } from "./gen/modelroute/v1/types_pb.ts";
import { classifyError, DEFAULT_RULES, type ClassifierRule } from "./classify.ts";
import { LruCache } from "./lru.ts";

export { Outcome, Reason, FallbackCause } from "./gen/modelroute/v1/types_pb.ts";
export { ModelRouterService } from "./gen/modelroute/v1/router_pb.ts";
export { classifyError, errorFacts, DEFAULT_RULES } from "./classify.ts";
export type { Classification, ClassifierRule, ErrorFacts } from "./classify.ts";
export { bucketOf, variantIndex, assignVariant, murmur3x86_32, BUCKETS } from "./bucketing.ts";

/** Outcome names as the proto spells them without the `OUTCOME_` prefix. */
export type OutcomeName = Exclude<keyof typeof Outcome, "UNSPECIFIED">;

/** Where an answer came from. */
export type ResolutionSource = "server" | "cache" | "last-known" | "static-default";

/** The end user a call is made for. */
export interface UserRef {
  id: string;
  tier?: string;
}

/** modelroute's decision for one call. */
export interface Resolution {
  /** The model to call. */
  modelId: string;
  /** The model's provider (empty for a static default). */
  provider: string;
  /** Models to try next, in order. */
  fallbackModelIds: string[];
  /** Which rule chose the model, e.g. `CONTEXT_DEFAULT`, `EXPERIMENT` (`UNSPECIFIED` for a static default). */
  reason: string;
  /** Pass back in reports; empty when the server did not make this decision (fail-safe answers). */
  decisionId: string;
  experimentId: string;
  variantId: string;
  /** etcd revision of the configuration used (0 for a static default). */
  configRevision: number;
  /** Notes from the server, plus a note when the answer is a fail-safe one. */
  warnings: string[];
  /** Set when the preferred model was skipped, e.g. `{ fromModelId: "gemini-3-flash-preview", cause: "COOLDOWN" }`. */
  fallback?: { fromModelId: string; cause: string };
  /** How long the server allows reusing this answer (0: not at all). */
  cacheTtlMs: number;
  /** Whether this came from the server, the cache, or the fail-safe path. */
  source: ResolutionSource;
}

/** Options of one `resolve` call. */
export interface ResolveOptions {
  /** The end user: an id, or `{ id, tier }`. */
  user?: string | UserRef;
  /** The user's tier, e.g. `free` / `premium` (overrides `user.tier`). */
  tier?: string;
  /** Models just seen failing, which the server should skip. */
  excludeModels?: readonly string[];
  /** Free-form attributes (at most 32). */
  attributes?: Readonly<Record<string, string>>;
  /** Caller-chosen id, echoed into the decision's span. */
  requestId?: string;
  /** Skip the local cache (the answer is still stored for later calls). */
  noCache?: boolean;
  /** Deadline of the RPC (default: the client's `resolveTimeoutMs`). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** One usage report (one finished or failed LLM call). */
export interface UsageInput {
  context: string;
  modelId: string;
  /** How the call ended (default `OK`). */
  outcome?: Outcome | OutcomeName;
  /** The `decisionId` of the resolution the call followed. */
  decisionId?: string;
  user?: string | UserRef;
  tier?: string;
  inputTokens?: number;
  outputTokens?: number;
  latencyMs?: number;
  errorMessage?: string;
  /** The provider's retry-after; the server cools the model down for that long. */
  retryAfterMs?: number;
  /** The provider said its limit is provider-wide (cool down all its models). */
  providerWide?: boolean;
  /** Default: now. */
  occurredAt?: Date;
  /** Idempotency key (default: a random UUID). */
  reportId?: string;
}

/** Somewhere to send warnings; `console` by default. */
export interface Logger {
  warn(message: string): void;
}

export interface ModelRouterClientOptions {
  /** The server, e.g. `http://127.0.0.1:50051` (gRPC over plaintext HTTP/2). Default: env `MODELROUTE_URL` or that. */
  baseUrl?: string;
  /** Static fail-safe answer when the server is unreachable and nothing was learned yet. */
  defaultModel?: string;
  /** Fallbacks that go with `defaultModel`. */
  defaultFallbacks?: readonly string[];
  /** Deadline of ResolveModel, short so an outage costs little (default 1000 ms). */
  resolveTimeoutMs?: number;
  /** Deadline of ReportUsage (default 5000 ms). */
  reportTimeoutMs?: number;
  /** Entries of the decision cache (default 1000; 0 disables caching). */
  cacheSize?: number;
  /** Follow the server's WatchConfig stream and drop cached decisions on every new config
   * revision (default true; the stream opens at the first resolve and ends at close()). */
  watchConfig?: boolean;
  /** Background report flush period (default 1000 ms). */
  flushIntervalMs?: number;
  /** Reports per ReportUsage call (default 500, server maximum 1000). */
  reportBatchSize?: number;
  /** Queued reports kept while the server is unreachable; the oldest are dropped beyond (default 10000). */
  maxQueuedReports?: number;
  /** Minimum interval between two identical fail-safe warnings (default 30000 ms). */
  warnIntervalMs?: number;
  /** Classifier rules for `callWithFallback`, tried in order (default `DEFAULT_RULES`; extend with `[myRule, ...DEFAULT_RULES]`). */
  classifierRules?: readonly ClassifierRule[];
  logger?: Logger;
}

/** One try of one model inside `callWithFallback`. */
export interface Attempt {
  modelId: string;
  outcome: OutcomeName;
  retryable: boolean;
  latencyMs: number;
  /** The error message (empty on success). */
  message: string;
  retryAfterMs?: number;
  decisionId: string;
  error?: unknown;
}

/** What `callWithFallback` returns on success. */
export interface CallResult<T> {
  value: T;
  /** The model that answered. */
  modelId: string;
  /** The resolution that proposed that model. */
  resolution: Resolution;
  /** Every try, the successful one last. */
  attempts: Attempt[];
}

/** Information given to the `apiCall` of `callWithFallback`. */
export interface AttemptInfo {
  /** 1-based try number. */
  attempt: number;
  resolution: Resolution;
}

export interface CallOptions<T> extends ResolveOptions {
  /** Upper bound on model tries (default 5). */
  maxAttempts?: number;
  /** Upper bound on ResolveModel calls, the first included (default 3). */
  maxResolves?: number;
  /** Token counts of a successful result, for the OK report. */
  usage?: (value: T) => { inputTokens?: number; outputTokens?: number };
  /** Classifier rules for this call (default: the client's). */
  classifierRules?: readonly ClassifierRule[];
}

/** Thrown by `callWithFallback` when every model tried failed (or none was available). */
export class AllModelsFailedError extends Error {
  override readonly name = "AllModelsFailedError";
  constructor(
    readonly context: string,
    readonly attempts: readonly Attempt[],
    cause?: unknown,
  ) {
    const tried = attempts.length
      ? attempts.map((a) => `${a.modelId} → ${a.outcome}${a.message ? ` (${a.message})` : ""}`).join("; ")
      : "no model was available";
    super(`all models failed for context "${context}" after ${attempts.length} attempt(s): ${tried}`, { cause });
  }
}

/** Thrown by `resolve` when modelroute is unreachable and there is no last-known answer nor static default. */
export class ModelRouteUnavailableError extends Error {
  override readonly name = "ModelRouteUnavailableError";
}

const COOLDOWN_OUTCOMES = new Set<Outcome>([Outcome.RATE_LIMITED, Outcome.QUOTA_EXCEEDED]);

/**
 * gRPC codes meaning "modelroute could not answer" (as opposed to "it answered no"): these
 * switch `resolve` to its fail-safe answer. INVALID_ARGUMENT, RESOURCE_EXHAUSTED (no model
 * available), FAILED_PRECONDITION and auth errors are real answers and are thrown.
 */
const UNREACHABLE_CODES = new Set<Code>([
  Code.Unavailable,
  Code.DeadlineExceeded,
  Code.Unknown,
  Code.Internal,
  Code.Unimplemented,
  Code.Aborted,
  Code.Canceled,
]);

function durationMs(d: Duration | undefined): number {
  return d ? Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6) : 0;
}

function outcomeOf(o: Outcome | OutcomeName | undefined): Outcome {
  if (o === undefined) return Outcome.OK;
  return typeof o === "number" ? o : Outcome[o];
}

function outcomeName(o: Outcome): OutcomeName {
  return Outcome[o] as OutcomeName;
}

function userOf(user: string | UserRef | undefined, tier: string | undefined): UserRef | undefined {
  if (user === undefined && tier === undefined) return undefined;
  const u: UserRef = typeof user === "string" ? { id: user } : { ...(user ?? { id: "" }) };
  if (tier !== undefined) u.tier = tier;
  return u;
}

/** A gRPC client for ModelRouterService with caching, fail-safe answers, batched reports and fallbacks. */
export class ModelRouterClient {
  /** The raw generated client, for RPCs the wrapper does not cover (feedback, preferences, ...). */
  readonly rpc: Client<typeof ModelRouterService>;
  private readonly sessions: Http2SessionManager;
  private readonly opts: Required<Omit<ModelRouterClientOptions, "defaultModel">> & { defaultModel?: string };
  private readonly cache: LruCache<Resolution>;
  /** Last server answer per request key and per context, kept until evicted (fail-safe). */
  private readonly lastKnown: LruCache<Resolution>;
  private queue: UsageReport[] = [];
  private flushing: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly lastWarned = new Map<string, number>();
  private closed = false;
  private watching = false;
  private readonly watchAbort = new AbortController();

  constructor(options: ModelRouterClientOptions = {}) {
    const baseUrl = options.baseUrl ?? process.env["MODELROUTE_URL"] ?? "http://127.0.0.1:50051";
    this.opts = {
      baseUrl,
      defaultFallbacks: [],
      resolveTimeoutMs: 1000,
      reportTimeoutMs: 5000,
      cacheSize: 1000,
      watchConfig: true,
      flushIntervalMs: 1000,
      reportBatchSize: 500,
      maxQueuedReports: 10_000,
      warnIntervalMs: 30_000,
      classifierRules: DEFAULT_RULES,
      logger: console,
      ...options,
    };
    // Our own session manager, so close() can tear the HTTP/2 connection down.
    this.sessions = new Http2SessionManager(baseUrl);
    this.rpc = createClient(ModelRouterService, createGrpcTransport({ baseUrl, sessionManager: this.sessions }));
    this.cache = new LruCache(this.opts.cacheSize);
    this.lastKnown = new LruCache(Math.max(this.opts.cacheSize, 100));
    this.timer = setInterval(() => this.flushInBackground(), this.opts.flushIntervalMs);
    this.timer.unref(); // a pending flush must not keep a finished program alive
  }

  /** Which model to call for `context`. Never throws because modelroute is down (see class notes). */
  async resolve(context: string, options: ResolveOptions = {}): Promise<Resolution> {
    this.startWatch();
    const user = userOf(options.user, options.tier);
    const key = JSON.stringify([
      context,
      user?.id ?? "",
      user?.tier ?? "",
      [...(options.excludeModels ?? [])].sort(),
      Object.entries(options.attributes ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
      options.requestId ?? "",
    ]);
    if (!options.noCache) {
      const hit = this.cache.get(key);
      if (hit) return { ...hit, source: "cache" };
    }
    let resp: ResolveModelResponse;
    try {
      const call: { timeoutMs: number; signal?: AbortSignal } = { timeoutMs: options.timeoutMs ?? this.opts.resolveTimeoutMs };
      if (options.signal) call.signal = options.signal;
      resp = await this.rpc.resolveModel(
        {
          context,
          ...(user ? { user: { id: user.id, tier: user.tier ?? "" } } : {}),
          excludeModels: [...(options.excludeModels ?? [])],
          attributes: { ...(options.attributes ?? {}) },
          requestId: options.requestId ?? "",
        },
        call,
      );
    } catch (err) {
      const ce = ConnectError.from(err);
      if (options.signal?.aborted || !UNREACHABLE_CODES.has(ce.code)) throw ce;
      return this.failSafe(context, key, options.excludeModels ?? [], ce);
    }
    const r = toResolution(resp);
    this.cache.set(key, r, r.cacheTtlMs);
    this.lastKnown.set(key, r, Infinity);
    this.lastKnown.set(`context:${context}`, r, Infinity);
    return r;
  }

  /** The answer when the server cannot give one: last known, else the static default, else throw. */
  private failSafe(context: string, key: string, exclude: readonly string[], err: ConnectError): Resolution {
    const known = this.lastKnown.get(key) ?? this.lastKnown.get(`context:${context}`);
    let r: Resolution;
    if (known) {
      r = { ...known, decisionId: "", source: "last-known", cacheTtlMs: 0 };
    } else if (this.opts.defaultModel) {
      r = {
        modelId: this.opts.defaultModel,
        provider: "",
        fallbackModelIds: [...this.opts.defaultFallbacks],
        reason: Reason[Reason.UNSPECIFIED],
        decisionId: "",
        experimentId: "",
        variantId: "",
        configRevision: 0,
        warnings: [],
        cacheTtlMs: 0,
        source: "static-default",
      };
    } else {
      throw new ModelRouteUnavailableError(
        `modelroute unreachable (${err.message}) and no last-known answer or defaultModel for context "${context}"`,
        { cause: err },
      );
    }
    // Honour the caller's exclusions locally, as the server would have.
    const chain = [r.modelId, ...r.fallbackModelIds].filter((m) => !exclude.includes(m));
    if (chain.length > 0) [r.modelId, ...r.fallbackModelIds] = chain;
    const note = `modelroute unreachable (${err.code === Code.DeadlineExceeded ? "timeout" : err.rawMessage}); using the ${r.source} answer ${r.modelId} for context "${context}"`;
    r.warnings = [...r.warnings, note];
    this.warn(`failsafe:${context}`, note);
    return r;
  }

  /** Queues a usage report; it is sent in the background (`flush()` sends now). */
  report(input: UsageInput): string {
    const outcome = outcomeOf(input.outcome);
    const user = userOf(input.user, input.tier);
    const reportId = input.reportId ?? randomUUID();
    const msg = create(UsageReportSchema, {
      reportId,
      decisionId: input.decisionId ?? "",
      context: input.context,
      modelId: input.modelId,
      inputTokens: BigInt(Math.max(0, Math.round(input.inputTokens ?? 0))),
      outputTokens: BigInt(Math.max(0, Math.round(input.outputTokens ?? 0))),
      latencyMs: BigInt(Math.max(0, Math.round(input.latencyMs ?? 0))),
      outcome,
      errorMessage: (input.errorMessage ?? "").slice(0, 2000),
      providerWide: input.providerWide ?? false,
      occurredAt: timestampFromDate(input.occurredAt ?? new Date()),
    });
    if (user) msg.user = create(UserSchema, { id: user.id, tier: user.tier ?? "" });
    if (input.retryAfterMs !== undefined && input.retryAfterMs > 0) {
      const ms = Math.round(input.retryAfterMs);
      msg.retryAfter = create(DurationSchema, { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 });
    }
    this.queue.push(msg);
    if (this.queue.length > this.opts.maxQueuedReports) {
      const dropped = this.queue.splice(0, this.queue.length - this.opts.maxQueuedReports).length;
      this.warn("reports:dropped", `modelroute: report queue full, dropped ${dropped} oldest report(s)`);
    }
    if (COOLDOWN_OUTCOMES.has(outcome)) {
      // The model is failing for everyone: stop serving it from our cache, and tell the server now.
      this.cache.deleteWhere((r) => r.modelId === input.modelId);
      this.flushInBackground();
    } else if (this.queue.length >= this.opts.reportBatchSize) {
      this.flushInBackground();
    }
    return reportId;
  }

  /** Number of reports waiting to be sent. */
  get pendingReports(): number {
    return this.queue.length;
  }

  /**
   * Sends every queued report. Rejects if the server could not take them; they stay queued
   * (same report ids, so a later retry cannot double-count).
   */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing.catch(() => undefined);
    if (this.queue.length === 0) return;
    this.flushing = this.sendAll();
    try {
      await this.flushing;
    } finally {
      this.flushing = undefined;
    }
  }

  private flushInBackground(): void {
    if (this.queue.length === 0 || this.flushing) return;
    this.flush().catch((err: unknown) =>
      this.warn("reports:failed", `modelroute: could not send ${this.queue.length} report(s), will retry: ${ConnectError.from(err).message}`),
    );
  }

  private async sendAll(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.slice(0, Math.min(this.opts.reportBatchSize, 1000));
      let results: ReportResult[];
      try {
        ({ results } = await this.rpc.reportUsage({ reports: batch }, { timeoutMs: this.opts.reportTimeoutMs }));
      } catch (err) {
        const ce = ConnectError.from(err);
        if (ce.code === Code.InvalidArgument) {
          // The whole batch is malformed: retrying cannot help.
          this.queue.splice(0, batch.length);
          this.warn("reports:invalid", `modelroute: dropped ${batch.length} report(s) the server refused: ${ce.message}`);
          continue;
        }
        throw ce;
      }
      this.queue.splice(0, batch.length);
      const rejected = results.filter((r) => r.status === ReportStatus.REJECTED);
      if (rejected.length > 0) {
        this.warn("reports:rejected", `modelroute: ${rejected.length} report(s) rejected, e.g. ${rejected[0]!.reportId}: ${rejected[0]!.error}`);
      }
    }
  }

  /**
   * Resolves, calls `apiCall(modelId)`, and on failure reports it and moves down the fallback
   * list; when the list is used up it re-resolves excluding every model tried. Every attempt is
   * reported with its outcome and decision id. Errors the classifier marks non-retryable
   * (invalid request, content filter) are rethrown as they are; when nothing is left, throws
   * one `AllModelsFailedError` listing the attempts.
   */
  async callWithFallback<T>(
    context: string,
    apiCall: (modelId: string, info: AttemptInfo) => Promise<T>,
    options: CallOptions<T> = {},
  ): Promise<CallResult<T>> {
    const maxAttempts = options.maxAttempts ?? 5;
    const maxResolves = options.maxResolves ?? 3;
    const rules = options.classifierRules ?? this.opts.classifierRules;
    const user = userOf(options.user, options.tier);
    const attempts: Attempt[] = [];
    const tried = new Set<string>();
    let resolves = 0;
    let resolution: Resolution | undefined;
    let queue: string[] = [];
    let lastError: unknown;

    while (attempts.length < maxAttempts) {
      if (queue.length === 0) {
        if (resolves >= maxResolves) break;
        resolves++;
        const excludeModels = [...new Set([...(options.excludeModels ?? []), ...tried])];
        try {
          resolution = await this.resolve(context, { ...options, excludeModels, noCache: options.noCache || tried.size > 0 });
        } catch (err) {
          // RESOURCE_EXHAUSTED: the server has no model left for us.
          if (err instanceof ConnectError && err.code === Code.ResourceExhausted) {
            lastError = err;
            break;
          }
          throw err;
        }
        queue = [resolution.modelId, ...resolution.fallbackModelIds].filter((m) => !tried.has(m));
        if (queue.length === 0) break;
      }
      const modelId = queue.shift()!;
      tried.add(modelId);
      const res = resolution!;
      const started = performance.now();
      try {
        const value = await apiCall(modelId, { attempt: attempts.length + 1, resolution: res });
        const latencyMs = Math.round(performance.now() - started);
        attempts.push({ modelId, outcome: "OK", retryable: false, latencyMs, message: "", decisionId: res.decisionId });
        this.report({ context, modelId, decisionId: res.decisionId, user, outcome: Outcome.OK, latencyMs, ...(options.usage?.(value) ?? {}) });
        return { value, modelId, resolution: res, attempts };
      } catch (err) {
        const latencyMs = Math.round(performance.now() - started);
        const c = classifyError(err, rules);
        const message = err instanceof Error ? err.message : String(err);
        const attempt: Attempt = { modelId, outcome: outcomeName(c.outcome), retryable: c.retryable, latencyMs, message, decisionId: res.decisionId, error: err };
        if (c.retryAfterMs !== undefined) attempt.retryAfterMs = c.retryAfterMs;
        attempts.push(attempt);
        const report: UsageInput = { context, modelId, decisionId: res.decisionId, user, outcome: c.outcome, latencyMs, errorMessage: message };
        if (c.retryAfterMs !== undefined) report.retryAfterMs = c.retryAfterMs;
        if (c.providerWide) report.providerWide = true;
        this.report(report);
        lastError = err;
        if (!c.retryable) throw err;
      }
    }
    throw new AllModelsFailedError(context, attempts, lastError);
  }

  /**
   * Follows WatchConfig: a new config revision drops every cached decision at once (an
   * operator's change must not wait for cache TTLs). While the stream is down the cache is
   * dropped too (revisions may have been missed) and the stream is reopened with backoff.
   */
  private startWatch(): void {
    if (this.watching || this.closed || !this.opts.watchConfig || this.opts.cacheSize <= 0) return;
    this.watching = true;
    void (async () => {
      let backoffMs = 500;
      let lastRevision: bigint | undefined;
      while (!this.closed) {
        try {
          for await (const update of this.rpc.watchConfig({}, { signal: this.watchAbort.signal })) {
            backoffMs = 500;
            if (lastRevision !== undefined && update.configRevision !== lastRevision) {
              this.cache.deleteWhere(() => true);
            }
            lastRevision = update.configRevision;
          }
        } catch {
          // Server unreachable or restarting: cached answers still expire by their TTL.
        }
        if (this.closed) break;
        this.cache.deleteWhere(() => true);
        lastRevision = undefined;
        await new Promise<void>((done) => setTimeout(done, backoffMs).unref());
        backoffMs = Math.min(backoffMs * 2, 10_000);
      }
    })();
  }

  /** Sends the queued reports (best effort, bounded by `timeoutMs`) and closes the connection. */
  async close(timeoutMs = 5000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watchAbort.abort();
    clearInterval(this.timer);
    let timeout: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.flush(),
        new Promise((_, reject) => {
          timeout = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
    } catch (err) {
      this.opts.logger.warn(`modelroute: ${this.queue.length} report(s) not sent at close: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      clearTimeout(timeout);
      this.sessions.abort();
    }
  }

  /** Logs at most one warning per `key` per `warnIntervalMs`, so an outage does not flood logs. */
  private warn(key: string, message: string): void {
    const now = Date.now();
    const last = this.lastWarned.get(key);
    if (last !== undefined && now - last < this.opts.warnIntervalMs) return;
    this.lastWarned.set(key, now);
    this.opts.logger.warn(message);
  }
}

function toResolution(resp: ResolveModelResponse): Resolution {
  const r: Resolution = {
    modelId: resp.modelId,
    provider: resp.provider,
    fallbackModelIds: [...resp.fallbackModelIds],
    reason: Reason[resp.reason] ?? String(resp.reason),
    decisionId: resp.decisionId,
    experimentId: resp.experimentId,
    variantId: resp.variantId,
    configRevision: Number(resp.configRevision),
    warnings: [...resp.warnings],
    cacheTtlMs: durationMs(resp.cacheTtl),
    source: "server",
  };
  if (resp.fallback && resp.fallback.cause !== FallbackCause.UNSPECIFIED) {
    r.fallback = { fromModelId: resp.fallback.fromModelId, cause: FallbackCause[resp.fallback.cause] ?? String(resp.fallback.cause) };
  }
  return r;
}
