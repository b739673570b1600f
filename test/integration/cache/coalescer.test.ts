import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CacheEntry } from '../../../src/cache/cache-entry.ts';
import { createCacheEvents } from '../../../src/cache/cache-events.ts';
import { createCacheKeyer } from '../../../src/cache/cache-key.ts';
import { type CacheMetrics, createCacheMetrics } from '../../../src/cache/cache-metrics.ts';
import { type Coalescer, createCoalescer } from '../../../src/cache/coalescer.ts';
import { createMemoryCache } from '../../../src/cache/memory-cache.ts';
import { createRedisStore, type RedisStore } from '../../../src/cache/redis-store.ts';
import { subjectTag } from '../../../src/cache/revocation.ts';
import { createSingleFlight } from '../../../src/cache/single-flight.ts';
import {
  type CacheRef,
  createTieredCache,
  redisKeys,
  type TieredCache,
} from '../../../src/cache/tiered-cache.ts';
import { createValueCipher } from '../../../src/cache/value-crypto.ts';
import { createJwtVerifier, type JwtVerifier } from '../../../src/jwt/verify-jwt.ts';
import { silentLogger } from '../../../src/observability/logger.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { guard, pollUntil as waitFor } from '../../helpers/wait.ts';

const PREFIX = 'coalescer-test:';
const COMMAND_TIMEOUT_MS = 250;
const SECRET = Buffer.from('coalescer-test-secret-0123456789abcdefgh', 'utf8');
const ISSUER = 'https://idp.example.test';
const keyer = createCacheKeyer(SECRET);

let signingKey: CryptoKey;
let verifier: JwtVerifier;

async function revive(jwt: string): Promise<CacheEntry | undefined> {
  try {
    const v = await verifier.verify(jwt);
    const claims = v.claims as Record<string, unknown>;
    const entry: CacheEntry = { jwt: v.jwt, claims, exp: v.exp };
    if (typeof claims['sub'] === 'string') entry.subTag = subjectTag(keyer, claims['sub']);
    return entry;
  } catch {
    return undefined;
  }
}

async function newToken(
  sub: string,
): Promise<{ token: string; jwt: string; entry: CacheEntry; ref: CacheRef }> {
  const token = `opaque-${randomBytes(24).toString('base64url')}`;
  const now = Math.floor(Date.now() / 1000);
  const jwt = await new SignJWT({ sub, scope: 'read' })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
    .setIssuer(ISSUER)
    .setIssuedAt(now)
    .setExpirationTime(now + 600)
    .sign(signingKey);
  const entry = (await revive(jwt))!;
  return { token, jwt, entry, ref: { tag: keyer(token), variant: '', token } };
}

/** What a request gets: the JWT, or "inactive" (as resolve-jwt.ts's Outcome). */
type Outcome = { kind: 'active'; jwt: string } | { kind: 'inactive' };

/** One gateway replica: its own ioredis connections (commands + subscriber), memory and counters. */
interface Replica {
  name: string;
  redis: RedisStore;
  cache: TieredCache;
  coalescer: Coalescer;
  metrics: CacheMetrics;
  /** The L2 re-read a waiter does (resolve-jwt.ts `fromL2`). */
  lookup(ref: CacheRef): () => Promise<Outcome | undefined>;
}

const stores: RedisStore[] = [];
const clients: Redis[] = [];
const servers: RedisServerHandle[] = [];
let channelSeq = 0;

async function replica(
  name: string,
  url: string,
  channel: string,
  timeoutMs: number,
  opts: { waitReady?: boolean } = {},
): Promise<Replica> {
  const redis = createRedisStore(
    { url, keyPrefix: PREFIX, commandTimeoutMs: COMMAND_TIMEOUT_MS },
    { logger: silentLogger() },
  );
  stores.push(redis);
  if (opts.waitReady !== false) await waitFor(() => redis.state() === 'ready', `${name} ready`);
  const metrics = createCacheMetrics();
  const cache = createTieredCache({
    memory: createMemoryCache({ maxEntries: 1000 }),
    redis,
    cipher: createValueCipher(SECRET),
    revive,
    metrics,
    variants: [''],
    clockSkewSeconds: 5,
    maxTtlSeconds: 900,
  });
  const events = createCacheEvents(redis, channel, silentLogger());
  const coalescer = createCoalescer({ redis, events, metrics, timeoutMs });
  return {
    name,
    redis,
    cache,
    coalescer,
    metrics,
    lookup: (ref) => async () => {
      const r = await cache.lookup(ref, { l2Only: true });
      if (r.kind === 'hit') return { kind: 'active', jwt: r.entry.jwt };
      if (r.kind === 'inactive') return { kind: 'inactive' };
      return undefined;
    },
  };
}

async function inspector(url: string): Promise<Redis> {
  const c = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  c.on('error', () => {});
  clients.push(c);
  await guard(c.connect(), 5000, 'inspector connect');
  return c;
}

/** Waits until `n` connections are subscribed to `channel` (the replicas' subscribers are live). */
async function waitForSubscribers(raw: Redis, channel: string, n: number): Promise<void> {
  await waitFor(async () => {
    const res = (await raw.call('PUBSUB', 'NUMSUB', channel)) as [string, number];
    return Number(res[1]) >= n;
  }, `${n} subscribers on ${channel}`);
}

/** Three replicas on one Redis, their subscriptions live. */
async function threeReplicas(url: string, raw: Redis, timeoutMs: number) {
  const channel = `${PREFIX}events-${++channelSeq}`;
  const replicas = await Promise.all(['A', 'B', 'C'].map((n) => replica(n, url, channel, timeoutMs)));
  await waitForSubscribers(raw, channel, 3);
  return { replicas, channel };
}

const sum = (replicas: Replica[], k: keyof CacheMetrics) => replicas.reduce((n, r) => n + r.metrics[k], 0);

beforeAll(async () => {
  const pair = await generateKeyPair('ES256', { extractable: true });
  signingKey = pair.privateKey;
  const jwk: JWK = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256' };
  verifier = createJwtVerifier({
    algorithms: ['ES256'],
    issuer: ISSUER,
    clockSkewSeconds: 5,
    keys: { kind: 'local', jwks: { keys: [jwk] } },
  });
});

afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => guard(s.close(), 5000, 'store close')));
  for (const c of clients.splice(0)) c.disconnect();
});

afterAll(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});

describe('coalescer across three replicas sharing one Redis', () => {
  let server: RedisServerHandle;
  let raw: Redis;

  beforeAll(async () => {
    server = await startRedisServer();
    servers.push(server);
  });

  beforeEach(async () => {
    raw = await inspector(server.url);
    await raw.flushdb();
  });

  it('60 concurrent misses over 3 replicas → one load; everyone gets the value; the lock has a PX TTL and is released', async () => {
    const TIMEOUT_MS = 3000;
    const { replicas } = await threeReplicas(server.url, raw, TIMEOUT_MS);
    const t = await newToken('alice');
    const lockKey = PREFIX + redisKeys.lock(t.ref.tag, '');

    // Every command that touches the lock key, as Redis saw it (scripts included).
    const monitor = await raw.monitor();
    const lockCommands: string[][] = [];
    monitor.on('monitor', (_time: string, args: string[]) => {
      if (args.includes(lockKey)) lockCommands.push(args.map(String));
    });
    await sleep(50); // MONITOR is live once its reply arrived; a short settle for safety

    let loads = 0;
    const pttls: number[] = [];
    const lockValues: Array<string | null> = [];
    const load = (r: Replica) => async (): Promise<Outcome> => {
      loads++;
      pttls.push(await raw.pttl(lockKey));
      lockValues.push(await raw.get(lockKey));
      await sleep(200); // the introspection
      pttls.push(await raw.pttl(lockKey));
      await r.cache.store(t.ref, t.entry, 120);
      return { kind: 'active', jwt: t.jwt };
    };
    const calls = Array.from({ length: 60 }, (_, i) => {
      const r = replicas[i % 3]!;
      return r.coalescer.run(t.ref, load(r), r.lookup(t.ref));
    });
    const results = await guard(Promise.all(calls), 10_000, '60 coalesced calls');

    expect(loads).toBe(1);
    expect(results).toHaveLength(60);
    for (const r of results) expect(r).toEqual({ kind: 'active', jwt: t.jwt });
    expect(sum(replicas, 'coalescedWaits')).toBe(59);
    expect(sum(replicas, 'coalesceTimeouts')).toBe(0);
    expect(sum(replicas, 'lockContention')).toBeGreaterThan(0);
    for (const r of replicas) expect(r.metrics.coalescedWaits, r.name).toBeGreaterThan(0);

    // The lock lived with a TTL ≤ the timeout while the load ran, held an owner id (no token)...
    expect(pttls.length).toBe(2);
    for (const pttl of pttls) {
      expect(pttl).toBeGreaterThan(0);
      expect(pttl).toBeLessThanOrEqual(TIMEOUT_MS);
    }
    expect(lockValues[0]).toMatch(/^[0-9a-f-]{36}$/);
    // ... and is gone afterwards.
    expect(await raw.get(lockKey)).toBeNull();
    expect(await raw.exists(lockKey)).toBe(0);

    // Never written without a TTL: every SET of the lock is NX with a PX ≤ the timeout.
    await sleep(50);
    monitor.disconnect();
    const sets = lockCommands.filter((c) => c[0]?.toLowerCase() === 'set');
    expect(sets.length).toBeGreaterThan(0);
    for (const c of lockCommands) {
      const cmd = c[0]?.toLowerCase();
      expect(['set', 'get', 'del', 'pexpire', 'eval', 'evalsha', 'pttl', 'exists']).toContain(cmd);
      if (cmd === 'set') {
        const upper = c.map((a) => a.toUpperCase());
        expect(upper).toContain('NX');
        const px = upper.indexOf('PX');
        expect(px, `SET without PX: ${c.join(' ')}`).toBeGreaterThan(0);
        const ms = Number(c[px + 1]);
        expect(ms).toBeGreaterThan(0);
        expect(ms).toBeLessThanOrEqual(TIMEOUT_MS);
      }
      if (cmd === 'pexpire') {
        expect(Number(c[2])).toBeGreaterThan(0);
        expect(Number(c[2])).toBeLessThanOrEqual(TIMEOUT_MS);
      }
    }
    // The value ended up in L2 with its TTL, readable by every replica.
    for (const r of replicas) expect((await r.cache.lookup(t.ref)).kind).toBe('hit');
  });

  it('an inactive outcome (storeInactive) is what the waiters get', async () => {
    const { replicas } = await threeReplicas(server.url, raw, 3000);
    const t = await newToken('revoked');
    let loads = 0;
    const load = (r: Replica) => async (): Promise<Outcome> => {
      loads++;
      await sleep(150);
      await r.cache.storeInactive(t.ref, 5);
      return { kind: 'inactive' };
    };
    const results = await guard(
      Promise.all(
        Array.from({ length: 30 }, (_, i) => {
          const r = replicas[i % 3]!;
          return r.coalescer.run(t.ref, load(r), r.lookup(t.ref));
        }),
      ),
      10_000,
      '30 coalesced calls',
    );
    expect(loads).toBe(1);
    for (const r of results) expect(r).toEqual({ kind: 'inactive' });
    expect(sum(replicas, 'coalescedWaits')).toBe(29);
    expect(sum(replicas, 'negativeHitsL2')).toBeGreaterThan(0);
    expect(await raw.exists(PREFIX + redisKeys.lock(t.ref.tag, ''))).toBe(0);
  });

  it('a lock whose holder died (taken by hand, never released) → waiters proceed after it expires; at most 2 loads', async () => {
    const TIMEOUT_MS = 3000;
    const { replicas } = await threeReplicas(server.url, raw, TIMEOUT_MS);
    const t = await newToken('bob');
    const lockKey = PREFIX + redisKeys.lock(t.ref.tag, '');
    expect(await raw.set(lockKey, 'a-dead-replica', 'PX', 300, 'NX')).toBe('OK');

    let loads = 0;
    const load = (r: Replica) => async (): Promise<Outcome> => {
      loads++;
      await sleep(200);
      await r.cache.store(t.ref, t.entry, 120);
      return { kind: 'active', jwt: t.jwt };
    };
    const results = await guard(
      Promise.all(
        Array.from({ length: 60 }, (_, i) => {
          const r = replicas[i % 3]!;
          return r.coalescer.run(t.ref, load(r), r.lookup(t.ref));
        }),
      ),
      TIMEOUT_MS + 5000,
      'calls behind a dead lock',
    );
    for (const r of results) expect(r).toEqual({ kind: 'active', jwt: t.jwt });
    expect(loads).toBeGreaterThanOrEqual(1);
    expect(loads).toBeLessThanOrEqual(2);
    expect(sum(replicas, 'lockContention')).toBeGreaterThan(0);
    expect(await raw.exists(lockKey)).toBe(0);
  });

  it('a lock holder killed mid-load (its load never resolves, its connections drop) → the others recover with at most 2 loads in total', async () => {
    const TIMEOUT_MS = 1500;
    const { replicas } = await threeReplicas(server.url, raw, TIMEOUT_MS);
    const [a, b, c] = replicas as [Replica, Replica, Replica];
    const t = await newToken('carol');
    const lockKey = PREFIX + redisKeys.lock(t.ref.tag, '');

    let loads = 0;
    // A takes the lock and "dies" during its introspection.
    let aStarted = false;
    void a.coalescer.run(
      t.ref,
      () => {
        loads++;
        aStarted = true;
        return new Promise<Outcome>(() => {}); // never settles
      },
      a.lookup(t.ref),
    );
    await waitFor(() => aStarted, 'A holds the lock and loads');
    expect(await raw.exists(lockKey)).toBe(1);
    await a.redis.close(); // the process is gone: its connections drop

    // B and C, as in resolve-jwt.ts: one coalesced run per process (single-flight), 20 requests each.
    const load = (r: Replica) => async (): Promise<Outcome> => {
      loads++;
      await sleep(100);
      await r.cache.store(t.ref, t.entry, 120);
      return { kind: 'active', jwt: t.jwt };
    };
    const requests = [b, c].flatMap((r) => {
      const flights = createSingleFlight<Outcome>();
      return Array.from({ length: 20 }, () =>
        flights.run(t.ref.tag, () => r.coalescer.run(t.ref, load(r), r.lookup(t.ref))),
      );
    });
    const results = await guard(Promise.all(requests), TIMEOUT_MS + 5000, 'B and C after A died');
    for (const r of results) expect(r).toEqual({ kind: 'active', jwt: t.jwt });
    expect(loads).toBeGreaterThanOrEqual(2); // A's, and one after its lock expired
    expect(loads).toBeLessThanOrEqual(2);
    expect(await raw.exists(lockKey)).toBe(0);
  });

  it('a live holder slower than its lock lease keeps the lock (renewed): still one load', async () => {
    const TIMEOUT_MS = 1500; // lease: 500 ms
    const { replicas } = await threeReplicas(server.url, raw, TIMEOUT_MS);
    const t = await newToken('slow');
    const lockKey = PREFIX + redisKeys.lock(t.ref.tag, '');
    let loads = 0;
    const pttls: number[] = [];
    const load = (r: Replica) => async (): Promise<Outcome> => {
      loads++;
      for (let i = 0; i < 9; i++) {
        await sleep(100); // 900 ms in all: longer than the lease, shorter than the timeout
        pttls.push(await raw.pttl(lockKey));
      }
      await r.cache.store(t.ref, t.entry, 120);
      return { kind: 'active', jwt: t.jwt };
    };
    const results = await guard(
      Promise.all(
        Array.from({ length: 30 }, (_, i) => {
          const r = replicas[i % 3]!;
          return r.coalescer.run(t.ref, load(r), r.lookup(t.ref));
        }),
      ),
      TIMEOUT_MS + 5000,
      'calls behind a slow holder',
    );
    for (const r of results) expect(r).toEqual({ kind: 'active', jwt: t.jwt });
    expect(loads).toBe(1);
    // The lock existed all along with a TTL, and never one above the timeout.
    for (const pttl of pttls) {
      expect(pttl).toBeGreaterThan(0);
      expect(pttl).toBeLessThanOrEqual(TIMEOUT_MS);
    }
    expect(await raw.exists(lockKey)).toBe(0);
  });

  it('a holder whose load hangs (process alive) does not keep its lock past the timeout', async () => {
    const TIMEOUT_MS = 900;
    const { replicas } = await threeReplicas(server.url, raw, TIMEOUT_MS);
    const a = replicas[0]!;
    const t = await newToken('hung');
    const lockKey = PREFIX + redisKeys.lock(t.ref.tag, '');
    let started = false;
    void a.coalescer.run(
      t.ref,
      () => {
        started = true;
        return new Promise<Outcome>(() => {});
      },
      a.lookup(t.ref),
    );
    await waitFor(() => started, 'A loads');
    expect(await raw.exists(lockKey)).toBe(1);
    await waitFor(async () => (await raw.exists(lockKey)) === 0, 'lock gone', TIMEOUT_MS + 1500);
    // And a waiter that came meanwhile was not kept waiting forever: it loads by itself.
    const b = replicas[1]!;
    const out = await guard(
      b.coalescer.run(t.ref, async () => ({ kind: 'active', jwt: t.jwt }) as Outcome, b.lookup(t.ref)),
      TIMEOUT_MS + 2000,
      'run after the hung holder',
    );
    expect(out).toEqual({ kind: 'active', jwt: t.jwt });
  });

  it('a different token is not held up by another token’s lock', async () => {
    const { replicas } = await threeReplicas(server.url, raw, 3000);
    const held = await newToken('held');
    const free = await newToken('free');
    await raw.set(PREFIX + redisKeys.lock(held.ref.tag, ''), 'someone', 'PX', 3000, 'NX');
    const r = replicas[0]!;
    let loads = 0;
    const out = await guard(
      r.coalescer.run(
        free.ref,
        async () => {
          loads++;
          return { kind: 'active', jwt: free.jwt } as Outcome;
        },
        r.lookup(free.ref),
      ),
      1000,
      'run for an unlocked token',
    );
    expect(out).toEqual({ kind: 'active', jwt: free.jwt });
    expect(loads).toBe(1);
    expect(r.metrics.lockContention).toBe(0);
  });

  it('a load that throws releases the lock; the error reaches its caller and a waiter loads next', async () => {
    const { replicas } = await threeReplicas(server.url, raw, 3000);
    const [a, b] = replicas as [Replica, Replica, Replica];
    const t = await newToken('dave');
    const lockKey = PREFIX + redisKeys.lock(t.ref.tag, '');
    let loads = 0;
    const failing = a.coalescer.run(
      t.ref,
      async () => {
        loads++;
        await sleep(150);
        throw new Error('token service unavailable');
      },
      a.lookup(t.ref),
    );
    await waitFor(() => loads === 1, 'A loads');
    const waiting = b.coalescer.run(
      t.ref,
      async () => {
        loads++;
        await b.cache.store(t.ref, t.entry, 120);
        return { kind: 'active', jwt: t.jwt } as Outcome;
      },
      b.lookup(t.ref),
    );
    await expect(guard(failing, 5000, 'failing run')).rejects.toThrow('token service unavailable');
    expect(await guard(waiting, 5000, 'waiting run')).toEqual({ kind: 'active', jwt: t.jwt });
    expect(loads).toBe(2);
    expect(await raw.exists(lockKey)).toBe(0);
  });
});

describe('coalescer when Redis is down', () => {
  let server: RedisServerHandle;

  beforeAll(async () => {
    server = await startRedisServer();
    servers.push(server);
  });

  it('with Redis killed, run calls load at once for every caller (no waiting, no L2 re-reads)', async () => {
    const raw = await inspector(server.url);
    const { replicas } = await threeReplicas(server.url, raw, 3000);
    raw.disconnect();
    const t = await newToken('erin');
    await server.kill();

    for (const phase of ['just killed', 'marked down']) {
      if (phase === 'marked down') {
        await waitFor(() => replicas.every((r) => r.redis.state() === 'down'), 'replicas see Redis down');
      }
      const N = 30;
      let started = 0;
      let lookups = 0;
      let release!: () => void;
      const allStarted = new Promise<void>((resolve) => {
        release = resolve;
      });
      // Each load waits until ALL of them have started: this completes only if no caller waits
      // for another one's result.
      const calls = Array.from({ length: N }, (_, i) => {
        const r = replicas[i % 3]!;
        return r.coalescer.run(
          t.ref,
          async (): Promise<Outcome> => {
            if (++started === N) release();
            await allStarted;
            return { kind: 'active', jwt: t.jwt };
          },
          async () => {
            lookups++;
            return undefined;
          },
        );
      });
      const results = await guard(Promise.all(calls), 3000, `${N} runs with Redis ${phase}`);
      expect(started, phase).toBe(N);
      expect(lookups, phase).toBe(0);
      for (const r of results) expect(r).toEqual({ kind: 'active', jwt: t.jwt });
    }
    expect(sum(replicas, 'coalescedWaits')).toBe(0);
    expect(sum(replicas, 'coalesceTimeouts')).toBe(0);
  });

  it('without Redis configured, run is just load', async () => {
    const metrics = createCacheMetrics();
    const events = createCacheEvents(undefined, 'unused', silentLogger());
    const coalescer = createCoalescer({ redis: undefined, events, metrics, timeoutMs: 1000 });
    const t = await newToken('frank');
    let loads = 0;
    const out = await Promise.all(
      Array.from({ length: 5 }, () =>
        coalescer.run(
          t.ref,
          async () => {
            loads++;
            return 42;
          },
          async () => undefined,
        ),
      ),
    );
    expect(out).toEqual([42, 42, 42, 42, 42]);
    expect(loads).toBe(5);
  });
});
