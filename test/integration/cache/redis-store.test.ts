import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createRedisStore, type RedisState, type RedisStore } from '../../../src/cache/redis-store.ts';
import { createLogger, silentLogger } from '../../../src/observability/logger.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';

const PREFIX = 'phantom-test:';
// Generous enough for a loaded CI machine; the failure tests only need "bounded", not "fast".
const COMMAND_TIMEOUT_MS = 250;

/** Fails (rejects) if `p` has not settled within `ms`: "resolves quickly" without timing assertions. */
async function guard<T>(p: Promise<T>, ms = 2000, what = 'operation'): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, limit]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `cond` every `intervalMs` until true; bounded in time and in iterations. */
async function waitFor(
  cond: () => boolean,
  what: string,
  timeoutMs = 10_000,
  intervalMs = 25,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const maxIterations = Math.ceil(timeoutMs / intervalMs) + 1;
  for (let i = 0; i < maxIterations && Date.now() < deadline; i++) {
    if (cond()) return;
    await sleep(intervalMs);
  }
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

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
