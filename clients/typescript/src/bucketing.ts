/**
 * Experiment bucketing, byte-for-byte the algorithm the server uses (DESIGN.md, "Resolution
 * order" step 4), so a client can predict or audit which variant a user gets:
 *
 *   bucket  = murmur3_x86_32(utf8(experimentId + "/" + unitId), seed 0) as unsigned % 10000
 *   variant = first i with bucket < (weights[0] + ... + weights[i]) * 100
 *
 * Cross-checked against tests/vectors/bucketing.json, shared by every language.
 */

/** Number of buckets; weights are percentages, so one percent is 100 buckets. */
export const BUCKETS = 10_000;

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

/** MurmurHash3 x86 32-bit of `data`, as an unsigned 32-bit integer. */
export function murmur3x86_32(data: Uint8Array, seed = 0): number {
  let h = seed >>> 0;
  const blocks = data.length >>> 2;
  for (let i = 0; i < blocks; i++) {
    const o = i * 4;
    let k = data[o]! | (data[o + 1]! << 8) | (data[o + 2]! << 16) | (data[o + 3]! << 24);
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = blocks * 4;
  let k = 0;
  // Intentional fall-through over the 1..3 trailing bytes, as in the reference implementation.
  const rest = data.length & 3;
  if (rest === 3) k ^= data[tail + 2]! << 16;
  if (rest >= 2) k ^= data[tail + 1]! << 8;
  if (rest >= 1) {
    k ^= data[tail]!;
    k = Math.imul(k, C1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, C2);
    h ^= k;
  }
  h ^= data.length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

const utf8 = new TextEncoder();

/** The bucket (0..9999) of a unit (user id, or request id for per-request experiments). */
export function bucketOf(experimentId: string, unitId: string): number {
  return murmur3x86_32(utf8.encode(`${experimentId}/${unitId}`), 0) % BUCKETS;
}

/**
 * Index of the variant owning `bucket`, given variant weights in percent (summing to 100).
 * Returns -1 only when the weights sum to less than the bucket needs (invalid config).
 */
export function variantIndex(bucket: number, weights: readonly number[]): number {
  let cumulative = 0;
  for (let i = 0; i < weights.length; i++) {
    cumulative += weights[i]! * 100;
    if (bucket < cumulative) return i;
  }
  return -1;
}

/** Convenience: the variant index a unit falls into for an experiment. */
export function assignVariant(experimentId: string, unitId: string, weights: readonly number[]): number {
  return variantIndex(bucketOf(experimentId, unitId), weights);
}
