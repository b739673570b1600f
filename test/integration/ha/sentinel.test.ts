import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCacheKeyer } from '../../../src/cache/cache-key.ts';
import { createRedisStore, type RedisStore } from '../../../src/cache/redis-store.ts';
import { silentLogger } from '../../../src/observability/logger.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import {
  CACHE_KEY,
  cacheLevels,
  GATEWAY_ENV,
  type HaFixture,
  redisStateChanges,
  type SteadyLoop,
  startHaFixture,
  startSteadyLoop,
} from '../../helpers/ha-gateway.ts';
import { request } from '../../helpers/http.ts';
import { parseInfo, withClient } from '../../helpers/redis-process.ts';
import { type SentinelSet, startSentinelSet } from '../../helpers/redis-sentinel.ts';

/**
 * The cache through Redis Sentinel (one master, one replica, three sentinels, all real processes
 * on free ports): the store follows the master a failover elects, and a failover during steady
 * traffic through two real gateway processes costs no request.
 */
const DATA_PASSWORD = 'data-secret-1';
const SENTINEL_PASSWORD = 'sentinel-secret-1';

let set: SentinelSet;
const stores: RedisStore[] = [];

beforeAll(async () => {
  set = await startSentinelSet({ password: DATA_PASSWORD, sentinelPassword: SENTINEL_PASSWORD });
}, 60_000);

afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await set?.stop();
});

function sentinelConfig() {
  return {
    sentinels: set.sentinels.map((s) => ({ ...s })),
    name: set.name,
    password: DATA_PASSWORD,
    sentinelPassword: SENTINEL_PASSWORD,
    keyPrefix: 'phantom:',
    commandTimeoutMs: 200,
  };
}

async function readyStore(): Promise<RedisStore> {
  const store = createRedisStore(sentinelConfig(), { logger: silentLogger() });
  stores.push(store);
  await waitFor(() => store.state() === 'ready', 10_000, 'store ready through the sentinels');
  return store;
}

const getOn = (port: number, key: string) => withClient(port, (c) => c.get(key), { password: DATA_PASSWORD });
const roleOf = async (port: number) =>
  parseInfo(await withClient(port, (c) => c.info('replication'), { password: DATA_PASSWORD })).get('role');

describe('store through Redis Sentinel', () => {
  it('finds the master through the sentinels and writes there', async () => {
    const store = await readyStore();
    await store.set('s1', 'v1', 60);
    expect(await store.get('s1')).toBe('v1');
    const master = await set.masterPort();
    expect(await roleOf(master)).toBe('master');
    expect(await getOn(master, 'phantom:s1')).toBe('v1');
  });

  it('follows a failover: misses for a moment at most, then writes to the new master', async () => {
    const store = await readyStore();
    let stop = false;
    let ok = 0;
    let missed = 0;
    const loop = (async () => {
      for (let i = 0; i < 10_000 && !stop; i++) {
        await store.set(`loop-${i}`, 'v', 60);
        if ((await store.get(`loop-${i}`)) === 'v') ok++;
        else missed++;
        await sleep(5);
      }
    })();
    await sleep(300);
    const { from, to, ms } = await set.failover();
    expect(to).not.toBe(from);
    await waitFor(() => store.state() === 'ready', 10_000, 'store ready after the failover');
    await sleep(300);
    stop = true;
    await loop;

    await store.set('after-failover', 'new', 60);
    expect(await store.get('after-failover')).toBe('new');
    expect(await roleOf(to)).toBe('master');
    expect(await getOn(to, 'phantom:after-failover')).toBe('new');
    console.info(
      `sentinel failover (store): ${ms} ms until every sentinel reported the new master; ${ok} round trips ok, ${missed} missed`,
    );
    expect(ok).toBeGreaterThan(0);
  });
});

describe('store with no sentinel reachable', () => {
  it('is down (not connecting forever) and skips every call without waiting', async () => {
    const dead = await freePort();
    const store = createRedisStore(
      {
        sentinels: [{ host: '127.0.0.1', port: dead }],
        name: 'mymaster',
        keyPrefix: 'phantom:',
        commandTimeoutMs: 200,
      },
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

describe('gateway through Redis Sentinel during a failover', () => {
  let loop: SteadyLoop | undefined;
  let fx: HaFixture;
  let a: GatewayProcess;
  let b: GatewayProcess;

  beforeAll(async () => {
    fx = await startHaFixture();
    const env = { ...GATEWAY_ENV, REDIS_PASSWORD: DATA_PASSWORD, SENTINEL_PASSWORD };
    const redis = {
      ...sentinelConfig(),
      password: '${REDIS_PASSWORD}',
      sentinelPassword: '${SENTINEL_PASSWORD}',
    };
    [a, b] = await Promise.all([
      startGateway(fx.config(redis), { env }),
      startGateway(fx.config(redis), { env }),
    ]);
    await waitFor(
      () => [a, b].every((g) => redisStateChanges(g).at(-1)?.to === 'ready'),
      15_000,
      'both gateways to reach Redis',
    );
  }, 60_000);

  afterAll(async () => {
    await loop?.stop(); // a failed wait leaves the loop running
    await Promise.all([a?.stop(), b?.stop()]);
    await fx?.close();
  });

  it('answers every request of a steady loop with 2xx while the master fails over', async () => {
    // Warm-up: replica B reads what A cached, through Redis.
    const warm = await fx.token();
    expect(
      (await request(`${a.url}/api/invoices/1`, { headers: { authorization: `Bearer ${warm}` } })).status,
    ).toBe(200);
    const res = await request(`${b.url}/api/invoices/1`, { headers: { authorization: `Bearer ${warm}` } });
    expect(res.status).toBe(200);
    await waitFor(() => cacheLevels(b).has(String(res.headers['x-request-id'])), 5000, 'access line');
    expect(cacheLevels(b).get(String(res.headers['x-request-id']))).toBe('l2');

    const steady = startSteadyLoop({ a, b, token: fx.token, concurrency: 4, pauseMs: 10, maxMs: 45_000 });
    loop = steady;
    // Enough traffic before and after the failover — bounded, also on a slow machine.
    const countB = (from: number) => steady.samples().filter((s) => s.replica === 'B' && s.at >= from).length;
    await sleep(1000);
    await waitFor(() => countB(0) >= 20, 20_000, 'traffic before the failover');
    const failoverAt = Date.now();
    const { from, to, ms } = await set.failover();
    // Both gateways reconnected (to the new master) after the failover started.
    await waitFor(
      () =>
        [a, b].every((g) => {
          const last = redisStateChanges(g).at(-1);
          return last?.to === 'ready' && last.at >= failoverAt - 50;
        }),
      15_000,
      'both gateways to reconnect after the failover',
    );
    await sleep(1000);
    await waitFor(() => countB(failoverAt) >= 40, 20_000, 'traffic after the failover');
    const samples = await steady.stop();

    const bad = samples.filter((s) => s.status < 200 || s.status > 299);
    expect(bad).toEqual([]);
    expect(samples.every((s) => s.ms < 5000)).toBe(true);

    // B's requests: an L2 hit when Redis worked, an introspection when it missed.
    await sleep(300); // access lines are written after the response
    const levels = cacheLevels(b);
    const bSamples = samples.filter((s) => s.replica === 'B');
    const missed = bSamples.filter((s) => levels.get(s.requestId) !== 'l2');
    const duringFailover = bSamples.filter((s) => s.at >= failoverAt);
    const downWindows = [a, b].map((g) => {
      const changes = redisStateChanges(g).filter((c) => c.at >= failoverAt - 50);
      const down = changes.find((c) => c.to === 'down');
      const up = changes.find((c) => c.to === 'ready');
      return down && up ? up.at - down.at : 0;
    });
    console.info(
      `sentinel failover (gateway): ${ms} ms until every sentinel reported ${to} (was ${from}); ` +
        `store down ${downWindows.join(' / ')} ms (A / B); ${samples.length} requests, all 2xx; ` +
        `${missed.length} of ${bSamples.length} replica-B requests missed Redis ` +
        `(${duringFailover.length} sent after the failover began); slowest ${Math.max(...samples.map((s) => s.ms))} ms`,
    );
    // Redis is used again after the failover: most of B's requests were L2 hits.
    expect(missed.length).toBeLessThan(bSamples.length / 2);

    // After the failover the cache writes to the new master.
    expect(await roleOf(to)).toBe('master');
    const t = await fx.token();
    expect(
      (await request(`${a.url}/api/invoices/1`, { headers: { authorization: `Bearer ${t}` } })).status,
    ).toBe(200);
    const tag = createCacheKeyer(CACHE_KEY)(t);
    await waitFor(
      async () =>
        (await withClient(to, (c) => c.keys(`phantom:{${tag}}:jwt*`), { password: DATA_PASSWORD })).length ===
        1,
      5000,
      'the new entry on the new master',
    );
  }, 60_000);
});
