import { randomUUID } from 'node:crypto';
import type { CacheEvents } from './cache-events.ts';
import type { CacheMetrics } from './cache-metrics.ts';
import type { RedisStore } from './redis-store.ts';
import { type CacheRef, redisKeys } from './tiered-cache.ts';

/** Compare-and-delete: only the owner releases its lock. */
const RELEASE =
  "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/** How often a waiter re-reads L2 when no fill notification arrives (pub/sub is the fast path). */
export const POLL_MS = 50;

export interface Coalescer {
  /**
   * Cross-replica single-flight (SPEC §7): the replica that takes the token's Redis lock runs
   * `load`; the others wait for its result to appear in L2 (`lookup`), woken by a pub/sub fill
   * notification or by polling. A wait never exceeds `timeoutMs`; then the waiter loads itself.
   * Without a usable Redis it simply runs `load` (the caller's in-process single-flight remains).
   */
  run<T>(ref: CacheRef, load: () => Promise<T>, lookup: () => Promise<T | undefined>): Promise<T>;
}

export function createCoalescer(opts: {
  redis: RedisStore | undefined;
  events: CacheEvents;
  metrics: CacheMetrics;
  /** The introspection timeout: lock lifetime and longest wait. */
  timeoutMs: number;
}): Coalescer {
  const { redis, events, metrics, timeoutMs } = opts;
  return {
    async run(ref, load, lookup) {
      if (redis === undefined || redis.state() !== 'ready') return load();
      const lockKey = redis.key(redisKeys.lock(ref.tag, ref.variant));
      const slot = ref.variant === '' ? ref.tag : `${ref.tag}.${ref.variant}`;
      const owner = randomUUID();
      const deadline = Date.now() + timeoutMs;
      let contended = false;
      for (;;) {
        const got = await redis.run((c) => c.set(lockKey, owner, 'PX', timeoutMs, 'NX'));
        if (got === undefined) return load(); // Redis trouble: no coordination, no waiting
        if (got === 'OK') {
          try {
            return await load();
          } finally {
            await redis.run((c) => c.eval(RELEASE, 1, lockKey, owner));
            await events.announceFill(slot);
          }
        }
        if (!contended) {
          contended = true;
          metrics.lockContention++;
        }
        const remaining = deadline - Date.now();
        if (remaining <= 0) {
          metrics.coalesceTimeouts++;
          return load();
        }
        await events.waitForFill(slot, Math.min(remaining, POLL_MS));
        const result = await lookup();
        if (result !== undefined) {
          metrics.coalescedWaits++;
          return result;
        }
      }
    },
  };
}
