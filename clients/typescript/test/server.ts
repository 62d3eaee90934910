/**
 * Test helper: a real modelroute server (embedded etcd + SQLite) on a free port, in a fresh
 * temp dir, seeded from the repo's config/bootstrap.yaml.
 */
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { ModelRouterClient } from "../src/index.ts";

export const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
const bin = process.env["MODELROUTE_BIN"] ?? join(repoRoot, ".venv/bin/modelroute");

export interface TestServer {
  baseUrl: string;
  /** The HTTP listener (OFREP, Connect, admin API), when started with `{ http: true }`. */
  httpUrl: string;
  dataDir: string;
  /** Runs Python with the server's venv interpreter (for reading its SQLite database). */
  sqlite(query: string): Promise<unknown[][]>;
  /** Writes an etcd key of the server's embedded etcd (as an operator would, with etcdctl). */
  etcdPut(key: string, value: string): Promise<void>;
  stop(): Promise<void>;
}

/** Polls `fn` until it returns without throwing (or `timeoutMs` passes, then rethrows). */
export async function eventually<T>(fn: () => Promise<T> | T, timeoutMs = 15_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }
}

export async function startServer(options: { http?: boolean } = {}): Promise<TestServer> {
  const dataDir = mkdtempSync(join(tmpdir(), "modelroute-ts-"));
  const child: ChildProcess = spawn(
    bin,
    ["serve", "--port", "0", "--admin-port", options.http ? "0" : "-1", "--data-dir", dataDir, "--bootstrap", join(repoRoot, "config/bootstrap.yaml")],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  let httpUrl = "";
  const baseUrl = await new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`server did not start in 60 s:\n${stderr}`)), 60_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /serving gRPC on (\S+):(\d+)/.exec(out);
      const dashboard = /dashboard at (http:\/\/\S+?)\/?\s/.exec(out);
      if (m && (!options.http || dashboard)) {
        clearTimeout(timer);
        httpUrl = dashboard ? dashboard[1]! : "";
        resolve(`http://${m[1]}:${m[2]}`);
      }
    });
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${bin} (set MODELROUTE_BIN): ${err.message}`));
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${stderr}`));
    });
  });
  // "serving" is printed before the first config snapshot may be loaded: wait until it answers.
  const probe = new ModelRouterClient({ baseUrl, logger: { warn() {} } });
  try {
    await eventually(() => probe.resolve("rag.answer", { noCache: true }), 30_000);
  } finally {
    await probe.close(100);
  }
  const python = join(bin, "..", "python");
  return {
    baseUrl,
    httpUrl,
    dataDir,
    async sqlite(query) {
      const script = "import json,sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(json.dumps(c.execute(sys.argv[2]).fetchall()))";
      const { stdout } = await promisify(execFile)(python, ["-c", script, join(dataDir, "modelroute.db"), query]);
      return JSON.parse(stdout) as unknown[][];
    },
    async etcdPut(key, value) {
      const endpoint = readFileSync(join(dataDir, "etcd.endpoint"), "utf8").trim();
      await promisify(execFile)(join(bin, "..", "etcdctl"), ["--endpoints", endpoint, "put", key, value]);
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
