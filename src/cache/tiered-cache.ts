import { type CacheEntry, cacheTtlSeconds } from './cache-entry.ts';
import type { MemoryCache } from './memory-cache.ts';
import type { RedisStore } from './redis-store.ts';

/** Turns an L2 value back into an entry (verify + decode); undefined when invalid → a miss. */
export type Revive = (value: string) => Promise<CacheEntry | undefined>;

export interface TieredCacheHit {
  entry: CacheEntry;
  level: 'l1' | 'l2';
}

export interface TieredCache {
  /**
   * L1, then L2. An L2 value is passed to `revive` (the creation-time one, or `opts.revive` for
   * this call, e.g. one that decrypts with a key derived from the token); a valid result fills L1.
   * Never rejects: a failing revive or Redis is a miss.
   */
  get(key: string, opts?: { revive?: Revive }): Promise<TieredCacheHit | undefined>;
  /**
   * Write-through: L1, then L2 (awaited, but an L2 failure is ignored). L2 stores `opts.l2Value`
   * when given (e.g. the encrypted JWT), else `entry.jwt`. `ttlSeconds` ≤ 0: nothing is stored.
   */
  set(key: string, entry: CacheEntry, ttlSeconds: number, opts?: { l2Value?: string }): Promise<void>;
  /** Removes the key from L1 (entries and inactive verdicts). L2 keys expire by TTL. */
  delete(key: string): void;
  /** Inactive verdicts live in L1 only (for now). */
  setInactive(key: string, ttlSeconds: number): void;
  isInactive(key: string): boolean;
}

export interface TieredCacheOptions {
  memory: MemoryCache;
  redis?: RedisStore;
  revive: Revive;
  /** Epoch milliseconds (default `Date.now`). */
  now?: () => number;
  /** Subtracted from `exp` when an L2 hit fills L1 (default 0); use the config's clock skew. */
  clockSkewSeconds?: number;
  /** Upper bound of the L1 TTL when an L2 hit fills L1 (default: no bound beyond `exp`). */
  maxTtlSeconds?: number;
}

/**
 * L1 (in-process) in front of optional L2 (Redis).
 *
 * TTL of an L1 fill from an L2 hit: `cacheTtlSeconds(entry.exp, now, clockSkewSeconds,
 * maxTtlSeconds)`, i.e. derived from the JWT's own `exp` rather than from the Redis key's
 * remaining TTL (which would cost a second round trip). The Redis TTL was computed by the same
 * formula when written, so both levels let go of the entry at about the same time; L1 may hold it
 * at most `maxTtlSeconds` longer than L2 would have — never past `exp − clockSkewSeconds`.
 * When that TTL is ≤ 0 the hit is still returned (revive has just verified the JWT) but L1 is not
 * filled.
 */
export function createTieredCache(opts: TieredCacheOptions): TieredCache {
  const { memory, redis } = opts;
  const now = opts.now ?? Date.now;
  const skew = opts.clockSkewSeconds ?? 0;
  const maxTtl = opts.maxTtlSeconds ?? Infinity;

  return {
    async get(key, getOpts) {
      const l1 = memory.get(key);
      if (l1 !== undefined) return { entry: l1, level: 'l1' };
      if (redis === undefined) return undefined;
      const value = await redis.get(key).catch(() => undefined);
      if (value === undefined) return undefined;
      let entry: CacheEntry | undefined;
      try {
        entry = await (getOpts?.revive ?? opts.revive)(value);
      } catch {
        entry = undefined;
      }
      if (entry === undefined) return undefined;
      const ttl = cacheTtlSeconds(entry.exp, Math.floor(now() / 1000), skew, maxTtl);
      if (ttl > 0) memory.set(key, entry, ttl);
      return { entry, level: 'l2' };
    },
    async set(key, entry, ttlSeconds, setOpts) {
      if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) return;
      memory.set(key, entry, ttlSeconds);
      if (redis === undefined) return;
      try {
        await redis.set(key, setOpts?.l2Value ?? entry.jwt, ttlSeconds);
      } catch {
        // RedisStore.set never rejects; a custom store might. L2 is best effort.
      }
    },
    delete(key) {
      memory.delete(key);
    },
    setInactive(key, ttlSeconds) {
      memory.setInactive(key, ttlSeconds);
    },
    isInactive(key) {
      return memory.isInactive(key);
    },
  };
}
