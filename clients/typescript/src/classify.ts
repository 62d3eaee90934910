/**
 * Failure classification for `callWithFallback`: turns whatever an LLM SDK threw into a
 * modelroute `Outcome` (what the server records, and what triggers a cooldown) plus whether
 * trying another model can help.
 *
 * It is a table of rules tried in order; the first that answers wins. SDKs differ (HTTP
 * status on `.status`, `.statusCode` or `.response.status`, quota messages in the text), so
 * callers add their own rules in front of `DEFAULT_RULES` rather than patching these.
 */
import { Outcome } from "./gen/modelroute/v1/types_pb.ts";

/** What the classifier decided about one failed call. */
export interface Classification {
  /** The outcome reported to modelroute. */
  outcome: Outcome;
  /** Whether another model may succeed (false: the request itself is at fault). */
  retryable: boolean;
  /** The provider's retry-after, when the error carried one. */
  retryAfterMs?: number;
  /** With RATE_LIMITED / QUOTA_EXCEEDED: the limit is provider-wide, not per model. */
  providerWide?: boolean;
}

/** Facts pulled out of an arbitrary thrown value once, so rules stay one-liners. */
export interface ErrorFacts {
  /** HTTP status, when the error carries one. */
  status?: number;
  /** Lower-cased message (plus name and code), for keyword rules. */
  text: string;
  /** The original message, for the report's `error_message`. */
  message: string;
  /** `.name` of the error, e.g. `AbortError`, `TimeoutError`. */
  name: string;
  /** `.code` of the error, e.g. `ETIMEDOUT`. */
  code: string;
  /** Retry-after in milliseconds, from headers, a property or the message. */
  retryAfterMs?: number;
}

/** One row of the table: answers for errors it recognises, `undefined` otherwise. */
export type ClassifierRule = (facts: ErrorFacts, error: unknown) => Classification | undefined;

type Bag = Record<string, unknown>;
const isBag = (v: unknown): v is Bag => typeof v === "object" && v !== null;

function num(v: unknown): number | undefined {
  const n = typeof v === "string" ? Number(v) : v;
  return typeof n === "number" && Number.isFinite(n) ? n : undefined;
}

/** Reads a header from a fetch `Headers`, a plain object, or nothing. */
function header(headers: unknown, name: string): string | undefined {
  if (!isBag(headers)) return undefined;
  if (typeof headers["get"] === "function") {
    const v = (headers as { get(n: string): unknown }).get(name);
    return typeof v === "string" ? v : undefined;
  }
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() === name) return Array.isArray(v) ? String(v[0]) : String(v);
  }
  return undefined;
}

/** Parses a Retry-After header: delta-seconds or an HTTP date. */
function parseRetryAfterHeader(v: string | undefined): number | undefined {
  if (v === undefined || v.trim() === "") return undefined;
  const secs = Number(v);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** "retry after 20s", "Please retry in 12.5s", "retryDelay": "30s", "try again in 250ms". */
function retryAfterFromText(text: string): number | undefined {
  const m = /(?:retry|try again)[\w\s"':]*?(?:in|after)?\s*"?(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|sec|secs|seconds?|m|min|minutes?)\b/i.exec(text)
    ?? /retry_?delay"?\s*[:=]\s*"?(\d+(?:\.\d+)?)(ms|s)\b/i.exec(text);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2]!.toLowerCase();
  if (unit.startsWith("ms") || unit.startsWith("milli")) return n;
  if (unit.startsWith("m")) return n * 60_000;
  return n * 1000;
}

/** Extracts the facts rules look at. Never throws, whatever was thrown. */
export function errorFacts(error: unknown): ErrorFacts {
  const e: Bag = isBag(error) ? error : {};
  const response = isBag(e["response"]) ? e["response"] : {};
  const message = error instanceof Error ? error.message : typeof error === "string" ? error : String(e["message"] ?? error);
  const name = typeof e["name"] === "string" ? e["name"] : "";
  const code = e["code"] === undefined ? "" : String(e["code"]);
  const status = num(e["status"]) ?? num(e["statusCode"]) ?? num(response["status"]);
  const headers = e["headers"] ?? response["headers"];
  const retryAfterMs =
    num(e["retryAfterMs"]) ??
    (num(e["retryAfter"]) !== undefined ? num(e["retryAfter"])! * 1000 : undefined) ??
    (num(header(headers, "retry-after-ms"))) ??
    parseRetryAfterHeader(header(headers, "retry-after")) ??
    retryAfterFromText(message);
  const facts: ErrorFacts = { text: `${name} ${code} ${message}`.toLowerCase(), message, name, code };
  if (status !== undefined) facts.status = status;
  if (retryAfterMs !== undefined) facts.retryAfterMs = retryAfterMs;
  return facts;
}

const has = (text: string, ...needles: string[]) => needles.some((n) => text.includes(n));

/** Builds a classification, carrying the retry-after when the error had one. */
function cls(outcome: Outcome, retryable: boolean, f: ErrorFacts): Classification {
  const c: Classification = { outcome, retryable };
  if (f.retryAfterMs !== undefined) c.retryAfterMs = f.retryAfterMs;
  return c;
}

const QUOTA_WORDS = ["quota", "resource exhausted", "resource_exhausted", "insufficient_quota", "billing"];
const RATE_WORDS = ["rate limit", "rate_limit", "ratelimit", "too many requests"];

/** The built-in table, most specific first. */
export const DEFAULT_RULES: readonly ClassifierRule[] = [
  // Quota used up (HTTP 429 with a quota message, Google's RESOURCE_EXHAUSTED, OpenAI's insufficient_quota).
  (f) => (has(f.text, ...QUOTA_WORDS) ? cls(Outcome.QUOTA_EXCEEDED, true, f) : undefined),
  // Rate limited: HTTP 429 or the words, without a quota message.
  (f) => (f.status === 429 || has(f.text, ...RATE_WORDS) ? cls(Outcome.RATE_LIMITED, true, f) : undefined),
  // Timeouts: aborted fetches, socket timeouts, gateway timeouts.
  (f) =>
    f.status === 408 || f.status === 504 || f.name === "AbortError" || f.name === "TimeoutError" ||
    f.code === "ETIMEDOUT" || has(f.text, "timed out", "timeout", "deadline exceeded")
      ? cls(Outcome.TIMEOUT, true, f)
      : undefined,
  // Content filters: the same prompt would be blocked by the next model too.
  (f) =>
    has(f.text, "content filter", "content_filter", "content_policy", "content policy", "safety", "blocked by")
      ? cls(Outcome.CONTENT_FILTERED, false, f)
      : undefined,
  // The request is invalid: retrying elsewhere only repeats the mistake.
  (f) =>
    f.status === 400 || f.status === 413 || f.status === 422 || has(f.text, "invalid request", "invalid_request", "invalid argument")
      ? cls(Outcome.INVALID_REQUEST, false, f)
      : undefined,
  // Provider failures.
  (f) => (f.status !== undefined && f.status >= 500 ? cls(Outcome.SERVER_ERROR, true, f) : undefined),
  (f) => (has(f.text, "internal server error", "service unavailable", "overloaded", "bad gateway") ? cls(Outcome.SERVER_ERROR, true, f) : undefined),
];

/** Anything no rule recognised: recorded as OTHER; another model (maybe another provider) may work. */
const FALLBACK_RULE: ClassifierRule = (f) => cls(Outcome.OTHER, true, f);

/** Classifies `error` with `rules` (first answer wins), falling back to OTHER, retryable. */
export function classifyError(error: unknown, rules: readonly ClassifierRule[] = DEFAULT_RULES): Classification {
  const facts = errorFacts(error);
  for (const rule of rules) {
    const c = rule(facts, error);
    if (c) return c;
  }
  return FALLBACK_RULE(facts, error)!;
}
