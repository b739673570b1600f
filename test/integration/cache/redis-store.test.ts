import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createRedisStore, type RedisState, type RedisStore } from '../../../src/cache/redis-store.ts';
import { createLogger, silentLogger } from '../../../src/observability/logger.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { guard, pollUntil as waitFor } from '../../helpers/wait.ts';

const PREFIX = 'phantom-test:';
// Generous enough for a loaded CI machine; the failure tests only need "bounded", not "fast".
const COMMAND_TIMEOUT_MS = 250;

/** Fails (rejects) if `p` has not settled within `ms`: "resolves quickly" without timing assertions. */

/** A pino logger (the project's own config) writing JSON lines into an array. */
function capturingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const raw: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line.trim() === '') continue;
        raw.push(line);
        lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      cb();
    },
  });
  const logger = createLogger({ level: 'debug', destination: stream });
  const stateChanges = () => lines.filter((l) => l['msg'] === 'redis state changed');
  return { logger, lines, raw, stateChanges };
}

const servers: RedisServerHandle[] = [];
const stores: RedisStore[] = [];
const clients: Redis[] = [];

async function newServer(opts: { password?: string } = {}): Promise<RedisServerHandle> {
  const s = await startRedisServer(opts);
  servers.push(s);
  return s;
}

function newStore(
  url: string,
  logger = silentLogger(),
  extra: { onStateChange?: (s: RedisState) => void } = {},
) {
  const store = createRedisStore(
    { url, keyPrefix: PREFIX, commandTimeoutMs: COMMAND_TIMEOUT_MS },
    { logger, ...extra },
  );
  stores.push(store);
  return store;
}

async function readyStore(
  url: string,
  logger = silentLogger(),
  extra: { onStateChange?: (s: RedisState) => void } = {},
) {
  const store = newStore(url, logger, extra);
  await waitFor(() => store.state() === 'ready', 'store ready');
  return store;
}

/** A plain client to inspect what the store wrote. */
async function inspector(url: string): Promise<Redis> {
  const c = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  c.on('error', () => {});
  clients.push(c);
  await guard(c.connect(), 5000, 'inspector connect');
  return c;
}

afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => guard(s.close(), 5000, 'store close')));
  for (const c of clients.splice(0)) c.disconnect();
});

afterAll(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});

describe('redis store against a real redis-server', () => {
  let server: RedisServerHandle;
  beforeAll(async () => {
    server = await newServer();
  });

  it('reaches ready and round-trips a value', async () => {
    const store = await readyStore(server.url);
    await store.set('round-trip', 'value-1', 60);
    expect(await store.get('round-trip')).toBe('value-1');
    expect(await store.get('never-written')).toBeUndefined();
    expect(await store.ping()).toBe(true);
    expect(store.errors()).toBe(0);
  });

  it('writes every key under the prefix and with a TTL no longer than asked', async () => {
    const store = await readyStore(server.url);
    const inspect = await inspector(server.url);
    await inspect.flushdb();
    await store.set('a', 'va', 60);
    await store.set('b', 'vb', 1);
    await store.set('c', 'vc', 2.9); // whole seconds, rounded down
    await store.set('zero', 'never', 0); // not written: no key without TTL, none with TTL 0
    await store.set('negative', 'never', -1);

    const keys = (await inspect.keys('*')).sort();
    expect(keys).toEqual([`${PREFIX}a`, `${PREFIX}b`, `${PREFIX}c`]);
    expect(await inspect.get(`${PREFIX}a`)).toBe('va');
    const ttls: Record<string, number> = { a: 60, b: 1, c: 2 };
    for (const [k, max] of Object.entries(ttls)) {
      const ttl = await inspect.ttl(`${PREFIX}${k}`);
      expect(ttl, `TTL of ${k}`).toBeGreaterThan(0);
      expect(ttl, `TTL of ${k}`).toBeLessThanOrEqual(max);
    }
  });

  it('fails immediately (no waiting) before the first connection is ready', async () => {
    const store = newStore(server.url);
    expect(store.state()).toBe('connecting');
    expect(await guard(store.get('x'), 2000, 'get while connecting')).toBeUndefined();
    await guard(store.set('x', 'v', 10), 2000, 'set while connecting');
    expect(store.errors()).toBe(2);
    await waitFor(() => store.state() === 'ready', 'ready');
  });

  it('closes gracefully; get/set are no-ops afterwards', async () => {
    const store = await readyStore(server.url);
    await guard(store.close(), 3000, 'close');
    expect(store.state()).toBe('down');
    expect(await guard(store.get('x'))).toBeUndefined();
    await guard(store.set('x', 'v', 10));
    expect(await store.ping()).toBe(false);
    await guard(store.close(), 3000, 'second close');
  });
});

describe('when Redis is killed and restarted', () => {
  let server: RedisServerHandle;
  let store: RedisStore;
  let logs: ReturnType<typeof capturingLogger>;
  const states: RedisState[] = [];
  const consoleError = vi.spyOn(console, 'error');

  beforeAll(async () => {
    server = await newServer({ password: 's3cr3t-pw' });
    logs = capturingLogger();
    store = createRedisStore(
      { url: server.url, keyPrefix: PREFIX, commandTimeoutMs: COMMAND_TIMEOUT_MS },
      { logger: logs.logger, onStateChange: (s) => states.push(s) },
    );
    await waitFor(() => store.state() === 'ready', 'store ready');
    await store.set('survivor', 'before-kill', 60);
    expect(await store.get('survivor')).toBe('before-kill');
  });

  afterAll(async () => {
    await store.close();
    consoleError.mockRestore();
  });

  it('keeps get/set resolving (misses), goes down, and logs one warn line for the change', async () => {
    const errorsBefore = store.errors();
    await server.kill();

    // Hammer the store while ioredis notices and keeps reconnecting (bounded: 1.5 s, 300 rounds).
    const until = Date.now() + 1500;
    let rounds = 0;
    while (Date.now() < until && rounds < 300) {
      expect(await guard(store.get('survivor'), 2000, 'get after kill')).toBeUndefined();
      await guard(store.set(`k${rounds}`, 'v', 60), 2000, 'set after kill');
      rounds++;
      await sleep(5);
    }
    expect(store.state()).toBe('down');
    expect(await guard(store.ping(), 2000, 'ping')).toBe(false);
    expect(store.errors() - errorsBefore).toBeGreaterThanOrEqual(rounds * 2 - 2);

    const warns = logs.lines.filter((l) => l['level'] === 'warn');
    expect(warns).toHaveLength(1);
    expect(warns[0]).toMatchObject({ msg: 'redis state changed', from: 'ready', to: 'down' });
    expect(warns[0]?.['redis']).toBe(`127.0.0.1:${server.port}`);
    expect(logs.lines.filter((l) => l['level'] === 'error')).toHaveLength(0);
    expect(states).toEqual(['ready', 'down']);
    // 'error' events from the reconnect attempts were handled, not reported by ioredis.
    expect(consoleError.mock.calls.filter((c) => String(c[0]).includes('ioredis'))).toEqual([]);
  });

  it('recovers to ready by itself after a restart and caches again', async () => {
    await server.restart();
    await waitFor(() => store.state() === 'ready', 'ready after restart', 10_000, 50);
    await store.set('after-restart', 'v2', 60);
    expect(await store.get('after-restart')).toBe('v2');

    const changes = logs.stateChanges();
    expect(changes.map((l) => [l['level'], l['from'], l['to']])).toEqual([
      ['info', 'connecting', 'ready'],
      ['warn', 'ready', 'down'],
      ['info', 'down', 'ready'],
    ]);
    expect(states).toEqual(['ready', 'down', 'ready']);
  });

  it('never logs the URL or its password', () => {
    const all = logs.raw.join('\n');
    expect(all).not.toContain('s3cr3t-pw');
    expect(all).not.toContain('redis://');
    expect(all).toContain(`127.0.0.1:${server.port}`);
  });
});

describe('when Redis is frozen (SIGSTOP)', () => {
  let server: RedisServerHandle;
  beforeAll(async () => {
    server = await newServer();
  });
  afterAll(() => {
    server.resume();
  });

  it('get resolves to undefined after the command timeout instead of hanging, and recovers after SIGCONT', async () => {
    const logs = capturingLogger();
    const store = await readyStore(server.url, logs.logger);
    await store.set('frozen', 'v', 60);

    server.pause();
    try {
      expect(await guard(store.get('frozen'), 2000, 'get while paused')).toBeUndefined();
      await guard(store.set('frozen2', 'v', 60), 2000, 'set while paused');
      // A few more timeouts mark the store down; then calls are skipped without waiting.
      for (let i = 0; i < 10 && store.state() === 'ready'; i++) {
        expect(await guard(store.get('frozen'), 2000, 'get while paused')).toBeUndefined();
      }
      expect(store.state()).toBe('down');
      expect(await guard(store.get('frozen'), 2000, 'get while down')).toBeUndefined();
      expect(await guard(store.ping(), 2000, 'ping while paused')).toBe(false);
      expect(store.errors()).toBeGreaterThanOrEqual(3);
    } finally {
      server.resume();
    }

    await waitFor(() => store.state() === 'ready', 'ready after SIGCONT', 10_000, 50);
    expect(await store.get('frozen')).toBe('v');
    const changes = logs.stateChanges().map((l) => [l['level'], l['from'], l['to']]);
    expect(changes).toEqual([
      ['info', 'connecting', 'ready'],
      ['warn', 'ready', 'down'],
      ['info', 'down', 'ready'],
    ]);
  });

  it('close() finishes within a bounded time while Redis is frozen', async () => {
    const store = await readyStore(server.url);
    server.pause();
    try {
      await guard(store.close(), 5000, 'close while paused');
    } finally {
      server.resume();
    }
  });
});

describe('when Redis is not up at start', () => {
  it('goes from connecting to down with one warn line, then to ready once Redis starts', async () => {
    const server = await newServer();
    await server.stop();
    const logs = capturingLogger();
    const store = newStore(server.url, logs.logger);
    expect(await guard(store.get('x'), 2000, 'get with no server')).toBeUndefined();
    await waitFor(() => store.state() === 'down', 'down');
    await sleep(700); // several reconnect attempts, each an 'error' event
    expect(logs.lines.filter((l) => l['level'] === 'warn')).toHaveLength(1);

    await server.restart();
    await waitFor(() => store.state() === 'ready', 'ready after start', 10_000, 50);
    await store.set('late', 'v', 10);
    expect(await store.get('late')).toBe('v');
    expect(logs.stateChanges().map((l) => [l['from'], l['to']])).toEqual([
      ['connecting', 'down'],
      ['down', 'ready'],
    ]);
  });
});

/** Subscribers on `channel` as Redis counts them (PUBSUB NUMSUB). */
async function subscribers(c: Redis, channel: string): Promise<number> {
  const res = (await c.call('PUBSUB', 'NUMSUB', channel)) as [string, number | string];
  return Number(res[1]);
}

/** Like waitFor, for an async condition. */
async function waitForAsync(cond: () => Promise<boolean>, what: string, timeoutMs = 10_000, intervalMs = 25) {
  const deadline = Date.now() + timeoutMs;
  const maxIterations = Math.ceil(timeoutMs / intervalMs) + 1;
  for (let i = 0; i < maxIterations && Date.now() < deadline; i++) {
    if (await cond().catch(() => false)) return;
    await sleep(intervalMs);
  }
  if (!(await cond().catch(() => false))) throw new Error(`timed out waiting for ${what}`);
}

describe('run / publish / subscribe', () => {
  let server: RedisServerHandle;
  beforeAll(async () => {
    server = await newServer();
  });

  it('run() returns the command result; keys take the prefix through key()', async () => {
    const store = await readyStore(server.url);
    const inspect = await inspector(server.url);
    expect(store.key('k')).toBe(`${PREFIX}k`);
    expect(await store.run((c) => c.set(store.key('run-a'), 'va', 'EX', 30))).toBe('OK');
    expect(await store.run((c) => c.get(store.key('run-a')))).toBe('va');
    expect(await inspect.get(`${PREFIX}run-a`)).toBe('va');
    expect(await store.run((c) => c.mget(store.key('run-a'), store.key('missing')))).toEqual(['va', null]);
    expect(store.errors()).toBe(0);
  });

  it('run() returns undefined (does not throw) on a command error such as WRONGTYPE, and keeps working', async () => {
    const store = await readyStore(server.url);
    await store.run((c) => c.set(store.key('a-string'), 'v', 'EX', 30));
    const errorsBefore = store.errors();
    let thrown: unknown;
    let result: unknown = 'not set';
    try {
      result = await guard(
        store.run((c) => c.lpush(store.key('a-string'), 'x')),
        2000,
        'run with a WRONGTYPE error',
      );
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeUndefined();
    expect(result).toBeUndefined();
    expect(store.errors()).toBe(errorsBefore + 1);
    // An error thrown by the callback itself is contained too.
    expect(
      await store.run(async () => {
        throw new Error('boom');
      }),
    ).toBeUndefined();
    expect(await store.run((c) => c.get(store.key('a-string')))).toBe('v');
    expect(store.state()).toBe('ready');
  });

  it('publish/subscribe round trip between two stores, in order; a throwing handler does not stop delivery', async () => {
    const logs = capturingLogger();
    const sub = await readyStore(server.url, logs.logger);
    const pub = await readyStore(server.url);
    const inspect = await inspector(server.url);
    const channel = `${PREFIX}chan-roundtrip`;
    const received: string[] = [];
    sub.subscribe(channel, (m) => {
      if (m === 'explode') throw new Error('handler failed');
      received.push(m);
    });
    await waitForAsync(async () => (await subscribers(inspect, channel)) >= 1, 'subscribed');

    expect(await pub.publish(channel, 'one')).toBe(true);
    expect(await pub.publish(channel, 'explode')).toBe(true);
    expect(await pub.publish(channel, 'two')).toBe(true);
    expect(await sub.publish(channel, 'three')).toBe(true); // a store also hears itself
    await waitFor(() => received.length >= 3, 'three messages', 5000, 10);
    expect(received).toEqual(['one', 'two', 'three']);
    expect(logs.lines.filter((l) => l['msg'] === 'redis subscription handler failed')).toHaveLength(1);
    // Messages on other channels are not delivered to this handler.
    expect(await pub.publish(`${PREFIX}chan-other`, 'elsewhere')).toBe(true);
    expect(await pub.publish(channel, 'four')).toBe(true);
    await waitFor(() => received.length >= 4, 'fourth message', 5000, 10);
    expect(received).toEqual(['one', 'two', 'three', 'four']);
  });

  it('publish returns false while Redis is not usable; run() is skipped (undefined) before ready', async () => {
    const store = newStore(server.url);
    expect(store.state()).toBe('connecting');
    expect(await guard(store.publish(`${PREFIX}chan-x`, 'early'), 2000, 'publish while connecting')).toBe(
      false,
    );
    expect(
      await guard(
        store.run((c) => c.ping()),
        2000,
        'run while connecting',
      ),
    ).toBeUndefined();
    await waitFor(() => store.state() === 'ready', 'ready');
    expect(await store.run((c) => c.ping())).toBe('PONG');
  });
});

describe('run / publish / subscribe when Redis is killed and restarted', () => {
  let server: RedisServerHandle;
  beforeAll(async () => {
    server = await newServer();
  });

  it('run() and publish() resolve (undefined / false) with Redis killed; the subscriber resubscribes after the restart', async () => {
    const store = await readyStore(server.url);
    const channel = `${PREFIX}chan-restart`;
    const received: string[] = [];
    store.subscribe(channel, (m) => received.push(m));
    let inspect = await inspector(server.url);
    await waitForAsync(async () => (await subscribers(inspect, channel)) >= 1, 'subscribed');
    expect(await store.publish(channel, 'before')).toBe(true);
    await waitFor(() => received.includes('before'), 'message before the kill', 5000, 10);
    inspect.disconnect();

    await server.kill();
    // Right after the kill and once the store has noticed.
    for (let round = 0; round < 2; round++) {
      expect(
        await guard(
          store.run((c) => c.get(store.key('x'))),
          2000,
          'run while killed',
        ),
      ).toBeUndefined();
      expect(
        await guard(
          store.run((c) => c.set(store.key('x'), 'v', 'EX', 5)),
          2000,
          'run set',
        ),
      ).toBeUndefined();
      expect(await guard(store.publish(channel, 'lost'), 2000, 'publish while killed')).toBe(false);
      if (round === 0) await waitFor(() => store.state() === 'down', 'store down');
    }

    await server.restart();
    await waitFor(() => store.state() === 'ready', 'ready after restart', 10_000, 50);
    inspect = await inspector(server.url);
    // ioredis resubscribes the dedicated subscriber connection by itself.
    await waitForAsync(async () => (await subscribers(inspect, channel)) >= 1, 'resubscribed', 10_000, 50);
    expect(await inspect.publish(channel, 'after-restart-raw')).toBeGreaterThanOrEqual(1);
    expect(await store.publish(channel, 'after-restart-store')).toBe(true);
    await waitFor(
      () => received.includes('after-restart-raw') && received.includes('after-restart-store'),
      'messages after the restart',
      5000,
      10,
    );
    expect(received).not.toContain('lost');
    expect(await store.run((c) => c.set(store.key('x'), 'v2', 'EX', 5))).toBe('OK');
  });
});
