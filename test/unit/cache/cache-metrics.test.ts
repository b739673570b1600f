import { describe, expect, it } from 'vitest';
import { cacheMetricsSnapshot, createCacheMetrics } from '../../../src/cache/cache-metrics.ts';

describe('cache metrics', () => {
  it('starts every counter at zero', () => {
    expect(Object.values(createCacheMetrics()).every((v) => v === 0)).toBe(true);
  });
  it('adds Redis errors and circuit state to a snapshot, and reports disabled without Redis', () => {
    const m = createCacheMetrics();
    m.hitsL1 = 3;
    expect(cacheMetricsSnapshot(m, { errors: () => 7, state: () => 'down' })).toMatchObject({
      hitsL1: 3,
      redisErrors: 7,
      redisState: 'down',
    });
    expect(cacheMetricsSnapshot(m, undefined)).toMatchObject({ redisErrors: 0, redisState: 'disabled' });
  });
  it('is a copy: later increments do not change an earlier snapshot', () => {
    const m = createCacheMetrics();
    const snap = cacheMetricsSnapshot(m, undefined);
    m.misses++;
    expect(snap.misses).toBe(0);
  });
});
