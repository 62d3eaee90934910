/**
 * An OpenFeature provider for `@openfeature/server-sdk` over `ModelRouterClient` (gRPC,
 * decision cache, fail-safe answers). Flag key = context, value = model id; `targetingKey`
 * = user id, `tier` = tier, other fields = attributes. Same variant / reason / metadata as
 * modelroute's OFREP endpoint. A new configuration revision on WatchConfig emits
 * PROVIDER_CONFIGURATION_CHANGED; `client.track(context, evaluationContext, { value:
 * latencyMs, modelId, decisionId, inputTokens, outputTokens, outcome })` queues a usage report.
 *
 *   import { OpenFeature } from "@openfeature/server-sdk";
 *   import { ModelrouteProvider } from "@modelroute/client/openfeature";
 *   await OpenFeature.setProviderAndWait(new ModelrouteProvider({ baseUrl: "http://modelroute:50051" }));
 */
import {
  GeneralError,
  InvalidContextError,
  OpenFeatureEventEmitter,
  ProviderEvents,
  StandardResolutionReasons,
  TypeMismatchError,
  type EvaluationContext,
  type JsonValue,
  type Provider,
  type ResolutionDetails,
  type TrackingEventDetails,
} from "@openfeature/server-sdk";
import { Code, ConnectError } from "@connectrpc/connect";
import { ModelRouterClient, type ModelRouterClientOptions, type OutcomeName, type Resolution } from "./index.ts";

/** modelroute reason → OpenFeature reason (the README's table; same as the OFREP endpoint). */
export const REASONS: Readonly<Record<string, string>> = {
  ENV_OVERRIDE: StandardResolutionReasons.STATIC,
  OPERATOR_OVERRIDE: StandardResolutionReasons.STATIC,
  USER_PREFERENCE: StandardResolutionReasons.TARGETING_MATCH,
  EXPERIMENT: StandardResolutionReasons.SPLIT,
  ROLLOUT: StandardResolutionReasons.SPLIT,
  CONTEXT_DEFAULT: StandardResolutionReasons.STATIC,
  GLOBAL_DEFAULT: StandardResolutionReasons.DEFAULT,
};

export class ModelrouteProvider implements Provider {
  readonly metadata = { name: "modelroute" } as const;
  readonly runsOn = "server" as const;
  readonly events = new OpenFeatureEventEmitter();
  readonly client: ModelRouterClient;
  /** The newest configuration revision seen on WatchConfig (0 until the stream answers). */
  configRevision = 0n;
  private readonly ownsClient: boolean;
  private readonly watchAbort = new AbortController();

  constructor(client: ModelRouterClient | ModelRouterClientOptions = {}) {
    this.ownsClient = !(client instanceof ModelRouterClient);
    this.client = client instanceof ModelRouterClient ? client : new ModelRouterClient(client);
  }

  async initialize(): Promise<void> {
    void this.follow();
  }

  async onClose(): Promise<void> {
    this.watchAbort.abort();
    if (this.ownsClient) await this.client.close();
  }

  /** Announces every revision newer than the last seen (the first message is the one in force). */
  private async follow(): Promise<void> {
    let backoffMs = 50;
    while (!this.watchAbort.signal.aborted) {
      try {
        for await (const update of this.client.rpc.watchConfig({}, { signal: this.watchAbort.signal })) {
          backoffMs = 50;
          if (update.configRevision <= this.configRevision) continue;
          const first = this.configRevision === 0n;
          this.configRevision = update.configRevision;
          if (!first) {
            this.events.emit(ProviderEvents.ConfigurationChanged, {
              message: `modelroute configuration revision ${update.configRevision}`,
              metadata: { configRevision: String(update.configRevision) },
            });
          }
        }
      } catch {
        // Unreachable or restarting: reconnect with backoff.
      }
      await new Promise<void>((done) => setTimeout(done, backoffMs).unref());
      backoffMs = Math.min(backoffMs * 2, 5000);
    }
  }

  async resolveStringEvaluation(flagKey: string, _default: string, context: EvaluationContext): Promise<ResolutionDetails<string>> {
    const r = await this.decide(flagKey, context);
    return details(r);
  }

  /** The whole decision as an object: { modelId, fallbackModelIds, provider, decisionId }. */
  async resolveObjectEvaluation<T extends JsonValue>(flagKey: string, _default: T, context: EvaluationContext): Promise<ResolutionDetails<T>> {
    const r = await this.decide(flagKey, context);
    const value = { modelId: r.modelId, fallbackModelIds: r.fallbackModelIds, provider: r.provider, decisionId: r.decisionId };
    return { ...details(r), value: value as unknown as T };
  }

  async resolveBooleanEvaluation(flagKey: string): Promise<ResolutionDetails<boolean>> {
    throw new TypeMismatchError(`${flagKey} is a model choice: evaluate it as a string`);
  }

  async resolveNumberEvaluation(flagKey: string): Promise<ResolutionDetails<number>> {
    throw new TypeMismatchError(`${flagKey} is a model choice: evaluate it as a string`);
  }

  /** A usage report: event name = context; details `modelId` (required), `decisionId`,
   * `inputTokens`, `outputTokens`, `latencyMs` (or `value`), `outcome`, `errorMessage`. */
  track(trackingEventName: string, context: EvaluationContext, details: TrackingEventDetails): void {
    const modelId = details["modelId"];
    if (typeof modelId !== "string" || !modelId) return;
    const num = (name: string) => (typeof details[name] === "number" ? (details[name] as number) : undefined);
    const { user } = resolveOptions(context);
    this.client.report({
      context: trackingEventName,
      modelId,
      ...(typeof details["decisionId"] === "string" ? { decisionId: details["decisionId"] } : {}),
      ...(typeof details["errorMessage"] === "string" ? { errorMessage: details["errorMessage"] } : {}),
      ...(typeof details["outcome"] === "string" ? { outcome: details["outcome"].toUpperCase() as OutcomeName } : {}),
      inputTokens: num("inputTokens") ?? 0,
      outputTokens: num("outputTokens") ?? 0,
      latencyMs: num("latencyMs") ?? details.value ?? 0,
      ...(user ? { user } : {}),
    });
  }

  private async decide(flagKey: string, context: EvaluationContext): Promise<Resolution> {
    try {
      return await this.client.resolve(flagKey, resolveOptions(context));
    } catch (err) {
      if (err instanceof InvalidContextError) throw err;
      const error = ConnectError.from(err);
      if (error.code === Code.InvalidArgument) throw new InvalidContextError(error.rawMessage);
      throw new GeneralError(`${Code[error.code]}: ${error.rawMessage}`);
    }
  }
}

function resolveOptions(context: EvaluationContext): { user?: { id: string; tier?: string }; attributes: Record<string, string> } {
  const attributes: Record<string, string> = {};
  let tier: string | undefined;
  for (const [name, value] of Object.entries(context)) {
    if (name === "targetingKey" || value === undefined || value === null) continue;
    if (name === "tier") {
      if (typeof value !== "string") throw new InvalidContextError("tier must be a string");
      tier = value;
    } else if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") {
      attributes[name] = String(value);
    } else {
      throw new InvalidContextError(`${name}: only strings, numbers and booleans are supported`);
    }
  }
  const id = context.targetingKey ?? "";
  return { ...(id || tier ? { user: { id, ...(tier ? { tier } : {}) } } : {}), attributes };
}

function details(r: Resolution): ResolutionDetails<string> {
  const metadata: Record<string, string | boolean> = {
    decisionId: r.decisionId,
    provider: r.provider,
    configRevision: String(r.configRevision),
    fallbacks: r.fallbackModelIds.join(","),
    modelrouteReason: r.reason,
    source: r.source,
  };
  if (r.experimentId) metadata["experimentId"] = r.experimentId;
  if (r.fallback) {
    metadata["fallbackFrom"] = r.fallback.fromModelId;
    metadata["fallbackCause"] = r.fallback.cause;
  }
  if (r.warnings.length) metadata["warnings"] = r.warnings.join("; ");
  const reason =
    r.source === "last-known"
      ? StandardResolutionReasons.STALE
      : r.source === "static-default"
        ? StandardResolutionReasons.DEFAULT
        : (REASONS[r.reason] ?? StandardResolutionReasons.UNKNOWN);
  return { value: r.modelId, variant: r.variantId || r.reason, reason, flagMetadata: metadata };
}
