import { randomUUID } from 'node:crypto';
import type { CacheEvents } from './cache-events.ts';
import type { CacheMetrics } from './cache-metrics.ts';
import type { RedisStore } from './redis-store.ts';
import { type CacheRef, redisKeys, slotOf } from './tiered-cache.ts';

/** Compare-and-delete: only the owner releases its lock. */
const RELEASE =
  "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/** Compare-and-extend: only the owner renews its lock. */
const RENEW =
  "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

/** How often a waiter re-reads L2 when no fill notification arrives (pub/sub is the fast path). */
export const POLL_MS = 50;

/**
 * The lock's lease: a third of the timeout (at least 100 ms, at most the timeout). A live holder
 * renews it (compare-and-extend) while its load runs, but never past `timeoutMs` after taking it;
 * a dead holder's lock therefore expires within one lease, early enough for the waiter that takes
 * over to finish while the others still wait (their wait is bounded by `timeoutMs`). With a lock
 * as long as the wait, every waiter's deadline would pass together with the dead lock and each
 * replica would introspect.
 */
function leaseMs(timeoutMs: number): number {
  return Math.min(timeoutMs, Math.max(100, Math.ceil(timeoutMs / 3)));
}

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
  /** The introspection timeout: longest lock lifetime (a renewed lease, see `leaseMs`) and longest wait. */
  timeoutMs: number;
}): Coalescer {
  const { redis, events, metrics, timeoutMs } = opts;
  return {
    async run(ref, load, lookup) {
      if (redis === undefined || redis.state() !== 'ready') return load();
      const lockKey = redis.key(redisKeys.lock(ref.tag, ref.variant));
      const slot = slotOf(ref);
      const owner = randomUUID();
      const deadline = Date.now() + timeoutMs;
      const lease = leaseMs(timeoutMs);
      let contended = false;
      for (;;) {
        const got = await redis.run((c) => c.set(lockKey, owner, 'PX', lease, 'NX'));
        if (got === undefined) return load(); // Redis trouble: no coordination, no waiting
        if (got === 'OK') {
          const stopRenewing = renewWhileLoading(redis, lockKey, owner, lease, Date.now() + timeoutMs);
          try {
            // The previous holder may have filled L2 and released between our lookup and our
            // SET NX: look once more before introspecting (else a second introspection).
            const filled = await lookup();
            if (filled !== undefined) return filled;
            return await load();
          } finally {
            stopRenewing();
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

/**
 * Renews the holder's lock every third of a lease while its load runs, never beyond `until` (the
 * lock then lives at most `timeoutMs` in all, as before). Stops when the lock is no longer ours.
 * Redis trouble just skips a renewal. Returns the stop function.
 */
function renewWhileLoading(
  redis: RedisStore,
  lockKey: string,
  owner: string,
  lease: number,
  until: number,
): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(tick, Math.max(10, Math.floor(lease / 3)));
    timer.unref();
  };
  const tick = () => {
    timer = undefined;
    const left = until - Date.now();
    if (stopped || left <= 0) return;
    void redis
      .run((c) => c.eval(RENEW, 1, lockKey, owner, Math.min(lease, left)))
      .then((renewed) => {
        if (renewed === 0) stopped = true; // expired or taken over: nothing left to renew
        schedule();
      });
  };
  schedule();
  return () => {
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
  };
}
