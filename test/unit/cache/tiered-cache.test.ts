import { describe, expect, it } from 'vitest';
import type { CacheEntry } from '../../../src/cache/cache-entry.ts';
import { createMemoryCache } from '../../../src/cache/memory-cache.ts';
import type { RedisState, RedisStore } from '../../../src/cache/redis-store.ts';
import { createTieredCache } from '../../../src/cache/tiered-cache.ts';

const T0 = 1_700_000_000_000;
const nowS = T0 / 1000;

/** An in-memory stand-in for RedisStore (the real one is tested against redis-server). */
function fakeStore(opts: { failing?: boolean } = {}) {
  const data = new Map<string, { value: string; ttl: number }>();
  let gets = 0;
  const store: RedisStore = {
    async get(key) {
      gets++;
      if (opts.failing) throw new Error('down');
      return data.get(key)?.value;
    },
    async set(key, value, ttl) {
      if (opts.failing) throw new Error('down');
      data.set(key, { value, ttl });
    },
    state: (): RedisState => 'ready',
    ping: async () => true,
    errors: () => 0,
    close: async () => {},
  };
  return { store, data, gets: () => gets };
}

const entryFor = (jwt: string, exp: number): CacheEntry => ({ jwt, claims: { sub: jwt }, exp });
const reviveOk = async (jwt: string) => entryFor(jwt, nowS + 300);

describe('tiered cache', () => {
  it('serves from L1 without asking L2', async () => {
    const l2 = fakeStore();
    const memory = createMemoryCache({ maxEntries: 10, now: () => T0 });
    const c = createTieredCache({ memory, redis: l2.store, revive: reviveOk, now: () => T0 });
    await c.set('k', entryFor('jwt1', nowS + 300), 60);
    expect(await c.get('k')).toEqual({ entry: entryFor('jwt1', nowS + 300), level: 'l1' });
    expect(l2.gets()).toBe(0);
  });

  it('writes through to L2 with the JWT and the same TTL', async () => {
    const l2 = fakeStore();
    const c = createTieredCache({
      memory: createMemoryCache({ maxEntries: 10 }),
      redis: l2.store,
      revive: reviveOk,
    });
    await c.set('k', entryFor('jwt1', nowS + 300), 60);
    expect(l2.data.get('k')).toEqual({ value: 'jwt1', ttl: 60 });
  });

  it('writes the given l2Value instead of the JWT when one is passed', async () => {
    const l2 = fakeStore();
    const c = createTieredCache({
      memory: createMemoryCache({ maxEntries: 10 }),
      redis: l2.store,
      revive: reviveOk,
    });
    await c.set('k', entryFor('jwt1', nowS + 300), 60, { l2Value: 'sealed' });
    expect(l2.data.get('k')?.value).toBe('sealed');
  });

  it('on an L1 miss revives the L2 value and fills L1 with a TTL derived from exp', async () => {
    const l2 = fakeStore();
    l2.data.set('k', { value: 'jwt-from-l2', ttl: 100 });
    const memory = createMemoryCache({ maxEntries: 10, now: () => T0 });
    const c = createTieredCache({
      memory,
      redis: l2.store,
      revive: async (jwt) => entryFor(jwt, nowS + 100),
      now: () => T0,
      clockSkewSeconds: 30,
    });
    expect(await c.get('k')).toMatchObject({ level: 'l2', entry: { jwt: 'jwt-from-l2' } });
    expect(memory.get('k')?.jwt).toBe('jwt-from-l2');
    expect(await c.get('k')).toMatchObject({ level: 'l1' });
    expect(l2.gets()).toBe(1);
  });

  it('fills L1 no longer than exp − skew', async () => {
    let t = T0;
    const l2 = fakeStore();
    l2.data.set('k', { value: 'jwt', ttl: 100 });
    const memory = createMemoryCache({ maxEntries: 10, now: () => t });
    const c = createTieredCache({
      memory,
      redis: l2.store,
      revive: async (jwt) => entryFor(jwt, nowS + 100),
      now: () => t,
      clockSkewSeconds: 30,
    });
    await c.get('k');
    t = T0 + 69_000;
    expect(memory.get('k')).toBeDefined();
    t = T0 + 70_000;
    expect(memory.get('k')).toBeUndefined();
  });

  it('returns a valid L2 hit without filling L1 when it expires within the skew', async () => {
    const l2 = fakeStore();
    l2.data.set('k', { value: 'jwt', ttl: 10 });
    const memory = createMemoryCache({ maxEntries: 10, now: () => T0 });
    const c = createTieredCache({
      memory,
      redis: l2.store,
      revive: async (jwt) => entryFor(jwt, nowS + 10),
      now: () => T0,
      clockSkewSeconds: 30,
    });
    expect(await c.get('k')).toMatchObject({ level: 'l2' });
    expect(memory.size).toBe(0);
  });

  it('treats an L2 value that revive rejects (undefined or throwing) as a miss', async () => {
    const l2 = fakeStore();
    l2.data.set('k', { value: 'forged', ttl: 100 });
    const memory = createMemoryCache({ maxEntries: 10 });
    const c1 = createTieredCache({ memory, redis: l2.store, revive: async () => undefined });
    expect(await c1.get('k')).toBeUndefined();
    const c2 = createTieredCache({
      memory,
      redis: l2.store,
      revive: async () => {
        throw new Error('bad signature');
      },
    });
    expect(await c2.get('k')).toBeUndefined();
    expect(memory.size).toBe(0);
  });

  it('uses a per-call revive when given', async () => {
    const l2 = fakeStore();
    l2.data.set('k', { value: 'sealed', ttl: 100 });
    const c = createTieredCache({
      memory: createMemoryCache({ maxEntries: 10 }),
      redis: l2.store,
      revive: async () => undefined,
    });
    const hit = await c.get('k', { revive: async (v) => entryFor(`opened-${v}`, Date.now() / 1000 + 300) });
    expect(hit?.entry.jwt).toBe('opened-sealed');
  });

  it('keeps working on L1 when the L2 store fails', async () => {
    const l2 = fakeStore({ failing: true });
    const c = createTieredCache({
      memory: createMemoryCache({ maxEntries: 10 }),
      redis: l2.store,
      revive: reviveOk,
    });
    await expect(c.set('k', entryFor('jwt', Date.now() / 1000 + 300), 60)).resolves.toBeUndefined();
    expect((await c.get('k'))?.level).toBe('l1');
    expect(await c.get('other')).toBeUndefined();
  });

  it('runs on L1 alone without a store', async () => {
    const c = createTieredCache({ memory: createMemoryCache({ maxEntries: 10 }), revive: reviveOk });
    await c.set('k', entryFor('jwt', Date.now() / 1000 + 300), 60);
    expect((await c.get('k'))?.level).toBe('l1');
    expect(await c.get('missing')).toBeUndefined();
  });

  it('stores nothing for a TTL ≤ 0', async () => {
    const l2 = fakeStore();
    const memory = createMemoryCache({ maxEntries: 10 });
    const c = createTieredCache({ memory, redis: l2.store, revive: reviveOk });
    await c.set('k', entryFor('jwt', Date.now() / 1000 + 300), 0);
    expect(memory.size).toBe(0);
    expect(l2.data.size).toBe(0);
  });

  it('delegates inactive verdicts and delete to L1', async () => {
    const memory = createMemoryCache({ maxEntries: 10 });
    const c = createTieredCache({ memory, revive: reviveOk });
    c.setInactive('bad', 5);
    expect(c.isInactive('bad')).toBe(true);
    expect(memory.isInactive('bad')).toBe(true);
    await c.set('k', entryFor('jwt', Date.now() / 1000 + 300), 60);
    c.delete('k');
    expect(await c.get('k')).toBeUndefined();
  });
});
