// The shared cross-language vectors: the TS bucketing must agree with the server's resolver.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { bucketOf, variantIndex, murmur3x86_32 } from "../src/bucketing.ts";

interface Vector {
  experiment_id: string;
  unit_id: string;
  weights: number[];
  bucket: number;
  variant_index: number;
}

const vectorsPath = fileURLToPath(new URL("../../../tests/vectors/bucketing.json", import.meta.url));
const { cases } = JSON.parse(readFileSync(vectorsPath, "utf8")) as { cases: Vector[] };

test("murmur3 x86 32 matches the published reference values", () => {
  const enc = new TextEncoder();
  assert.equal(murmur3x86_32(new Uint8Array(0), 0), 0);
  assert.equal(murmur3x86_32(new Uint8Array(0), 1), 0x514e28b7);
  assert.equal(murmur3x86_32(enc.encode("hello"), 0), 0x248bfa47);
  assert.equal(murmur3x86_32(enc.encode("The quick brown fox jumps over the lazy dog"), 0), 0x2e4ff723);
});

test(`bucketing vectors (${cases.length} cases) give the server's bucket and variant`, () => {
  assert.ok(cases.length > 0);
  for (const c of cases) {
    const bucket = bucketOf(c.experiment_id, c.unit_id);
    assert.equal(bucket, c.bucket, `bucket of ${c.experiment_id}/${c.unit_id}`);
    assert.equal(variantIndex(bucket, c.weights), c.variant_index, `variant of ${c.experiment_id}/${c.unit_id}`);
  }
});
