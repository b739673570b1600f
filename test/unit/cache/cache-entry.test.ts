import { describe, expect, it } from 'vitest';
import { cacheTtlSeconds } from '../../../src/cache/cache-entry.ts';

describe('cacheTtlSeconds', () => {
  const now = 1_700_000_000;

  it('caches until the JWT expires minus the clock skew', () => {
    expect(cacheTtlSeconds(now + 300, now, 30, 900)).toBe(270);
  });

  it('never caches longer than maxTtlSeconds', () => {
    expect(cacheTtlSeconds(now + 3600, now, 30, 900)).toBe(900);
  });

  it('uses the token service max-age when it is the smallest bound', () => {
    expect(cacheTtlSeconds(now + 3600, now, 30, 900, 60)).toBe(60);
  });

  it('ignores a max-age larger than the other bounds', () => {
    expect(cacheTtlSeconds(now + 300, now, 30, 900, 10_000)).toBe(270);
  });

  it('returns a non-positive TTL (do not cache) for a JWT that expires within the clock skew', () => {
    expect(cacheTtlSeconds(now + 20, now, 30, 900)).toBeLessThanOrEqual(0);
    expect(cacheTtlSeconds(now + 30, now, 30, 900)).toBeLessThanOrEqual(0);
  });

  it('returns a non-positive TTL for an already expired JWT', () => {
    expect(cacheTtlSeconds(now - 10, now, 0, 900)).toBeLessThanOrEqual(0);
  });

  it('returns a non-positive TTL for max-age 0', () => {
    expect(cacheTtlSeconds(now + 300, now, 30, 900, 0)).toBeLessThanOrEqual(0);
  });

  it('rounds down to whole seconds', () => {
    expect(cacheTtlSeconds(now + 100, now + 0.6, 0, 900)).toBe(99);
  });

  it('returns 0 (do not cache) for a non-numeric exp', () => {
    expect(cacheTtlSeconds(Number.NaN, now, 30, 900)).toBe(0);
  });
});
