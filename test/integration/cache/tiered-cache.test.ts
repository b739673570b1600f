import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CacheEntry } from '../../../src/cache/cache-entry.ts';
import { createCacheKeyer } from '../../../src/cache/cache-key.ts';
import { type CacheMetrics, createCacheMetrics } from '../../../src/cache/cache-metrics.ts';
import { createMemoryCache, type MemoryCache } from '../../../src/cache/memory-cache.ts';
import { createRedisStore, type RedisStore } from '../../../src/cache/redis-store.ts';
import { subjectTag } from '../../../src/cache/revocation.ts';
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

const PREFIX = 'tiered-test:';
const COMMAND_TIMEOUT_MS = 250;
const SECRET = Buffer.from('tiered-cache-test-secret-0123456789abcdef', 'utf8');
const ISSUER = 'https://idp.example.test';
const MAX_TTL = 900;
const SKEW = 5;
const VARIANT_A = 'aud-hash-a000000';
const VARIANT_B = 'aud-hash-b000000';
const VARIANTS = ['', VARIANT_A, VARIANT_B];

const keyer = createCacheKeyer(SECRET);

/** Fails (rejects) if `p` has not settled within `ms`: "resolves" without timing assertions. */

// --- JWTs signed with jose, verified by the gateway's own verifier (the `revive` of app.ts) ------

let signingKey: CryptoKey;
let foreignKey: CryptoKey;
let verifier: JwtVerifier;

async function signJwt(
  claims: Record<string, unknown>,
  opts: { key?: CryptoKey; expiresIn?: number } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'at+jwt' })
    .setIssuer(ISSUER)
    .setIssuedAt(now)
    .setExpirationTime(now + (opts.expiresIn ?? 600))
    .sign(opts.key ?? signingKey);
}

async function revive(jwt: string): Promise<CacheEntry | undefined> {
  try {
    const v = await verifier.verify(jwt);
    const claims = v.claims as Record<string, unknown>;
    const entry: CacheEntry = { jwt: v.jwt, claims, exp: v.exp };
    if (typeof claims['sub'] === 'string' && claims['sub'] !== '')
      entry.subTag = subjectTag(keyer, claims['sub']);
    return entry;
  } catch {
    return undefined;
  }
}

interface Token {
  token: string;
  sub: string;
  jwt: string;
  entry: CacheEntry;
  ref: CacheRef;
  claimValues: string[];
}

/** A fresh opaque token and the JWT the token service would give for it. */
async function newToken(sub: string, variant = '', extra: Record<string, unknown> = {}): Promise<Token> {
  const token = `opaque-${randomBytes(24).toString('base64url')}`;
  const email = `${sub}@mail.example.test`;
  const clientId = `client-${randomBytes(6).toString('hex')}`;
  const scope = 'orders:read orders:write-secretscope';
  const jwt = await signJwt({ sub, email, client_id: clientId, scope, ...extra });
  const entry = (await revive(jwt))!;
  expect(entry).toBeDefined();
  return {
    token,
    sub,
    jwt,
    entry,
    ref: { tag: keyer(token), variant, token },
    claimValues: [sub, email, clientId, scope, 'orders:write-secretscope'],
  };
}

// --- replicas: own memory, own ioredis connections, one Redis -----------------------------------

interface Replica {
  memory: MemoryCache;
  metrics: CacheMetrics;
  cache: TieredCache;
  redis: RedisStore;
}

const stores: RedisStore[] = [];
const clients: Redis[] = [];
const servers: RedisServerHandle[] = [];

async function replica(url: string, opts: { waitReady?: boolean } = {}): Promise<Replica> {
  const redis = createRedisStore(
    { url, keyPrefix: PREFIX, commandTimeoutMs: COMMAND_TIMEOUT_MS },
    { logger: silentLogger() },
  );
  stores.push(redis);
  if (opts.waitReady !== false) await waitFor(() => redis.state() === 'ready', 'redis store ready');
  const memory = createMemoryCache({ maxEntries: 1000 });
  const metrics = createCacheMetrics();
  const cache = createTieredCache({
    memory,
    redis,
    cipher: createValueCipher(SECRET),
    revive,
    metrics,
    variants: VARIANTS,
    clockSkewSeconds: SKEW,
    maxTtlSeconds: MAX_TTL,
  });
  return { memory, metrics, cache, redis };
}

async function inspector(url: string): Promise<Redis> {
  const c = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  c.on('error', () => {});
  clients.push(c);
  await guard(c.connect(), 5000, 'inspector connect');
  return c;
}

/** Every key in the database (SCAN, bounded). */
async function allKeys(c: Redis): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  for (let i = 0; i < 1000; i++) {
    const [next, batch] = await c.scan(cursor, 'COUNT', 1000);
    keys.push(...batch);
    cursor = next;
    if (cursor === '0') break;
  }
  return [...new Set(keys)].sort();
}

/** Every stored byte: keys, string values, set members. */
async function dump(c: Redis): Promise<string[]> {
  const out: string[] = [];
  for (const key of await allKeys(c)) {
    out.push(key);
    const type = await c.type(key);
    if (type === 'string') out.push((await c.get(key)) ?? '');
    else if (type === 'set') out.push(...(await c.smembers(key)));
    else throw new Error(`unexpected key type ${type} for ${key}`);
  }
  return out;
}

function encodings(s: string): string[] {
  const b = Buffer.from(s, 'utf8');
  return [s, b.toString('base64'), b.toString('base64url'), b.toString('hex')];
}

const l1Key = (ref: CacheRef) => (ref.variant === '' ? ref.tag : `${ref.tag}.${ref.variant}`);

beforeAll(async () => {
  const pair = await generateKeyPair('ES256', { extractable: true });
  signingKey = pair.privateKey;
  foreignKey = (await generateKeyPair('ES256')).privateKey;
  const jwk: JWK = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  verifier = createJwtVerifier({
    algorithms: ['ES256'],
    issuer: ISSUER,
    clockSkewSeconds: SKEW,
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

describe('tiered cache against a real redis-server', () => {
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

  it('store → lookup is an L1 hit on the same replica', async () => {
    const a = await replica(server.url);
    const t = await newToken('alice');
    await a.cache.store(t.ref, t.entry, 120);
    const r = await a.cache.lookup(t.ref);
    expect(r).toEqual({ kind: 'hit', entry: t.entry, level: 'l1' });
    expect(a.metrics.hitsL1).toBe(1);
    expect(a.metrics.hitsL2).toBe(0);
    expect(a.metrics.misses).toBe(0);
  });

  it('a second replica (own memory) gets an L2 hit that fills its L1', async () => {
    const a = await replica(server.url);
    const b = await replica(server.url);
    const t = await newToken('alice');
    await a.cache.store(t.ref, t.entry, 120);

    expect(b.memory.get(l1Key(t.ref))).toBeUndefined();
    const first = await b.cache.lookup(t.ref);
    expect(first.kind).toBe('hit');
    if (first.kind !== 'hit') return;
    expect(first.level).toBe('l2');
    expect(first.entry.jwt).toBe(t.jwt);
    expect(first.entry.exp).toBe(t.entry.exp);
    expect(first.entry.claims['sub']).toBe('alice');
    expect(first.entry.subTag).toBe(subjectTag(keyer, 'alice'));
    expect(b.metrics.hitsL2).toBe(1);
    expect(b.memory.get(l1Key(t.ref))?.jwt).toBe(t.jwt);

    const second = await b.cache.lookup(t.ref);
    expect(second.kind === 'hit' && second.level).toBe('l1');
    expect(b.metrics).toMatchObject({ hitsL1: 1, hitsL2: 1, misses: 0, l2Rejected: 0 });
  });

  it('an unknown token is a miss in both levels', async () => {
    const a = await replica(server.url);
    const t = await newToken('nobody');
    expect(await a.cache.lookup(t.ref)).toEqual({ kind: 'miss' });
    expect(a.metrics.misses).toBe(1);
    expect(await a.cache.lookup(t.ref, { l2Only: true })).toEqual({ kind: 'miss' });
    expect(a.metrics.misses).toBe(1); // l2Only lookups are the coalescer's re-reads: not counted
  });

  it('Redis holds no JWT, no token, no sub and no claim value (keys, values, index members)', async () => {
    const a = await replica(server.url);
    const tokens = [
      await newToken('alice'),
      await newToken('alice'),
      await newToken('bob', VARIANT_A),
      await newToken('carol-the-subject'),
    ];
    for (const t of tokens) await a.cache.store(t.ref, t.entry, 120);
    const inactive = await newToken('mallory');
    await a.cache.storeInactive(inactive.ref, 5);

    const everything = await dump(raw);
    expect(everything.length).toBeGreaterThanOrEqual(tokens.length + 3);
    const needles = [
      ...tokens.flatMap((t) => [
        ...encodings(t.token),
        ...encodings(t.jwt),
        ...t.jwt.split('.'),
        ...t.claimValues.flatMap(encodings),
      ]),
      ...encodings(inactive.token),
    ];
    for (const stored of everything) {
      for (const needle of needles) {
        expect(stored.includes(needle), `Redis leaks ${needle.slice(0, 24)}…`).toBe(false);
      }
    }
    // Values are sealed, not plain JWTs.
    for (const t of tokens) {
      const v = await raw.get(PREFIX + redisKeys.jwt(t.ref.tag, t.ref.variant));
      expect(v).toMatch(/^v1\.[A-Za-z0-9_-]+$/);
    }
  });

  it('writes keys that follow redisKeys with the {tag} hash tag, each with a TTL within its bound', async () => {
    const a = await replica(server.url);
    const t = await newToken('alice');
    const u = await newToken('alice', VARIANT_A);
    const bad = await newToken('eve');
    await a.cache.store(t.ref, t.entry, 120);
    await a.cache.store(u.ref, u.entry, 30);
    await a.cache.storeInactive(bad.ref, 5);

    const subTag = subjectTag(keyer, 'alice');
    const expected = [
      PREFIX + redisKeys.jwt(t.ref.tag, ''),
      PREFIX + redisKeys.jwt(u.ref.tag, VARIANT_A),
      PREFIX + redisKeys.inactive(bad.ref.tag),
      PREFIX + redisKeys.subIndex(subTag),
    ].sort();
    expect(await allKeys(raw)).toEqual(expected);
    expect(PREFIX + redisKeys.jwt(t.ref.tag, '')).toBe(`${PREFIX}{${t.ref.tag}}:jwt`);
    expect(PREFIX + redisKeys.jwt(u.ref.tag, VARIANT_A)).toBe(`${PREFIX}{${u.ref.tag}}:jwt:${VARIANT_A}`);
    expect(PREFIX + redisKeys.inactive(bad.ref.tag)).toBe(`${PREFIX}{${bad.ref.tag}}:neg`);
    expect(PREFIX + redisKeys.subIndex(subTag)).toBe(`${PREFIX}sub:{${subTag}}`);
    // Every key of one token shares its hash tag (one Cluster slot).
    for (const ref of [t.ref, u.ref]) {
      const slots = VARIANTS.map((v) => redisKeys.jwt(ref.tag, v))
        .concat(redisKeys.inactive(ref.tag), redisKeys.lock(ref.tag, ''), redisKeys.lock(ref.tag, VARIANT_A))
        .map((k) => /\{([^}]*)\}/.exec(k)?.[1]);
      expect(new Set(slots)).toEqual(new Set([ref.tag]));
    }

    const bounds: Record<string, number> = {
      [PREFIX + redisKeys.jwt(t.ref.tag, '')]: 120,
      [PREFIX + redisKeys.jwt(u.ref.tag, VARIANT_A)]: 30,
      [PREFIX + redisKeys.inactive(bad.ref.tag)]: 5,
      [PREFIX + redisKeys.subIndex(subTag)]: MAX_TTL,
    };
    for (const key of await allKeys(raw)) {
      const pttl = await raw.pttl(key);
      expect(pttl, `PTTL of ${key}`).toBeGreaterThan(0); // -1 would be a key without TTL
      expect(pttl, `PTTL of ${key}`).toBeLessThanOrEqual((bounds[key] ?? 0) * 1000);
    }
    expect((await raw.smembers(PREFIX + redisKeys.subIndex(subTag))).sort()).toEqual(
      [t.ref.tag, u.ref.tag].sort(),
    );
  });

  it('a fractional TTL is rounded down for Redis and never leaves a key without TTL', async () => {
    const a = await replica(server.url);
    const t = await newToken('frank');
    await a.cache.store(t.ref, t.entry, 2.9);
    const pttl = await raw.pttl(PREFIX + redisKeys.jwt(t.ref.tag, ''));
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(2000);
    // ≤ 0 stores nothing at all.
    const z = await newToken('zed');
    await a.cache.store(z.ref, z.entry, 0);
    await a.cache.storeInactive(z.ref, 0);
    expect(
      await raw.exists(PREFIX + redisKeys.jwt(z.ref.tag, ''), PREFIX + redisKeys.inactive(z.ref.tag)),
    ).toBe(0);
    expect(await a.cache.lookup(z.ref)).toEqual({ kind: 'miss' });
    for (const key of await allKeys(raw)) expect(await raw.pttl(key), key).toBeGreaterThan(0);
  });

  it('a TTL under one second stays in L1 only: no Redis key, no failed Redis command', async () => {
    const a = await replica(server.url);
    const errorsBefore = a.redis.errors();
    const tokens = [
      await newToken('brief'),
      await newToken('brief'),
      await newToken('brief'),
      await newToken('brief'),
    ];
    for (const t of tokens) await a.cache.store(t.ref, t.entry, 0.5);
    for (const t of tokens) {
      const r = await a.cache.lookup(t.ref);
      expect(r.kind === 'hit' && r.level).toBe('l1');
      expect(await raw.exists(PREFIX + redisKeys.jwt(t.ref.tag, ''))).toBe(0);
    }
    expect(a.redis.errors()).toBe(errorsBefore);
    expect(a.redis.state()).toBe('ready');
    for (const key of await allKeys(raw)) expect(await raw.pttl(key), key).toBeGreaterThan(0);
  });

  it('a value with a flipped byte is a miss and counted in l2Rejected', async () => {
    const a = await replica(server.url);
    const b = await replica(server.url);
    const t = await newToken('alice');
    await a.cache.store(t.ref, t.entry, 120);
    const key = PREFIX + redisKeys.jwt(t.ref.tag, '');
    const sealed = (await raw.get(key))!;
    const body = Buffer.from(sealed.slice(3), 'base64url');
    body[20] = (body[20] ?? 0) ^ 0x80;
    await raw.set(key, `v1.${body.toString('base64url')}`, 'KEEPTTL');

    expect(await guard(b.cache.lookup(t.ref))).toEqual({ kind: 'miss' });
    expect(b.metrics.l2Rejected).toBe(1);
    expect(b.metrics.misses).toBe(1);
    expect(b.metrics.hitsL2).toBe(0);
    expect(b.memory.get(l1Key(t.ref))).toBeUndefined();
  });

  it("another token's value copied onto this key is a miss and counted in l2Rejected", async () => {
    const a = await replica(server.url);
    const b = await replica(server.url);
    const victim = await newToken('alice');
    const attacker = await newToken('mallory');
    await a.cache.store(victim.ref, victim.entry, 120);
    await a.cache.store(attacker.ref, attacker.entry, 120);
    const attackerValue = (await raw.get(PREFIX + redisKeys.jwt(attacker.ref.tag, '')))!;
    await raw.set(PREFIX + redisKeys.jwt(victim.ref.tag, ''), attackerValue, 'EX', 120);

    expect(await b.cache.lookup(victim.ref)).toEqual({ kind: 'miss' });
    expect(b.metrics.l2Rejected).toBe(1);
    // The attacker's own entry still works.
    const own = await b.cache.lookup(attacker.ref);
    expect(own.kind === 'hit' && own.entry.claims['sub']).toBe('mallory');
  });

  it('garbage, a plain JWT, or a correctly sealed JWT that no longer verifies is a miss, never an error', async () => {
    const b = await replica(server.url);
    const cipher = createValueCipher(SECRET);
    const cases: Array<[string, (t: Token, key: string) => Promise<string>]> = [
      ['garbage', async () => 'not-a-sealed-value'],
      ['plain JWT', async (t) => t.jwt],
      ['wrong version', async (t, key) => `v9.${cipher.seal(t.token, key, t.jwt).slice(3)}`],
      [
        'foreign signer',
        async (t, key) => cipher.seal(t.token, key, await signJwt({ sub: t.sub }, { key: foreignKey })),
      ],
      [
        'expired JWT',
        async (t, key) => cipher.seal(t.token, key, await signJwt({ sub: t.sub }, { expiresIn: -120 })),
      ],
      ['not a JWT', async (t, key) => cipher.seal(t.token, key, 'hello world')],
    ];
    let rejected = 0;
    for (const [name, make] of cases) {
      const t = await newToken(`subject-${name.replace(/\W/g, '-')}`);
      const key = PREFIX + redisKeys.jwt(t.ref.tag, '');
      await raw.set(key, await make(t, key), 'EX', 60);
      expect(await guard(b.cache.lookup(t.ref), 2000, name), name).toEqual({ kind: 'miss' });
      expect(b.metrics.l2Rejected, name).toBe(++rejected);
    }
    // Control: a correctly sealed, valid JWT under the right key is a hit.
    const ok = await newToken('control');
    const okKey = PREFIX + redisKeys.jwt(ok.ref.tag, '');
    await raw.set(okKey, cipher.seal(ok.token, okKey, ok.jwt), 'EX', 60);
    expect((await b.cache.lookup(ok.ref)).kind).toBe('hit');
    expect(b.metrics.l2Rejected).toBe(rejected);
  });

  it('storeInactive → inactive in L1, and in a second replica through L2 (then its L1)', async () => {
    const a = await replica(server.url);
    const b = await replica(server.url);
    const t = await newToken('inactive-user');
    await a.cache.storeInactive(t.ref, 5);

    expect(await a.cache.lookup(t.ref)).toEqual({ kind: 'inactive', level: 'l1' });
    expect(a.metrics.negativeHitsL1).toBe(1);

    expect(await b.cache.lookup(t.ref)).toEqual({ kind: 'inactive', level: 'l2' });
    expect(b.metrics.negativeHitsL2).toBe(1);
    expect(b.memory.isInactive(t.ref.tag)).toBe(true);
    expect(await b.cache.lookup(t.ref)).toEqual({ kind: 'inactive', level: 'l1' });
    expect(b.metrics.negativeHitsL1).toBe(1);

    const pttl = await raw.pttl(PREFIX + redisKeys.inactive(t.ref.tag));
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(5000);
    // The verdict applies to every variant of the token.
    expect((await b.cache.lookup({ ...t.ref, variant: VARIANT_A }, { l2Only: true })).kind).toBe('inactive');
  });

  it('mint variants: two variants of one tag are separate entries; deleteRemote removes all of them', async () => {
    const a = await replica(server.url);
    const b = await replica(server.url);
    const base = await newToken('alice');
    const jwtA = await signJwt({ sub: 'alice', aud: 'https://api-a.example.test' });
    const jwtB = await signJwt({ sub: 'alice', aud: 'https://api-b.example.test' });
    const refA: CacheRef = { ...base.ref, variant: VARIANT_A };
    const refB: CacheRef = { ...base.ref, variant: VARIANT_B };
    await a.cache.store(refA, (await revive(jwtA))!, 120);
    await a.cache.store(refB, (await revive(jwtB))!, 120);

    for (const c of [a, b]) {
      const ra = await c.cache.lookup(refA);
      const rb = await c.cache.lookup(refB);
      expect(ra.kind === 'hit' && ra.entry.jwt).toBe(jwtA);
      expect(rb.kind === 'hit' && rb.entry.jwt).toBe(jwtB);
      expect(await c.cache.lookup(base.ref)).toEqual({ kind: 'miss' }); // the '' variant is not stored
    }
    const keyA = PREFIX + redisKeys.jwt(base.ref.tag, VARIANT_A);
    const keyB = PREFIX + redisKeys.jwt(base.ref.tag, VARIANT_B);
    expect(await raw.exists(keyA, keyB)).toBe(2);
    expect(await raw.get(keyA)).not.toBe(await raw.get(keyB));

    expect(await a.cache.deleteRemote([base.ref.tag])).toBe(2);
    expect(await raw.exists(keyA, keyB)).toBe(0);
    // A third replica (empty L1) now misses both.
    const c = await replica(server.url);
    expect(await c.cache.lookup(refA)).toEqual({ kind: 'miss' });
    expect(await c.cache.lookup(refB)).toEqual({ kind: 'miss' });
    expect(await a.cache.deleteRemote([])).toBe(0);
    expect(await a.cache.deleteRemote([base.ref.tag])).toBe(0);
  });

  it('deleteRemote counts every deleted key across several tags', async () => {
    const a = await replica(server.url);
    const tokens = await Promise.all(['t1', 't2', 't3', 't4'].map((s) => newToken(s)));
    for (const t of tokens) await a.cache.store(t.ref, t.entry, 60);
    await a.cache.store({ ...tokens[0]!.ref, variant: VARIANT_A }, tokens[0]!.entry, 60);
    await a.cache.storeInactive(tokens[1]!.ref, 5);
    const unknown = await newToken('unknown');
    // 4 entries + 1 variant + 1 verdict; the unknown tag deletes nothing.
    expect(await a.cache.deleteRemote([...tokens.map((t) => t.ref.tag), unknown.ref.tag])).toBe(6);
    for (const t of tokens) expect(await raw.exists(PREFIX + redisKeys.jwt(t.ref.tag, ''))).toBe(0);
  });

  it('deleteRemote also removes an inactive verdict and leaves other tokens alone', async () => {
    const a = await replica(server.url);
    const gone = await newToken('gone');
    const kept = await newToken('kept');
    await a.cache.storeInactive(gone.ref, 5);
    await a.cache.store(kept.ref, kept.entry, 60);
    expect(await a.cache.deleteRemote([gone.ref.tag])).toBe(1);
    expect(await raw.exists(PREFIX + redisKeys.inactive(gone.ref.tag))).toBe(0);
    expect(await raw.exists(PREFIX + redisKeys.jwt(kept.ref.tag, ''))).toBe(1);
  });

  it('evictLocal by tag (every variant and the verdict) and by subject tag', async () => {
    const a = await replica(server.url);
    const t1 = await newToken('alice');
    const t2 = await newToken('alice');
    const t3 = await newToken('bob');
    const bad = await newToken('eve');
    const t1a: CacheRef = { ...t1.ref, variant: VARIANT_A };
    await a.cache.store(t1.ref, t1.entry, 60);
    await a.cache.store(t1a, t1.entry, 60);
    await a.cache.store(t2.ref, t2.entry, 60);
    await a.cache.store(t3.ref, t3.entry, 60);
    await a.cache.storeInactive(bad.ref, 5);

    expect(a.cache.evictLocal([t1.ref.tag])).toBe(2);
    expect(a.memory.get(l1Key(t1.ref))).toBeUndefined();
    expect(a.memory.get(l1Key(t1a))).toBeUndefined();
    expect(a.memory.get(l1Key(t2.ref))).toBeDefined();

    expect(a.cache.evictLocal([bad.ref.tag])).toBe(0); // verdicts are dropped but not counted
    expect(a.memory.isInactive(bad.ref.tag)).toBe(false);

    expect(a.cache.evictLocal([], subjectTag(keyer, 'alice'))).toBe(1);
    expect(a.memory.get(l1Key(t2.ref))).toBeUndefined();
    expect(a.memory.get(l1Key(t3.ref))?.claims['sub']).toBe('bob');
    expect(a.cache.evictLocal([], subjectTag(keyer, 'nobody'))).toBe(0);
    // evictLocal is local only: Redis still has the entries.
    expect(await raw.exists(PREFIX + redisKeys.jwt(t1.ref.tag, ''))).toBe(1);
  });

  it('takeSubjectTags returns the tags of a subject and removes its index (only its index)', async () => {
    const a = await replica(server.url);
    const t1 = await newToken('alice');
    const t2 = await newToken('alice');
    const t3 = await newToken('bob');
    for (const t of [t1, t2, t3]) await a.cache.store(t.ref, t.entry, 60);
    const alice = subjectTag(keyer, 'alice');
    const bob = subjectTag(keyer, 'bob');

    expect((await a.cache.takeSubjectTags(alice)).sort()).toEqual([t1.ref.tag, t2.ref.tag].sort());
    expect(await raw.exists(PREFIX + redisKeys.subIndex(alice))).toBe(0);
    expect(await a.cache.takeSubjectTags(alice)).toEqual([]);
    expect(await raw.smembers(PREFIX + redisKeys.subIndex(bob))).toEqual([t3.ref.tag]);
    expect(await a.cache.takeSubjectTags(subjectTag(keyer, 'nobody'))).toEqual([]);
  });

  it('an L2 hit fills L1 for no longer than the Redis entry still lives (e.g. a max-age cap)', async () => {
    const a = await replica(server.url);
    const b = await replica(server.url);
    const t = await newToken('capped'); // the JWT lives 600 s
    await a.cache.store(t.ref, t.entry, 3); // but the answer said max-age=3
    const pttl = await raw.pttl(PREFIX + redisKeys.jwt(t.ref.tag, ''));
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(3000);

    let nowMs = Date.now();
    const memory = createMemoryCache({ maxEntries: 10, now: () => nowMs });
    const metrics = createCacheMetrics();
    const c = createTieredCache({
      memory,
      redis: b.redis,
      cipher: createValueCipher(SECRET),
      revive,
      metrics,
      variants: VARIANTS,
      clockSkewSeconds: SKEW,
      maxTtlSeconds: MAX_TTL,
      now: () => nowMs,
    });
    const first = await c.lookup(t.ref);
    expect(first.kind === 'hit' && first.level).toBe('l2');
    expect(memory.get(l1Key(t.ref))).toBeDefined();
    nowMs += 3000; // the Redis entry is gone by now: the L1 copy must be too
    expect(memory.get(l1Key(t.ref))).toBeUndefined();
    expect(metrics.hitsL2).toBe(1);
  });

  it('an L2 hit fills L1 for no longer than the JWT lives minus the clock skew', async () => {
    const a = await replica(server.url);
    const b = await replica(server.url);
    const t = await newToken('short');
    // A JWT that expires in 8 s stored for (wrongly) 120 s: L1 of the reader follows exp − skew.
    const jwt = await signJwt({ sub: 'short' }, { expiresIn: 8 });
    const entry = (await revive(jwt))!;
    await a.cache.store(t.ref, entry, 120);
    const r = await b.cache.lookup(t.ref);
    expect(r.kind).toBe('hit');
    // Not observable without a clock: check through a fake-clock cache instead.
    let nowMs = Date.now();
    const memory = createMemoryCache({ maxEntries: 10, now: () => nowMs });
    const c = createTieredCache({
      memory,
      redis: b.redis,
      cipher: createValueCipher(SECRET),
      revive,
      metrics: createCacheMetrics(),
      variants: VARIANTS,
      clockSkewSeconds: SKEW,
      maxTtlSeconds: MAX_TTL,
      now: () => nowMs,
    });
    expect((await c.lookup(t.ref)).kind).toBe('hit');
    expect(memory.get(l1Key(t.ref))).toBeDefined();
    nowMs += (8 - SKEW + 1) * 1000;
    expect(memory.get(l1Key(t.ref))).toBeUndefined();
  });
});

describe('tiered cache when Redis dies', () => {
  let server: RedisServerHandle;

  beforeAll(async () => {
    server = await startRedisServer();
    servers.push(server);
  });

  it('lookup/store resolve (misses) with Redis killed, and L1 keeps working', async () => {
    const a = await replica(server.url);
    const before = await newToken('alice');
    await a.cache.store(before.ref, before.entry, 60);

    await server.kill();

    // Right after the kill (the client may not have noticed yet) and after it has.
    for (let round = 0; round < 2; round++) {
      const cold = await newToken(`cold-${round}`);
      expect(await guard(a.cache.lookup(cold.ref), 2000, 'lookup (miss) with Redis killed')).toEqual({
        kind: 'miss',
      });
      const hit = await guard(a.cache.lookup(before.ref), 2000, 'lookup (L1) with Redis killed');
      expect(hit.kind === 'hit' && hit.level).toBe('l1');

      const fresh = await newToken(`fresh-${round}`);
      await guard(a.cache.store(fresh.ref, fresh.entry, 60), 2000, 'store with Redis killed');
      const got = await guard(a.cache.lookup(fresh.ref), 2000, 'lookup after store');
      expect(got.kind === 'hit' && got.level).toBe('l1');

      const bad = await newToken(`bad-${round}`);
      await guard(a.cache.storeInactive(bad.ref, 5), 2000, 'storeInactive with Redis killed');
      expect(await guard(a.cache.lookup(bad.ref))).toEqual({ kind: 'inactive', level: 'l1' });

      expect(await guard(a.cache.deleteRemote([fresh.ref.tag]), 2000, 'deleteRemote')).toBe(0);
      expect(
        await guard(a.cache.takeSubjectTags(subjectTag(keyer, 'alice')), 2000, 'takeSubjectTags'),
      ).toEqual([]);
      expect(await guard(a.cache.lookup(fresh.ref, { l2Only: true }))).toEqual({ kind: 'miss' });

      if (round === 0) await waitFor(() => a.redis.state() === 'down', 'store down');
    }
    expect(a.metrics.l2Rejected).toBe(0);
  });

  it('lookup/store resolve while Redis is frozen (SIGSTOP), bounded by the command timeout', async () => {
    await server.restart();
    const a = await replica(server.url);
    const before = await newToken('alice');
    await a.cache.store(before.ref, before.entry, 60);
    server.pause();
    try {
      for (let i = 0; i < 5; i++) {
        const t = await newToken(`frozen-${i}`);
        expect(await guard(a.cache.lookup(t.ref), 3000, 'lookup while frozen')).toEqual({ kind: 'miss' });
        await guard(a.cache.store(t.ref, t.entry, 60), 3000, 'store while frozen');
        const hit = await guard(a.cache.lookup(t.ref), 3000, 'L1 lookup while frozen');
        expect(hit.kind === 'hit' && hit.level).toBe('l1');
      }
      const hit = await guard(a.cache.lookup(before.ref), 3000, 'L1 lookup while frozen');
      expect(hit.kind === 'hit' && hit.level).toBe('l1');
    } finally {
      server.resume();
    }
  });

  it('an L1 entry that stillValid refuses (its key left the JWKS) is dropped and the lookup is a miss', async () => {
    const memory = createMemoryCache({ maxEntries: 100 });
    let published = true;
    const seen: Array<string | undefined> = [];
    const cache = createTieredCache({
      memory,
      cipher: createValueCipher(SECRET),
      revive,
      metrics: createCacheMetrics(),
      variants: VARIANTS,
      clockSkewSeconds: SKEW,
      maxTtlSeconds: MAX_TTL,
      stillValid: (e) => {
        seen.push(e.kid);
        return published;
      },
    });
    const t = await newToken('rotated');
    await cache.store(t.ref, { ...t.entry, kid: 'old-kid' }, 60);
    expect((await cache.lookup(t.ref)).kind).toBe('hit');
    published = false;
    expect(await cache.lookup(t.ref)).toEqual({ kind: 'miss' });
    // Dropped, not just hidden: publishing the key again does not bring the entry back.
    published = true;
    expect(await cache.lookup(t.ref)).toEqual({ kind: 'miss' });
    expect(seen).toEqual(['old-kid', 'old-kid']);
  });

  it('works on L1 alone when no Redis is configured', async () => {
    const memory = createMemoryCache({ maxEntries: 100 });
    const metrics = createCacheMetrics();
    const cache = createTieredCache({
      memory,
      cipher: createValueCipher(SECRET),
      revive,
      metrics,
      variants: VARIANTS,
      clockSkewSeconds: SKEW,
      maxTtlSeconds: MAX_TTL,
    });
    const t = await newToken('solo');
    expect(await cache.lookup(t.ref)).toEqual({ kind: 'miss' });
    await cache.store(t.ref, t.entry, 60);
    expect((await cache.lookup(t.ref)).kind).toBe('hit');
    await cache.storeInactive({ ...t.ref, tag: keyer('other') }, 5);
    expect((await cache.lookup({ ...t.ref, tag: keyer('other') })).kind).toBe('inactive');
    expect(await cache.deleteRemote([t.ref.tag])).toBe(0);
    expect(await cache.takeSubjectTags(t.entry.subTag!)).toEqual([]);
    expect(cache.evictLocal([t.ref.tag])).toBe(1);
    expect(await cache.lookup(t.ref)).toEqual({ kind: 'miss' });
  });
});
