/**
 * The cache's counters, kept in one place so the operations issue's `/metrics` can expose them
 * (SPEC §10) without touching the cache code. Plain numbers: incrementing one is free.
 */
export interface CacheMetrics {
  hitsL1: number;
  hitsL2: number;
  misses: number;
  negativeHitsL1: number;
  negativeHitsL2: number;
  /** Requests that waited for another replica's introspection instead of introspecting. */
  coalescedWaits: number;
  /** Lock attempts that found the lock already held by another replica. */
  lockContention: number;
  /** Waits that reached their deadline (lock holder died or slow) and introspected themselves. */
  coalesceTimeouts: number;
  /** L2 values that did not decrypt or verify (tampered, foreign, stale key): treated as misses. */
  l2Rejected: number;
  purges: number;
  purgedEntries: number;
}

export function createCacheMetrics(): CacheMetrics {
  return {
    hitsL1: 0,
    hitsL2: 0,
    misses: 0,
    negativeHitsL1: 0,
    negativeHitsL2: 0,
    coalescedWaits: 0,
    lockContention: 0,
    coalesceTimeouts: 0,
    l2Rejected: 0,
    purges: 0,
    purgedEntries: 0,
  };
}

/** Every cache counter at one moment, Redis' error count and circuit state included. */
export function cacheMetricsSnapshot(
  metrics: CacheMetrics,
  redis: { errors(): number; state(): string } | undefined,
): CacheMetrics & { redisErrors: number; redisState: string } {
  return { ...metrics, redisErrors: redis?.errors() ?? 0, redisState: redis?.state() ?? 'disabled' };
}
