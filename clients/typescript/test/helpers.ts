/** Shared test doubles: fake LLM provider errors shaped like real SDK errors, a capturing logger. */
import { createServer } from "node:net";

/** An error like the ones fetch-based LLM SDKs throw: `.status`, `.headers`, a message. */
export class ProviderError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** Collects warnings instead of printing them, so tests can assert on them. */
export class CapturingLogger {
  readonly warnings: string[] = [];
  warn(message: string): void {
    this.warnings.push(message);
  }
}

/** A TCP port nothing listens on (bound then released). */
export async function deadPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}
