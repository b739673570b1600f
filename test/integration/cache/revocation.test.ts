import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CacheEntry } from '../../../src/cache/cache-entry.ts';
import { createCacheEvents } from '../../../src/cache/cache-events.ts';
import { createCacheKeyer } from '../../../src/cache/cache-key.ts';
import { type CacheMetrics, createCacheMetrics } from '../../../src/cache/cache-metrics.ts';
import { createMemoryCache, type MemoryCache } from '../../../src/cache/memory-cache.ts';
import { createRedisStore, type RedisStore } from '../../../src/cache/redis-store.ts';
import { createRevocation, type Revocation, subjectTag } from '../../../src/cache/revocation.ts';
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

const PREFIX = 'revocation-test:';
const COMMAND_TIMEOUT_MS = 250;
const SECRET = Buffer.from('revocation-test-secret-0123456789abcdef', 'utf8');
const ISSUER = 'https://idp.example.test';
const VARIANT = 'aud-hash-a000000';
const VARIANTS = ['', VARIANT];
/** SPEC §7 / issue 4: a purge reaches every replica's L1 within one second. */
const PROPAGATION_BOUND_MS = 1000;
const keyer = createCacheKeyer(SECRET);

/**
 * Polls `cond` (synchronous: replica B's memory) every ~1 ms until true, for at most `boundMs`;
 * returns the elapsed milliseconds since `startedAt`, or throws when the bound passes.
 */
async function propagation(
  cond: () => boolean,
  startedAt: number,
  boundMs: number,
  what: string,
): Promise<number> {
  const maxIterations = boundMs * 4;
  for (let i = 0; i < maxIterations; i++) {
    if (cond()) return performance.now() - startedAt;
    if (performance.now() - startedAt > boundMs) break;
    await sleep(1);
  }
  if (cond()) return performance.now() - startedAt;
  throw new Error(`${what}: not propagated within ${boundMs} ms`);
}

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

interface Token {
  token: string;
  sub: string;
  entry: CacheEntry;
  ref: CacheRef;
}

async function newToken(sub: string, variant = ''): Promise<Token> {
  const token = `opaque-${randomBytes(24).toString('base64url')}`;
  const now = Math.floor(Date.now() / 1000);
  const jwt = await new SignJWT({ sub, scope: 'read' })
    .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
    .setIssuer(ISSUER)
    .setIssuedAt(now)
    .setExpirationTime(now + 600)
    .sign(signingKey);
  const entry = (await revive(jwt))!;
  return { token, sub, entry, ref: { tag: keyer(token), variant, token } };
}

interface Replica {
  name: string;
  memory: MemoryCache;
  cache: TieredCache;
  metrics: CacheMetrics;
  revocation: Revocation;
  redis?: RedisStore;
}

const stores: RedisStore[] = [];
const clients: Redis[] = [];
const servers: RedisServerHandle[] = [];
let channelSeq = 0;

function buildReplica(name: string, redis: RedisStore | undefined, channel: string): Replica {
  const memory = createMemoryCache({ maxEntries: 1000 });
  const metrics = createCacheMetrics();
  const cache = createTieredCache({
    memory,
    ...(redis ? { redis } : {}),
    cipher: createValueCipher(SECRET),
    revive,
    metrics,
    variants: VARIANTS,
    clockSkewSeconds: 5,
    maxTtlSeconds: 900,
  });
  const events = createCacheEvents(redis, channel, silentLogger());
  const revocation = createRevocation({ cache, events, keyer, metrics, logger: silentLogger() });
  return { name, memory, cache, metrics, revocation, ...(redis ? { redis } : {}) };
}

async function replicas(url: string, raw: Redis, names: string[]): Promise<Replica[]> {
  const channel = `${PREFIX}events-${++channelSeq}`;
  const out = await Promise.all(
    names.map(async (name) => {
      const redis = createRedisStore(
        { url, keyPrefix: PREFIX, commandTimeoutMs: COMMAND_TIMEOUT_MS },
        { logger: silentLogger() },
      );
      stores.push(redis);
      await waitFor(() => redis.state() === 'ready', `${name} ready`);
      return buildReplica(name, redis, channel);
    }),
  );
  await waitFor(
    async () =>
      Number(((await raw.call('PUBSUB', 'NUMSUB', channel)) as [string, number])[1]) >= names.length,
    'every replica subscribed',
  );
  return out;
}

async function inspector(url: string): Promise<Redis> {
  const c = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  c.on('error', () => {});
  clients.push(c);
  await guard(c.connect(), 5000, 'inspector connect');
  return c;
}

const l1Key = (ref: CacheRef) => (ref.variant === '' ? ref.tag : `${ref.tag}.${ref.variant}`);
const inL1 = (r: Replica, t: Token) => r.memory.get(l1Key(t.ref)) !== undefined;

/** Stores on A (L1 + L2 + subject index) and reads on B (L2 hit → B's L1). */
async function cacheEverywhere(a: Replica, b: Replica, tokens: Token[]): Promise<void> {
  for (const t of tokens) await a.cache.store(t.ref, t.entry, 120);
  for (const t of tokens) {
    const r = await b.cache.lookup(t.ref);
    expect(r.kind === 'hit' && r.level, `B reads ${t.sub}`).toBe('l2');
    expect(inL1(b, t)).toBe(true);
    expect(inL1(a, t)).toBe(true);
  }
}

const measured: Array<{ what: string; ms: number }> = [];

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
  if (measured.length > 0) {
    const ms = measured.map((m) => m.ms).sort((x, y) => x - y);
    const median = ms[Math.floor(ms.length / 2)] ?? 0;
    console.log(
      `purge propagation A → B (L1 evicted in the other replica), ${ms.length} purges: ` +
        `min ${ms[0]?.toFixed(1)} ms, median ${median.toFixed(1)} ms, max ${ms[ms.length - 1]?.toFixed(1)} ms; ` +
        measured.map((m) => `${m.what} ${m.ms.toFixed(1)} ms`).join(', '),
    );
  }
});

describe('revocation across two replicas sharing one Redis', () => {
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

  it('purgeToken on A removes the entry from Redis, from A and (pub/sub) from B’s L1 within 1 s', async () => {
    const [a, b] = (await replicas(server.url, raw, ['A', 'B'])) as [Replica, Replica];
    for (let round = 0; round < 5; round++) {
      const t = await newToken(`user-${round}`);
      const other = await newToken(`bystander-${round}`);
      await cacheEverywhere(a, b, [t, other]);

      const started = performance.now();
      const purged = await guard(a.revocation.purgeToken(t.token), 2000, 'purgeToken');
      const ms = await propagation(() => !inL1(b, t), started, PROPAGATION_BOUND_MS, 'purge by token');
      measured.push({ what: `token#${round + 1}`, ms });
      console.log(`purge propagation (token, round ${round + 1}): ${ms.toFixed(1)} ms`);

      expect(purged).toBe(2); // A's L1 entry + the Redis entry
      expect(inL1(a, t)).toBe(false);
      expect(await raw.exists(PREFIX + redisKeys.jwt(t.ref.tag, ''))).toBe(0);
      expect(await b.cache.lookup(t.ref)).toEqual({ kind: 'miss' });
      // The bystander is untouched everywhere.
      expect(inL1(a, other) && inL1(b, other)).toBe(true);
      expect(await raw.exists(PREFIX + redisKeys.jwt(other.ref.tag, ''))).toBe(1);
    }
    expect(a.metrics.purges).toBe(5);
    expect(a.metrics.purgedEntries).toBe(10);
  });

  it('purgeToken removes every variant and a remembered inactive verdict, everywhere', async () => {
    const [a, b] = (await replicas(server.url, raw, ['A', 'B'])) as [Replica, Replica];
    const t = await newToken('multi');
    const tv: Token = { ...t, ref: { ...t.ref, variant: VARIANT } };
    await cacheEverywhere(a, b, [t, tv]);
    const bad = await newToken('bad');
    await a.cache.storeInactive(bad.ref, 5);
    expect((await b.cache.lookup(bad.ref)).kind).toBe('inactive');
    expect(b.memory.isInactive(bad.ref.tag)).toBe(true);

    const started = performance.now();
    await a.revocation.purgeToken(t.token);
    await a.revocation.purgeToken(bad.token);
    const ms = await propagation(
      () => !inL1(b, t) && !inL1(b, tv) && !b.memory.isInactive(bad.ref.tag),
      started,
      PROPAGATION_BOUND_MS,
      'purge of variants and verdict',
    );
    measured.push({ what: 'token+variant+verdict', ms });
    expect(
      await raw.exists(PREFIX + redisKeys.jwt(t.ref.tag, ''), PREFIX + redisKeys.jwt(t.ref.tag, VARIANT)),
    ).toBe(0);
    expect(await raw.exists(PREFIX + redisKeys.inactive(bad.ref.tag))).toBe(0);
    expect(await b.cache.lookup(bad.ref)).toEqual({ kind: 'miss' });
  });

  it('purgeSubject removes every token of the subject in both replicas and in Redis, and only those', async () => {
    const [a, b] = (await replicas(server.url, raw, ['A', 'B'])) as [Replica, Replica];
    const alice1 = await newToken('alice');
    const alice2 = await newToken('alice');
    const bob = await newToken('bob');
    await cacheEverywhere(a, b, [alice1, alice2, bob]);
    const aliceIndex = PREFIX + redisKeys.subIndex(subjectTag(keyer, 'alice'));
    const bobIndex = PREFIX + redisKeys.subIndex(subjectTag(keyer, 'bob'));
    expect(await raw.scard(aliceIndex)).toBe(2);

    const started = performance.now();
    const purged = await guard(a.revocation.purgeSubject('alice'), 2000, 'purgeSubject');
    const ms = await propagation(
      () => !inL1(b, alice1) && !inL1(b, alice2),
      started,
      PROPAGATION_BOUND_MS,
      'purge by subject',
    );
    measured.push({ what: 'subject', ms });
    console.log(`purge propagation (subject): ${ms.toFixed(1)} ms`);

    expect(purged).toBe(4); // 2 in A's L1 + 2 in Redis
    for (const t of [alice1, alice2]) {
      expect(inL1(a, t)).toBe(false);
      expect(await raw.exists(PREFIX + redisKeys.jwt(t.ref.tag, ''))).toBe(0);
      expect(await b.cache.lookup(t.ref)).toEqual({ kind: 'miss' });
    }
    expect(await raw.exists(aliceIndex)).toBe(0);
    // Bob is untouched: both L1s, his Redis entry and his index.
    expect(inL1(a, bob) && inL1(b, bob)).toBe(true);
    expect(await raw.exists(PREFIX + redisKeys.jwt(bob.ref.tag, ''))).toBe(1);
    expect(await raw.smembers(bobIndex)).toEqual([bob.ref.tag]);
    const r = await b.cache.lookup(bob.ref);
    expect(r.kind === 'hit' && r.entry.claims['sub']).toBe('bob');
  });

  it('purgeSubject also reaches an entry that only exists in another replica’s L1 (never reached Redis)', async () => {
    const [a, b] = (await replicas(server.url, raw, ['A', 'B'])) as [Replica, Replica];
    const t = await newToken('l1-only');
    const keep = await newToken('l1-keep');
    b.memory.set(l1Key(t.ref), t.entry, 60); // e.g. B's Redis write failed
    b.memory.set(l1Key(keep.ref), keep.entry, 60);
    const started = performance.now();
    expect(await a.revocation.purgeSubject('l1-only')).toBe(0); // nothing here, nothing in Redis
    const ms = await propagation(
      () => !inL1(b, t),
      started,
      PROPAGATION_BOUND_MS,
      'purge of an L1-only entry',
    );
    measured.push({ what: 'subject(L1-only)', ms });
    expect(inL1(b, keep)).toBe(true);
  });

  it('a purge from B reaches A as well (every replica is a publisher and a subscriber)', async () => {
    const [a, b, c] = (await replicas(server.url, raw, ['A', 'B', 'C'])) as [Replica, Replica, Replica];
    const t = await newToken('triple');
    await cacheEverywhere(a, b, [t]);
    expect((await c.cache.lookup(t.ref)).kind).toBe('hit');
    const started = performance.now();
    await b.revocation.purgeToken(t.token);
    const ms = await propagation(
      () => !inL1(a, t) && !inL1(c, t),
      started,
      PROPAGATION_BOUND_MS,
      'purge B → A, C',
    );
    measured.push({ what: 'token(B→A,C)', ms });
  });
});

describe('revocation without Redis', () => {
  it('purge by token and by subject works on L1 alone when no Redis is configured', async () => {
    const r = buildReplica('solo', undefined, 'unused');
    const alice1 = await newToken('alice');
    const alice2 = await newToken('alice');
    const bob = await newToken('bob');
    for (const t of [alice1, alice2, bob]) await r.cache.store(t.ref, t.entry, 60);
    const alice1v: Token = { ...alice1, ref: { ...alice1.ref, variant: VARIANT } };
    await r.cache.store(alice1v.ref, alice1.entry, 60);

    expect(await guard(r.revocation.purgeToken(alice1.token))).toBe(2); // both variants
    expect(inL1(r, alice1) || inL1(r, alice1v)).toBe(false);
    expect(inL1(r, alice2)).toBe(true);

    expect(await guard(r.revocation.purgeSubject('alice'))).toBe(1);
    expect(inL1(r, alice2)).toBe(false);
    expect(inL1(r, bob)).toBe(true);
    expect(await r.cache.lookup(alice2.ref)).toEqual({ kind: 'miss' });
    expect(r.metrics.purges).toBe(2);
    expect(r.metrics.purgedEntries).toBe(3);
    expect(await r.revocation.purgeSubject('nobody')).toBe(0);
  });

  it('with Redis killed, purges still clear the local L1 and resolve', async () => {
    const server = await startRedisServer();
    servers.push(server);
    const raw = await inspector(server.url);
    const [a] = (await replicas(server.url, raw, ['A'])) as [Replica];
    const t = await newToken('alice');
    const u = await newToken('bob');
    await a.cache.store(t.ref, t.entry, 60);
    await a.cache.store(u.ref, u.entry, 60);
    raw.disconnect();
    await server.kill();
    expect(await guard(a.revocation.purgeToken(t.token), 2000, 'purgeToken with Redis killed')).toBe(1);
    expect(inL1(a, t)).toBe(false);
    expect(await guard(a.revocation.purgeSubject('bob'), 2000, 'purgeSubject with Redis killed')).toBe(1);
    expect(inL1(a, u)).toBe(false);
  });
});
