import { type CacheEntry, cacheTtlSeconds } from './cache-entry.ts';
import type { CacheMetrics } from './cache-metrics.ts';
import type { MemoryCache } from './memory-cache.ts';
import type { RedisStore } from './redis-store.ts';
import type { ValueCipher } from './value-crypto.ts';

/** Turns a decrypted L2 value (a JWT) back into an entry (verify + decode); undefined → a miss. */
export type Revive = (jwt: string) => Promise<CacheEntry | undefined>;

/** One token's place in the cache. */
export interface CacheRef {
  /** HMAC-SHA-256(PHANTOM_CACHE_KEY, token), base64url: L1 key root and Redis hash tag. */
  tag: string;
  /** '' or a short id of the audience (mint mode keeps one JWT per audience). */
  variant: string;
  /** The opaque token, only to derive the value key. Never stored, never logged. */
  token: string;
}

export type Lookup =
  | { kind: 'hit'; entry: CacheEntry; level: 'l1' | 'l2' }
  | { kind: 'inactive'; level: 'l1' | 'l2' }
  | { kind: 'miss' };

/**
 * Redis key layout (before `keyPrefix`). Every key of one token shares the hash tag `{tag}`, so
 * in a Redis Cluster they live in one slot and one MGET reads entry and verdict together.
 */
export const redisKeys = {
  jwt: (tag: string, variant: string) => (variant === '' ? `{${tag}}:jwt` : `{${tag}}:jwt:${variant}`),
  inactive: (tag: string) => `{${tag}}:neg`,
  lock: (tag: string, variant: string) => (variant === '' ? `{${tag}}:lock` : `{${tag}}:lock:${variant}`),
  subIndex: (subTag: string) => `sub:{${subTag}}`,
};

/** One token's entry for one variant: its L1 key, its single-flight key and its fill-notice name. */
export const slotOf = (ref: { tag: string; variant: string }): string =>
  ref.variant === '' ? ref.tag : `${ref.tag}.${ref.variant}`;

export interface TieredCache {
  /** L1 (entry, verdict), then L2 (entry, verdict) unless `l2Only`. Never rejects. */
  lookup(ref: CacheRef, opts?: { l2Only?: boolean }): Promise<Lookup>;
  /**
   * L1 only, synchronously (the hot path: no promise, no await): the entry or the verdict, or
   * `miss` when L1 has neither — then `lookup` goes on to L2. A hit or a verdict is counted here.
   */
  lookupL1(ref: CacheRef): Lookup;
  /** L1 and L2 (encrypted) for `ttlSeconds`, plus the subject index; L2 failures ignored. */
  store(ref: CacheRef, entry: CacheEntry, ttlSeconds: number): Promise<void>;
  /** Remembers an inactive verdict in L1 and L2 for `ttlSeconds` (0: nothing). */
  storeInactive(ref: CacheRef, ttlSeconds: number): Promise<void>;
  /** Drops L1 entries of these tags (every variant) and, when given, of this subject. Returns the count. */
  evictLocal(tags: readonly string[], subTag?: string): number;
  /** Deletes the Redis entries of these tags (every known variant). Returns the number deleted. */
  deleteRemote(tags: readonly string[]): Promise<number>;
  /** The tags the subject index lists for `subTag`, removing the index. */
  takeSubjectTags(subTag: string): Promise<string[]>;
}

export interface TieredCacheOptions {
  memory: MemoryCache;
  redis?: RedisStore;
  cipher: ValueCipher;
  revive: Revive;
  metrics: CacheMetrics;
  /** Every variant a tag can have ('' and, in mint mode, one per route audience), for purges. */
  variants: readonly string[];
  /** Epoch milliseconds (default `Date.now`). */
  now?: () => number;
  /** Subtracted from `exp` when an L2 hit fills L1. */
  clockSkewSeconds: number;
  /** Upper bound of any TTL; also the TTL of subject index keys (≥ every entry they index). */
  maxTtlSeconds: number;
  /**
   * Asked on every L1 hit (must be cheap and synchronous): false drops the entry and the lookup
   * goes on as a miss (e.g. its JWT was signed by a key no longer published). L2 values are
   * re-verified by `revive` instead.
   */
  stillValid?: (entry: CacheEntry) => boolean;
}

/**
 * L1 (in-process LRU) in front of optional L2 (Redis). L2 values are sealed with a key derived from
 * the token (value-crypto.ts) and re-verified by `revive` before use: a value that does not open or
 * verify is a miss, never an error. An L2 hit fills L1 with `cacheTtlSeconds(exp, …)`.
 */
/**
 * The plaintext sealed in Redis: `e<expires at, epoch ms>.<JWT>` — the expiry travels inside the
 * authenticated value, so no reader needs a PTTL round trip and nobody can stretch it. A value of
 * the earlier format (the bare JWT, `eyJ…`) still reads, without an expiry.
 */
export function packEntry(jwt: string, expiresAtMs: number): string {
  return `e${Math.floor(expiresAtMs)}.${jwt}`;
}

export function unpackEntry(
  plaintext: string | undefined,
): { jwt: string; expiresAtMs?: number } | undefined {
  if (plaintext === undefined) return undefined;
  const m = /^e(\d{1,16})\./.exec(plaintext);
  if (m === null) return { jwt: plaintext };
  return { jwt: plaintext.slice(m[0].length), expiresAtMs: Number(m[1]) };
}

export function createTieredCache(opts: TieredCacheOptions): TieredCache {
  const { memory, redis, cipher, metrics } = opts;
  const now = opts.now ?? Date.now;

  async function lookupL2(ref: CacheRef): Promise<Lookup> {
    if (redis === undefined) return { kind: 'miss' };
    const jwtKey = redis.key(redisKeys.jwt(ref.tag, ref.variant));
    const negKey = redis.key(redisKeys.inactive(ref.tag));
    // One round trip, one command (MGET: both keys share the `{tag}` hash slot, so it is
    // Cluster-safe): the entry and the verdict. How long each still lives is inside the values
    // (an L1 copy must not outlive the Redis entry: its TTL may carry a max-age cap the JWT does
    // not show), so no PTTL and no MULTI: the MULTI of GET, GET, PTTL, PTTL was 15 % of the
    // L2-hit CPU profile.
    const got = await redis.run((c) => c.mget(jwtKey, negKey));
    if (got === undefined || got === null) return { kind: 'miss' };
    const [sealed, neg] = got;
    if (neg !== null && neg !== undefined) {
      metrics.negativeHitsL2++;
      // The verdict's value is its expiry (epoch ms); a value written before that format: 1 s.
      const until = Number(neg);
      const left = until > 1e12 ? (until - now()) / 1000 : 1;
      memory.setInactive(ref.tag, Math.min(1, left > 0 ? left : 1));
      return { kind: 'inactive', level: 'l2' };
    }
    if (sealed === null || sealed === undefined) return { kind: 'miss' };
    const stored = unpackEntry(cipher.open(ref.token, jwtKey, sealed));
    const jwt = stored?.jwt;
    let entry: CacheEntry | undefined;
    try {
      entry = jwt === undefined ? undefined : await opts.revive(jwt);
    } catch {
      entry = undefined;
    }
    if (entry === undefined) {
      metrics.l2Rejected++;
      return { kind: 'miss' };
    }
    const ttl = cacheTtlSeconds(
      entry.exp,
      Math.floor(now() / 1000),
      opts.clockSkewSeconds,
      opts.maxTtlSeconds,
    );
    // The expiry sealed with the value bounds the L1 copy; a value without one (older format)
    // leaves the JWT-based bound alone.
    const untilMs = stored?.expiresAtMs;
    const l1Ttl = untilMs !== undefined ? Math.min(ttl, (untilMs - now()) / 1000) : ttl;
    if (l1Ttl > 0) memory.set(slotOf(ref), entry, l1Ttl);
    metrics.hitsL2++;
    return { kind: 'hit', entry, level: 'l2' };
  }

  function lookupL1(ref: CacheRef): Lookup {
    const slot = slotOf(ref);
    const l1 = memory.get(slot);
    if (l1 !== undefined && opts.stillValid !== undefined && !opts.stillValid(l1)) {
      memory.delete(slot);
    } else if (l1 !== undefined) {
      metrics.hitsL1++;
      return { kind: 'hit', entry: l1, level: 'l1' };
    }
    if (memory.isInactive(ref.tag)) {
      metrics.negativeHitsL1++;
      return { kind: 'inactive', level: 'l1' };
    }
    return { kind: 'miss' };
  }

  return {
    lookupL1,

    async lookup(ref, lookupOpts) {
      if (lookupOpts?.l2Only !== true) {
        const l1 = lookupL1(ref);
        if (l1.kind !== 'miss') return l1;
      }
      const r = await lookupL2(ref);
      if (r.kind === 'miss' && lookupOpts?.l2Only !== true) metrics.misses++;
      return r;
    },

    async store(ref, entry, ttlSeconds) {
      if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) return;
      memory.set(slotOf(ref), entry, ttlSeconds);
      const ttl = Math.floor(ttlSeconds);
      // Redis TTLs are whole seconds: `EX 0` would be refused, count as a Redis failure and, a few
      // in a row, open the breaker. An entry living less than a second stays in L1 only.
      if (redis === undefined || ttl < 1) return;
      const jwtKey = redis.key(redisKeys.jwt(ref.tag, ref.variant));
      const sealed = cipher.seal(ref.token, jwtKey, packEntry(entry.jwt, now() + ttl * 1000));
      const writes: Promise<unknown>[] = [redis.run((c) => c.set(jwtKey, sealed, 'EX', ttl))];
      if (entry.subTag !== undefined) {
        const indexKey = redis.key(redisKeys.subIndex(entry.subTag));
        // The index lives as long as the longest entry it may list (maxTtl ≥ every entry TTL).
        writes.push(
          redis.run((c) => c.multi().sadd(indexKey, ref.tag).expire(indexKey, opts.maxTtlSeconds).exec()),
        );
      }
      await Promise.all(writes);
    },

    async storeInactive(ref, ttlSeconds) {
      if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) return;
      memory.setInactive(ref.tag, ttlSeconds);
      if (redis === undefined) return;
      const ttl = Math.max(1, Math.floor(ttlSeconds));
      // The value is the verdict's expiry (epoch ms): a reader bounds its L1 copy by it.
      await redis.run((c) =>
        c.set(redis.key(redisKeys.inactive(ref.tag)), String(now() + ttl * 1000), 'EX', ttl),
      );
    },

    evictLocal(tags, subTag) {
      let n = 0;
      for (const tag of tags) {
        for (const variant of opts.variants) {
          const key = slotOf({ tag, variant });
          if (memory.get(key) !== undefined) n++;
          memory.delete(key);
        }
        memory.delete(tag);
      }
      if (subTag !== undefined) n += memory.deleteWhere((e) => e.subTag === subTag);
      return n;
    },

    async deleteRemote(tags) {
      if (redis === undefined || tags.length === 0) return 0;
      let n = 0;
      await Promise.all(
        tags.map(async (tag) => {
          // One tag's keys share a slot: one DEL per tag is Cluster-safe.
          const keys = [
            ...opts.variants.map((v) => redis.key(redisKeys.jwt(tag, v))),
            redis.key(redisKeys.inactive(tag)),
          ];
          // Await first: `n += await …` would read `n` before the await and lose concurrent counts.
          const deleted = await redis.run((c) => c.del(...keys));
          n += deleted ?? 0;
        }),
      );
      return n;
    },

    async takeSubjectTags(subTag) {
      if (redis === undefined) return [];
      const indexKey = redis.key(redisKeys.subIndex(subTag));
      const res = await redis.run((c) => c.multi().smembers(indexKey).del(indexKey).exec());
      const members = res?.[0]?.[1];
      return Array.isArray(members) ? (members as string[]) : [];
    },
  };
}
