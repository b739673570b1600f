import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CacheEntry } from '../../../src/cache/cache-entry.ts';
import { createCacheEvents } from '../../../src/cache/cache-events.ts';
import { createCacheKeyer } from '../../../src/cache/cache-key.ts';
import { createCacheMetrics } from '../../../src/cache/cache-metrics.ts';
import { createCoalescer } from '../../../src/cache/coalescer.ts';
import { createMemoryCache } from '../../../src/cache/memory-cache.ts';
import { createRedisStore, type RedisStore } from '../../../src/cache/redis-store.ts';
import {
  type CacheRef,
  createTieredCache,
  redisKeys,
  type TieredCache,
} from '../../../src/cache/tiered-cache.ts';
import { createValueCipher } from '../../../src/cache/value-crypto.ts';
import { silentLogger } from '../../../src/observability/logger.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import {
  cacheLevels,
  GATEWAY_ENV,
  type HaFixture,
  redisStateChanges,
  type SteadyLoop,
  startHaFixture,
  startSteadyLoop,
} from '../../helpers/ha-gateway.ts';
import { type RedisClusterHandle, startRedisCluster } from '../../helpers/redis-cluster.ts';

/**
 * The cache on a three-master Redis Cluster (real processes on free ports): multi-key commands
 * stay in one slot thanks to the per-token hash tag, purges and the cross-replica lock work, and a
 * master killed during steady traffic through two real gateway processes costs no request.
 */
const PREFIX = 'phantom:';
const SECRET = Buffer.from('cluster-test-secret-'.padEnd(48, 's'));
const keyer = createCacheKeyer(SECRET);

let cluster: RedisClusterHandle;
const stores: RedisStore[] = [];

beforeAll(async () => {
  cluster = await startRedisCluster();
}, 60_000);

afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await cluster?.stop();
});

async function readyStore(): Promise<RedisStore> {
  const store = createRedisStore(
    { cluster: cluster.nodes.map((n) => ({ ...n })), keyPrefix: PREFIX, commandTimeoutMs: 200 },
    { logger: silentLogger() },
  );
  stores.push(store);
  await waitFor(() => store.state() === 'ready', 10_000, 'cluster store ready');
  return store;
}

/** One gateway replica's cache: its own L1 and Redis connection, the shared secret. */
function replica(store: RedisStore): TieredCache {
  return createTieredCache({
    memory: createMemoryCache({ maxEntries: 1000 }),
    redis: store,
    cipher: createValueCipher(SECRET),
    // The tests store opaque "JWTs"; reviving one gives the entry back.
    revive: async (jwt) => ({ jwt, claims: {}, exp: Math.floor(Date.now() / 1000) + 300 }),
    metrics: createCacheMetrics(),
    variants: [''],
    clockSkewSeconds: 0,
    maxTtlSeconds: 900,
  });
}

const refOf = (token: string): CacheRef => ({ tag: keyer(token), variant: '', token });
const entryOf = (jwt: string, subTag?: string): CacheEntry => ({
  jwt,
  claims: {},
  exp: Math.floor(Date.now() / 1000) + 300,
  ...(subTag !== undefined ? { subTag } : {}),
});

describe('store and tiered cache on a Redis Cluster', () => {
  it('stores in one replica and finds it in another, for tokens spread over all three masters', async () => {
    const [one, two] = [replica(await readyStore()), replica(await readyStore())];
    const tokens = Array.from({ length: 40 }, (_, i) => `opaque-token-${i}-${'x'.repeat(20)}`);
    const owners = new Set<number>();
    for (const t of tokens) {
      await one.store(refOf(t), entryOf(`jwt-of-${t}`), 60);
      owners.add(await cluster.portOf(PREFIX + redisKeys.jwt(refOf(t).tag, '')));
    }
    expect(owners.size).toBe(3);
    for (const t of tokens) {
      // MGET of entry + verdict: one slot thanks to the {tag} hash tag (no CROSSSLOT).
      const r = await two.lookup(refOf(t));
      expect(r).toMatchObject({ kind: 'hit', level: 'l2', entry: { jwt: `jwt-of-${t}` } });
    }
    await one.storeInactive(refOf('bad-token'), 30);
    expect(await two.lookup(refOf('bad-token'))).toEqual({ kind: 'inactive', level: 'l2' });
  });

  it('purges by token and by subject index', async () => {
    const [one, two] = [replica(await readyStore()), replica(await readyStore())];
    const subTag = keyer('subject-alice');
    const tokens = ['alice-1', 'alice-2', 'alice-3'].map((t) => `${t}-${'y'.repeat(20)}`);
    for (const t of tokens) await one.store(refOf(t), entryOf(`jwt-${t}`, subTag), 60);

    // Purge one token by tag from the other replica.
    expect(await two.deleteRemote([refOf(tokens[0]!).tag])).toBe(1);
    expect(await one.lookup(refOf(tokens[0]!), { l2Only: true })).toEqual({ kind: 'miss' });

    // Purge by subject: the index (its own slot) lists every token of alice.
    const tags = await two.takeSubjectTags(subTag);
    expect(new Set(tags)).toEqual(new Set(tokens.map((t) => refOf(t).tag)));
    // (The count deleteRemote returns is not asserted for several tags: its parallel `n += await …`
    // loses updates — a tiered-cache.ts issue reported separately; what matters here is the state.)
    await two.deleteRemote(tags);
    for (const t of tokens) expect(await one.lookup(refOf(t), { l2Only: true })).toEqual({ kind: 'miss' });
    expect(await two.takeSubjectTags(subTag)).toEqual([]);
  });

  it('coalesces across replicas with the cluster lock: one load, the other waits for it', async () => {
    const stores2 = [await readyStore(), await readyStore()];
    const caches = stores2.map(replica);
    const coalescers = stores2.map((store) =>
      createCoalescer({
        redis: store,
        events: createCacheEvents(store, `${PREFIX}events`, silentLogger()),
        metrics: createCacheMetrics(),
        timeoutMs: 3000,
      }),
    );
    await sleep(300); // subscriptions in place
    const ref = refOf(`coalesced-${'z'.repeat(20)}`);
    let loads = 0;
    const load = (i: number) => async () => {
      loads++;
      await sleep(400);
      const entry = entryOf(`jwt-from-${i}`);
      await caches[i]!.store(ref, entry, 60);
      return entry.jwt;
    };
    const lookup = (i: number) => async () => {
      const r = await caches[i]!.lookup(ref, { l2Only: true });
      return r.kind === 'hit' ? r.entry.jwt : undefined;
    };
    const started = Date.now();
    const results = await Promise.all([
      coalescers[0]!.run(ref, load(0), lookup(0)),
      sleep(50).then(() => coalescers[1]!.run(ref, load(1), lookup(1))),
    ]);
    expect(loads).toBe(1);
    expect(results).toEqual(['jwt-from-0', 'jwt-from-0']);
    expect(Date.now() - started).toBeLessThan(3000);
    // The lock was released (compare-and-delete through EVAL on the lock's slot).
    const lockKey = PREFIX + redisKeys.lock(ref.tag, '');
    expect(await stores2[0]!.run((c) => c.exists(lockKey))).toBe(0);
  });

  it('publishes and receives cache events across the cluster', async () => {
    const [s1, s2] = [await readyStore(), await readyStore()];
    const got: string[] = [];
    s2.subscribe(`${PREFIX}events-test`, (m) => got.push(m));
    await waitFor(
      async () => {
        await s1.publish(`${PREFIX}events-test`, 'ping');
        return got.length > 0;
      },
      5000,
      'a published message to arrive',
    );
    expect(got[0]).toBe('ping');
  });
});

describe('store with no cluster node reachable', () => {
  it('is down and skips every call without waiting', async () => {
    const dead = await freePort();
    const store = createRedisStore(
      { cluster: [{ host: '127.0.0.1', port: dead }], keyPrefix: PREFIX, commandTimeoutMs: 200 },
      { logger: silentLogger() },
    );
    stores.push(store);
    await waitFor(() => store.state() === 'down', 5000, 'store down');
    const started = Date.now();
    expect(await store.get('x')).toBeUndefined();
    await store.set('x', 'v', 60);
    expect(await store.run((c) => c.get('x'))).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(100);
  });
});

describe('gateway on a Redis Cluster while a master dies', () => {
  let loop: SteadyLoop | undefined;
  let fx: HaFixture;
  let a: GatewayProcess;
  let b: GatewayProcess;

  beforeAll(async () => {
    fx = await startHaFixture();
    const redis = { cluster: cluster.nodes.map((n) => ({ ...n })), keyPrefix: PREFIX, commandTimeoutMs: 200 };
    [a, b] = await Promise.all([
      startGateway(fx.config(redis), { env: GATEWAY_ENV }),
      startGateway(fx.config(redis), { env: GATEWAY_ENV }),
    ]);
    await waitFor(
      () => [a, b].every((g) => redisStateChanges(g).at(-1)?.to === 'ready'),
      15_000,
      'both gateways to reach the cluster',
    );
  }, 60_000);

  afterAll(async () => {
    await loop?.stop(); // a failed wait leaves the loop running
    await Promise.all([a?.stop(), b?.stop()]);
    await fx?.close();
  });

  it('answers every request with 2xx when a master is SIGKILLed; its keys miss, the others still hit', async () => {
    const steady = startSteadyLoop({ a, b, token: fx.token, concurrency: 4, pauseMs: 10, maxMs: 45_000 });
    loop = steady;
    // Enough traffic before the kill, then past the cluster node timeout (2 s: the survivors have
    // marked the node failed) with enough requests after it — bounded, also on a slow machine.
    const countB = (from: number) => steady.samples().filter((s) => s.replica === 'B' && s.at >= from).length;
    await sleep(1000);
    await waitFor(() => countB(0) >= 20, 20_000, 'traffic before the kill');
    const victim = cluster.ports[0]!;
    const killedAt = Date.now();
    await cluster.kill(victim);
    await sleep(4000);
    await waitFor(() => countB(killedAt) >= 60, 20_000, 'traffic after the kill');
    const samples = await steady.stop();

    const bad = samples.filter((s) => s.status < 200 || s.status > 299);
    expect(bad).toEqual([]);
    expect(samples.every((s) => s.ms < 5000)).toBe(true);

    await sleep(300); // access lines are written after the response
    const levels = cacheLevels(b);
    const bSamples = samples.filter((s) => s.replica === 'B');
    const before = bSamples.filter((s) => s.at < killedAt);
    const after = bSamples.filter((s) => s.at >= killedAt);
    const missedBefore = before.filter((s) => levels.get(s.requestId) !== 'l2').length;
    const missedAfter = after.filter((s) => levels.get(s.requestId) !== 'l2').length;
    console.info(
      `cluster master ${victim} SIGKILLed: ${samples.length} requests, all 2xx, slowest ${Math.max(...samples.map((s) => s.ms))} ms; ` +
        `replica-B requests that missed Redis: ${missedBefore} of ${before.length} before the kill, ` +
        `${missedAfter} of ${after.length} after (≈ the dead master's share of the slots)`,
    );
    // Keys on the two live masters still hit in L2; only the dead master's third misses.
    expect(missedAfter).toBeGreaterThan(0);
    expect(missedAfter).toBeLessThan(after.length * 0.7);
    // One dead node does not take the whole cluster out of service.
    expect(redisStateChanges(a).at(-1)?.to).toBe('ready');
    expect(redisStateChanges(b).at(-1)?.to).toBe('ready');
  }, 60_000);
});
