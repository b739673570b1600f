import { describe, expect, it } from 'vitest';
import type { CacheEntry } from '../../../src/cache/cache-entry.ts';
import { createMemoryCache, MAX_INACTIVE_ENTRIES } from '../../../src/cache/memory-cache.ts';

const T0 = 1_700_000_000_000; // epoch ms

function fakeClock(start = T0) {
  let t = start;
  return {
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    },
  };
}

const entry = (expSeconds: number, sub = 's'): CacheEntry => ({
  jwt: `jwt-${sub}`,
  claims: { sub },
  exp: expSeconds,
});
const farExp = T0 / 1000 + 3600;

describe('memory cache (L1)', () => {
  it('returns what was set', () => {
    const c = createMemoryCache({ maxEntries: 10, now: fakeClock().now });
    const e = entry(farExp);
    c.set('k', e, 60);
    expect(c.get('k')).toBe(e);
    expect(c.size).toBe(1);
  });

  it('evicts the least recently used entry at maxEntries', () => {
    const c = createMemoryCache({ maxEntries: 3, now: fakeClock().now });
    c.set('a', entry(farExp, 'a'), 60);
    c.set('b', entry(farExp, 'b'), 60);
    c.set('c', entry(farExp, 'c'), 60);
    expect(c.get('a')).toBeDefined(); // a is now the most recently used
    c.set('d', entry(farExp, 'd'), 60);
    expect(c.size).toBe(3);
    expect(c.get('b')).toBeUndefined();
    expect(c.get('a')).toBeDefined();
    expect(c.get('c')).toBeDefined();
    expect(c.get('d')).toBeDefined();
  });

  it('never holds more than maxEntries', () => {
    const c = createMemoryCache({ maxEntries: 100, now: fakeClock().now });
    for (let i = 0; i < 1000; i++) c.set(`k${i}`, entry(farExp), 60);
    expect(c.size).toBe(100);
  });

  it('stops returning an entry when its TTL has passed', () => {
    const clock = fakeClock();
    const c = createMemoryCache({ maxEntries: 10, now: clock.now });
    c.set('k', entry(farExp), 10);
    clock.advance(9_999);
    expect(c.get('k')).toBeDefined();
    clock.advance(1);
    expect(c.get('k')).toBeUndefined();
  });

  it('stops returning an entry once its JWT has expired, even within the TTL', () => {
    const clock = fakeClock();
    const c = createMemoryCache({ maxEntries: 10, now: clock.now });
    c.set('k', entry(T0 / 1000 + 5), 60); // TTL longer than the JWT lives
    clock.advance(4_999);
    expect(c.get('k')).toBeDefined();
    clock.advance(1);
    expect(c.get('k')).toBeUndefined();
  });

  it('does not store an entry with a TTL ≤ 0', () => {
    const c = createMemoryCache({ maxEntries: 10, now: fakeClock().now });
    c.set('a', entry(farExp), 0);
    c.set('b', entry(farExp), -5);
    c.set('c', entry(farExp), Number.NaN);
    expect(c.size).toBe(0);
  });

  it('deletes an entry', () => {
    const c = createMemoryCache({ maxEntries: 10, now: fakeClock().now });
    c.set('k', entry(farExp), 60);
    c.delete('k');
    expect(c.get('k')).toBeUndefined();
  });

  it('remembers an inactive verdict for its TTL', () => {
    const clock = fakeClock();
    const c = createMemoryCache({ maxEntries: 10, now: clock.now });
    c.setInactive('k', 5);
    expect(c.isInactive('k')).toBe(true);
    expect(c.isInactive('other')).toBe(false);
    clock.advance(5_000);
    expect(c.isInactive('k')).toBe(false);
  });

  it('keeps inactive verdicts apart from entries', () => {
    const c = createMemoryCache({ maxEntries: 10, now: fakeClock().now });
    c.setInactive('k', 5);
    expect(c.get('k')).toBeUndefined();
    expect(c.size).toBe(0);
    c.setInactive('z', 0);
    expect(c.isInactive('z')).toBe(false);
  });

  it('bounds the negative cache: 50 000 inactive keys never exceed min(maxEntries, 10 000)', () => {
    const big = createMemoryCache({ maxEntries: 1_000_000, now: fakeClock().now });
    for (let i = 0; i < 50_000; i++) {
      big.setInactive(`scan-${i}`, 60);
      if (i % 5000 === 0) expect(big.inactiveSize).toBeLessThanOrEqual(MAX_INACTIVE_ENTRIES);
    }
    expect(big.inactiveSize).toBe(MAX_INACTIVE_ENTRIES);
    expect(big.isInactive('scan-49999')).toBe(true);
    expect(big.isInactive('scan-0')).toBe(false);
    expect(big.size).toBe(0);

    const small = createMemoryCache({ maxEntries: 500, now: fakeClock().now });
    for (let i = 0; i < 50_000; i++) small.setInactive(`scan-${i}`, 60);
    expect(small.inactiveSize).toBe(500);
  });

  it('rejects a maxEntries below 1', () => {
    expect(() => createMemoryCache({ maxEntries: 0 })).toThrow();
  });
});
