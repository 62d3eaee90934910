/**
 * A tiny LRU map with per-entry expiry. A Map iterates in insertion order, so re-inserting on
 * read keeps the most recently used entry last and the first key is the one to evict.
 */
export class LruCache<V> {
  private readonly entries = new Map<string, { value: V; expiresAt: number }>();

  constructor(private readonly capacity: number) {}

  /** The value, if present and not expired (`now` in ms, injectable for tests). */
  get(key: string, now = Date.now()): V | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    this.entries.delete(key);
    if (e.expiresAt <= now) return undefined;
    this.entries.set(key, e);
    return e.value;
  }

  /** Stores `value` for `ttlMs` (Infinity: until evicted). A ttl of 0 or less stores nothing. */
  set(key: string, value: V, ttlMs: number, now = Date.now()): void {
    if (this.capacity <= 0 || !(ttlMs > 0)) return;
    this.entries.delete(key);
    this.entries.set(key, { value, expiresAt: now + ttlMs });
    while (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }

  /** Drops every entry whose value matches `pred` (e.g. answers naming a model now failing). */
  deleteWhere(pred: (value: V) => boolean): void {
    for (const [k, e] of this.entries) if (pred(e.value)) this.entries.delete(k);
  }

  get size(): number {
    return this.entries.size;
  }
}
