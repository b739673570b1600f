import { LRUCache } from 'lru-cache';
import type { CacheEntry } from './cache-entry.ts';

/** Upper bound of the negative (inactive-verdict) cache, whatever `maxEntries` is. */
export const MAX_INACTIVE_ENTRIES = 10_000;

/** L1: a bounded in-process LRU of active entries plus a smaller LRU of inactive verdicts. */
export interface MemoryCache {
  /** The entry, unless its cache TTL has passed or its JWT has expired (`exp ≤ now`). */
  get(key: string): CacheEntry | undefined;
  /** Stores the entry for `ttlSeconds` (≤ 0 or not finite: not stored). */
  set(key: string, entry: CacheEntry, ttlSeconds: number): void;
  /** Removes the key from both the entry cache and the inactive cache. */
  delete(key: string): void;
  /** Remembers "this token is inactive" for `ttlSeconds` (≤ 0: not stored). */
  setInactive(key: string, ttlSeconds: number): void;
  isInactive(key: string): boolean;
  /** Deletes every entry for which `match` is true (purge by subject); returns how many. */
  deleteWhere(match: (entry: CacheEntry) => boolean): number;
  /** Entries held (may include expired ones not yet evicted; always ≤ maxEntries). */
  readonly size: number;
  /** Inactive verdicts held (always ≤ min(maxEntries, 10 000)). */
  readonly inactiveSize: number;
  clear(): void;
}

interface Slot {
  entry: CacheEntry;
  expiresAtMs: number;
}

/**
 * `now` returns epoch milliseconds (default `Date.now`); tests inject a fake clock. It drives both
 * the cache TTLs and the `exp` check.
 */
export function createMemoryCache(opts: { maxEntries: number; now?: () => number }): MemoryCache {
  const now = opts.now ?? Date.now;
  if (!Number.isInteger(opts.maxEntries) || opts.maxEntries < 1) {
    throw new Error('memory cache maxEntries must be a positive integer');
  }
  // ttlResolution 0: ask the clock every time (no cached "now"), so an injected clock is exact.
  const perf = { now };
  const entries = new LRUCache<string, Slot>({
    max: opts.maxEntries,
    ttlAutopurge: false,
    ttlResolution: 0,
    perf,
  });
  const inactive = new LRUCache<string, number>({
    max: Math.min(opts.maxEntries, MAX_INACTIVE_ENTRIES),
    ttlAutopurge: false,
    ttlResolution: 0,
    perf,
  });

  return {
    get(key) {
      const slot = entries.get(key);
      if (slot === undefined) return undefined;
      const t = now();
      if (t >= slot.expiresAtMs || slot.entry.exp * 1000 <= t) {
        entries.delete(key);
        return undefined;
      }
      return slot.entry;
    },
    set(key, entry, ttlSeconds) {
      if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) return;
      const ttlMs = Math.floor(ttlSeconds * 1000);
      entries.set(key, { entry, expiresAtMs: now() + ttlMs }, { ttl: ttlMs });
    },
    delete(key) {
      entries.delete(key);
      inactive.delete(key);
    },
    deleteWhere(match) {
      const doomed: string[] = [];
      for (const [key, slot] of entries.entries()) if (match(slot.entry)) doomed.push(key);
      for (const key of doomed) entries.delete(key);
      return doomed.length;
    },
    setInactive(key, ttlSeconds) {
      if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) return;
      const ttlMs = Math.floor(ttlSeconds * 1000);
      inactive.set(key, now() + ttlMs, { ttl: ttlMs });
    },
    isInactive(key) {
      const until = inactive.get(key);
      if (until === undefined) return false;
      if (now() >= until) {
        inactive.delete(key);
        return false;
      }
      return true;
    },
    get size() {
      return entries.size;
    },
    get inactiveSize() {
      return inactive.size;
    },
    clear() {
      entries.clear();
      inactive.clear();
    },
  };
}
