import { createHmac, createPublicKey, type JsonWebKey, randomBytes, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { freePort } from '../../helpers/free-port.ts';
import { accessLine, type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * Mode accept-jwt end to end (SPEC §4 stage 4, §5, §6): the real gateway process in front of a
 * stub token service with Curity's `Accept: application/jwt` behaviour, a real redis-server and
 * a recording upstream.
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'accept-jwt-gateway-secret-0123456789';
const CACHE_KEY = 'c'.repeat(48);
const AUD = 'https://api.example.test';
const ENV = { GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY };

let stub: CurityStub;
let redis: RedisServerHandle;
let up: EchoUpstream;
let attacker: { url: string; hits: number; close(): Promise<void> };
let deadPort: number;
/** accept-jwt with jwt.audience, Redis, default cache limits. */
let gw: GatewayProcess;
/** Same config, same Redis and PHANTOM_CACHE_KEY: a second replica. */
let replica: GatewayProcess;
/** cache.maxTtlSeconds: 1, no Redis. */
let shortGw: GatewayProcess;
/** Every token service URL points at a closed port. */
let deadGw: GatewayProcess;
let config: Record<string, unknown>;

const issuedTokens: string[] = [];
/** Every JWT the stub put into an answer (or that a test crafted), in order. */
const issuedJwts: string[] = [];
/** Crafted JWTs, by the marker claim of the token they are served for. */
const crafted = new Map<string, string>();
const servedCrafted = new Set<string>();
/** The stub's own signer (the wrapper below replaces `stub.signJwt`). */
let realSign: CurityStub['signJwt'];

const routes = (upstream: string) => [
  {
    name: 'invoices',
    match: { pathPrefix: '/api/invoices' },
    upstream,
    scopes: ['invoice_read'],
  },
];

async function startAttackerJwks(): Promise<typeof attacker> {
  const state = { url: '', hits: 0, close: async () => {} };
  const server: Server = createServer((_req, res) => {
    state.hits++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys: [stub.attackerPublicJwk] }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`;
  state.close = () =>
    new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
  return state;
}

beforeAll(async () => {
  [stub, redis, up, deadPort] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startRedisServer(),
    startEchoUpstream(),
    freePort(),
  ]);
  attacker = await startAttackerJwks();
  // The stub signs every answer with `stub.signJwt(claims)`: wrapping it records each JWT it
  // hands out and lets a test choose the exact JWT served for one token (by a marker claim).
  realSign = stub.signJwt;
  stub.signJwt = async (claims = {}, header, opts) => {
    const marker = claims['x_crafted'];
    let jwt: string;
    if (typeof marker === 'string' && crafted.has(marker)) {
      jwt = crafted.get(marker)!;
      servedCrafted.add(marker);
    } else {
      jwt = await realSign(claims, header, opts);
    }
    issuedJwts.push(jwt);
    return jwt;
  };

  config = {
    tokenService: {
      issuer: stub.issuer,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 500,
    },
    jwt: { audience: AUD },
    cache: { redis: { url: redis.url, commandTimeoutMs: 100 } },
    routes: routes(up.url),
  };
  const dead = `http://127.0.0.1:${deadPort}`;
  [gw, replica, shortGw, deadGw] = await Promise.all([
    startGateway(config, { env: ENV }),
    startGateway(config, { env: ENV }),
    startGateway(
      {
        tokenService: config['tokenService'],
        jwt: { audience: AUD },
        cache: { maxTtlSeconds: 1 },
        routes: routes(up.url),
      },
      { env: ENV },
    ),
    startGateway(
      {
        tokenService: {
          issuer: dead,
          introspectionEndpoint: `${dead}/introspect`,
          clientId: CLIENT_ID,
          clientSecret: '${GW_SECRET}',
          mode: 'accept-jwt',
          timeoutMs: 500,
        },
        jwt: { jwksUri: `${dead}/jwks` },
        routes: routes(up.url),
      },
      { env: ENV },
    ),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([gw?.stop(), replica?.stop(), shortGw?.stop(), deadGw?.stop()]);
  await Promise.all([stub?.close(), redis?.stop(), up?.close(), attacker?.close()]);
});

/** A fresh opaque token the stub considers active, with these JWT claims. */
function activeToken(claims: Record<string, unknown> = {}, opts: { maxAge?: number } = {}): string {
  const t = stub.newToken();
  stub.register(t, { sub: 'alice', aud: AUD, scope: 'invoice_read', ...claims }, opts);
  issuedTokens.push(t);
  return t;
}

/** An active token for which the stub answers exactly `jwt`. */
function tokenAnswering(jwt: string): string {
  const marker = randomBytes(8).toString('hex');
  crafted.set(marker, jwt);
  issuedJwts.push(jwt);
  return activeToken({ x_crafted: marker });
}
const wasServed = (jwt: string) => [...crafted].some(([marker, j]) => j === jwt && servedCrafted.has(marker));

/** One request through gateway `g` with a known request id. */
async function call(t: string, g: GatewayProcess = gw): Promise<{ res: SimpleResponse; id: string }> {
  const id = `test-${randomUUID()}`;
  const res = await request(`${g.url}/api/invoices/7`, {
    headers: { authorization: `Bearer ${t}`, 'x-request-id': id },
  });
  return { res, id };
}

/** Introspection requests the stub received for this token. */
const introspections = (t: string) => stub.requests.filter((r) => r.body.get('token') === t).length;

/** The JWT the upstream received for this request id (undefined: nothing was forwarded). */
function forwardedJwt(id: string): string | undefined {
  const got = up.requests.find((r) => r.headers['x-request-id'] === id);
  return got === undefined ? undefined : String(got.headers.authorization).replace(/^Bearer /, '');
}

function expectErrorBody(res: SimpleResponse, error: string, id: string): void {
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  expect(res.headers['cache-control']).toBe('no-store');
  const body = res.json();
  expect(body['error']).toBe(error);
  expect(typeof body['error_description']).toBe('string');
  expect(body['request_id']).toBe(id);
}

describe('an active token', () => {
  it('is forwarded as exactly the JWT the token service issued', async () => {
    const t = activeToken();
    const before = issuedJwts.length;
    const { res, id } = await call(t);
    expect(res.status).toBe(200);
    expect(issuedJwts.length).toBe(before + 1);
    expect(forwardedJwt(id)).toBe(issuedJwts.at(-1));
    expect((await accessLine(gw, id))['reason']).toBe('allowed');
  });

  it('is introspected with POST token + token_type_hint, Accept: application/jwt, client_secret_basic and the request id', async () => {
    const t = activeToken();
    const { res, id } = await call(t);
    expect(res.status).toBe(200);
    // The stub records only POSTs to its introspection endpoint (other methods get 405 unrecorded).
    const seen = stub.requests.filter((r) => r.body.get('token') === t);
    expect(seen.length).toBe(1);
    const { headers, body } = seen[0]!;
    expect([...body.keys()].sort()).toEqual(['token', 'token_type_hint']);
    expect(body.get('token_type_hint')).toBe('access_token');
    expect(headers['content-type']).toMatch(/^application\/x-www-form-urlencoded/);
    expect(headers.accept).toBe('application/jwt');
    expect(headers.authorization).toBe(
      `Basic ${Buffer.from(`${CLIENT_ID}:${GW_SECRET}`).toString('base64')}`,
    );
    expect(headers['x-request-id']).toBe(id);
  });

  it('is introspected once and then served from the cache', async () => {
    const t = activeToken();
    for (let i = 0; i < 4; i++) expect((await call(t)).res.status).toBe(200);
    expect(introspections(t)).toBe(1);
  });
});

describe('an inactive token (204)', () => {
  it('gets 401 invalid_token with reason token_inactive, and the verdict is negative-cached', async () => {
    const t = stub.newToken(); // never registered: the stub answers 204
    issuedTokens.push(t);
    const first = await call(t);
    expect(first.res.status).toBe(401);
    expectErrorBody(first.res, 'invalid_token', first.id);
    expect(first.res.headers['www-authenticate']).toBe(
      'Bearer realm="api", error="invalid_token", error_description="The access token is invalid or expired"',
    );
    expect((await accessLine(gw, first.id))['reason']).toBe('token_inactive');
    expect(introspections(t)).toBe(1);

    const second = await call(t);
    expect(second.res.status).toBe(401);
    expect((await accessLine(gw, second.id))['reason']).toBe('token_inactive');
    expect(introspections(t)).toBe(1);
    expect(forwardedJwt(first.id)).toBeUndefined();
    expect(forwardedJwt(second.id)).toBeUndefined();
  });
});

describe('cache lifetime (SPEC §4 stage 4)', () => {
  it('honours Cache-Control: max-age=1 of the answer; without max-age the entry stays cached', async () => {
    const capped = activeToken({}, { maxAge: 1 });
    const uncapped = activeToken();
    const started = Date.now();
    expect((await call(capped)).res.status).toBe(200);
    expect((await call(uncapped)).res.status).toBe(200);
    await waitFor(
      async () => {
        expect((await call(capped)).res.status).toBe(200);
        expect((await call(uncapped)).res.status).toBe(200);
        return introspections(capped) >= 2;
      },
      10_000,
      'the max-age=1 entry to expire',
    );
    // The capped entry was cached (not re-introspected at once) …
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(introspections(capped)).toBe(2);
    // … and over the same time the uncapped one was not introspected again.
    expect(introspections(uncapped)).toBe(1);
  });

  it('forwards a JWT that expires within the clock skew but does not cache it', async () => {
    const t = activeToken({ exp: Math.floor(Date.now() / 1000) + 10 }); // skew is 30 s
    for (let i = 1; i <= 3; i++) {
      const { res, id } = await call(t);
      expect(res.status).toBe(200);
      expect(forwardedJwt(id)).toBe(issuedJwts.at(-1));
      expect(introspections(t)).toBe(i);
    }
  });

  it('re-introspects after cache.maxTtlSeconds (1 s)', async () => {
    const t = activeToken();
    const started = Date.now();
    expect((await call(t, shortGw)).res.status).toBe(200);
    expect(introspections(t)).toBe(1);
    await waitFor(
      async () => {
        expect((await call(t, shortGw)).res.status).toBe(200);
        return introspections(t) >= 2;
      },
      10_000,
      'the entry to outlive maxTtlSeconds',
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
  });
});

describe('token service failures (SPEC §5): never 401, never the token service address', () => {
  afterEach(() => {
    stub.behaviour = 'ok';
    stub.responseHeaders = {};
  });

  /** Checks one failure response; then, with the stub healthy again, the same token works. */
  async function expectTokenServiceError(
    t: string,
    { res, id }: { res: SimpleResponse; id: string },
    status: 502 | 503,
    g: GatewayProcess = gw,
  ): Promise<void> {
    expect(res.status).toBe(status);
    expectErrorBody(res, 'token_service_unavailable', id);
    expect(res.headers['www-authenticate']).toBeUndefined();
    if (status === 503) expect(res.headers['retry-after']).toMatch(/^[1-9]\d*$/);
    for (const addr of [`127.0.0.1:${stub.port}`, `127.0.0.1:${deadPort}`, 'localhost']) {
      expect(res.body).not.toContain(addr);
    }
    expect(forwardedJwt(id)).toBeUndefined();
    expect((await accessLine(g, id))['reason']).toBe('token_service_unavailable');
    if (g === gw) {
      // An outage is not a verdict on the token: nothing was (negatively) cached.
      stub.behaviour = 'ok';
      stub.responseHeaders = {};
      expect((await call(t)).res.status).toBe(200);
    }
  }

  it('503 + Retry-After when the token service refuses connections', async () => {
    const t = activeToken();
    const r = await call(t, deadGw);
    await expectTokenServiceError(t, r, 503, deadGw);
    expect(introspections(t)).toBe(0);
  });

  it('503 + Retry-After when the token service does not answer within timeoutMs', async () => {
    const t = activeToken();
    stub.behaviour = 'hang';
    const started = Date.now();
    const r = await call(t);
    // The stub never answers: only the gateway's own 500 ms timeout can end the wait.
    expect(Date.now() - started).toBeGreaterThanOrEqual(450);
    await expectTokenServiceError(t, r, 503);
  });

  it('503 + Retry-After when the token service answers 503', async () => {
    const t = activeToken();
    stub.behaviour = 'status:503';
    await expectTokenServiceError(t, await call(t), 503);
  });

  it('503 with the token service Retry-After when it answers 429 Retry-After: 7', async () => {
    const t = activeToken();
    stub.behaviour = 'status:429';
    stub.responseHeaders = { 'retry-after': '7' };
    const r = await call(t);
    expect(r.res.headers['retry-after']).toBe('7');
    await expectTokenServiceError(t, r, 503);
  });

  it.each([
    ['another 5xx (500)', 'status:500'],
    ['401: the gateway credentials are rejected', 'status:401'],
    ['200 application/jwt that is not a JWT', 'garbage'],
    ['200 text/html', 'html'],
  ] as const)('502 when the token service answers %s', async (_name, behaviour) => {
    const t = activeToken();
    stub.behaviour = behaviour;
    const r = await call(t);
    expect(r.res.headers['retry-after']).toBeUndefined();
    await expectTokenServiceError(t, r, 502);
  });
});

describe('JWT verification of the answer (RFC 8725): 401 invalid_token, reason jwt_invalid', () => {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = () => Math.floor(Date.now() / 1000);
  const claims = (extra: Record<string, unknown> = {}) => ({
    sub: 'mallory',
    aud: AUD,
    scope: 'invoice_read',
    ...extra,
  });

  afterEach(() => {
    stub.typ = 'at+jwt';
  });

  async function expectRefused(t: string): Promise<void> {
    const { res, id } = await call(t);
    expect(res.status).toBe(401);
    expectErrorBody(res, 'invalid_token', id);
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
    expect((await accessLine(gw, id))['reason']).toBe('jwt_invalid');
    expect(forwardedJwt(id)).toBeUndefined();
    expect(introspections(t)).toBe(1);
  }

  async function expectCraftedRefused(jwt: string): Promise<void> {
    const t = tokenAnswering(jwt);
    await expectRefused(t);
    expect(wasServed(jwt)).toBe(true);
  }

  it('refuses a JWT signed by a key not in the JWKS (with the kid of the real key)', async () => {
    await expectCraftedRefused(await realSign(claims(), {}, { foreignKey: true }));
  });

  it('refuses a JWT signed by a key not in the JWKS (with an unknown kid)', async () => {
    await expectCraftedRefused(
      await realSign(claims(), { kid: stub.attackerPublicJwk.kid }, { foreignKey: true }),
    );
  });

  it('refuses an unsecured JWT (alg: none, empty signature)', async () => {
    const payload = { iss: stub.issuer, iat: now(), exp: now() + 300, ...claims() };
    await expectCraftedRefused(`${b64({ alg: 'none', typ: 'at+jwt' })}.${b64(payload)}.`);
  });

  it('refuses alg: none with a signature part', async () => {
    const payload = { iss: stub.issuer, iat: now(), exp: now() + 300, ...claims() };
    const sig = Buffer.from('not-a-signature').toString('base64url');
    await expectCraftedRefused(`${b64({ alg: 'none', typ: 'at+jwt' })}.${b64(payload)}.${sig}`);
  });

  it("refuses HS256 signed with the token service's public key as the HMAC secret", async () => {
    const jwk = stub.publicJwks().keys[0]!;
    const pem = createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' }).export({
      type: 'spki',
      format: 'pem',
    });
    const payload = { iss: stub.issuer, iat: now(), exp: now() + 300, ...claims() };
    for (const secret of [Buffer.from(pem), Buffer.from(JSON.stringify(jwk))]) {
      const input = `${b64({ alg: 'HS256', typ: 'at+jwt', kid: jwk.kid })}.${b64(payload)}`;
      const sig = createHmac('sha256', secret).update(input).digest('base64url');
      await expectCraftedRefused(`${input}.${sig}`);
    }
  });

  it('refuses a wrong iss', async () => {
    await expectRefused(activeToken({ iss: 'https://evil.example' }));
  });

  it('refuses a wrong aud when jwt.audience is configured', async () => {
    await expectRefused(activeToken({ aud: 'https://another-api.example' }));
  });

  it('refuses a JWT without exp', async () => {
    await expectRefused(activeToken({ exp: undefined }));
  });

  it('refuses a JWT expired beyond the clock skew', async () => {
    await expectRefused(activeToken({ iat: now() - 600, exp: now() - 120 }));
  });

  it('refuses a JWT whose nbf is in the future beyond the clock skew', async () => {
    await expectRefused(activeToken({ nbf: now() + 120 }));
  });

  it('refuses typ: token-introspection+jwt', async () => {
    stub.typ = 'token-introspection+jwt';
    await expectRefused(activeToken());
  });

  it('refuses a JWT whose jku header points at an attacker JWKS, without fetching it', async () => {
    const jwt = await realSign(
      claims(),
      { kid: stub.attackerPublicJwk.kid, jku: attacker.url },
      { foreignKey: true },
    );
    await expectCraftedRefused(jwt);
    expect(attacker.hits).toBe(0);
  });

  it('refuses a JWT that embeds the attacker key in a jwk header', async () => {
    const { kid: _kid, ...jwk } = stub.attackerPublicJwk;
    await expectCraftedRefused(await realSign(claims(), { kid: undefined, jwk }, { foreignKey: true }));
    await expectCraftedRefused(
      await realSign(claims(), { kid: stub.attackerPublicJwk.kid, jwk }, { foreignKey: true }),
    );
  });
});

describe('the Redis level (L2)', () => {
  let client: Redis;
  beforeAll(() => {
    client = new Redis(redis.url, { maxRetriesPerRequest: 1, connectTimeout: 2000 });
  });
  afterAll(async () => {
    await client.quit().catch(() => client.disconnect());
  });

  async function gatewayKeys(): Promise<string[]> {
    const keys: string[] = [];
    let cursor = '0';
    for (let i = 0; i < 1000; i++) {
      const [next, batch] = await client.scan(cursor, 'MATCH', 'phantom:*', 'COUNT', 1000);
      keys.push(...batch);
      cursor = next;
      if (cursor === '0') break;
    }
    return keys;
  }

  /** The gateway's string-valued keys (entries, verdicts, locks; not the index sets). */
  async function stringKeys(): Promise<Set<string>> {
    const keys = await gatewayKeys();
    const types = await Promise.all(keys.map((k) => client.type(k)));
    return new Set(keys.filter((_k, i) => types[i] === 'string'));
  }

  /** Everything the gateway keeps in Redis, whatever the type of each key, as one text. */
  async function dumpRedis(): Promise<{ keys: string[]; text: string }> {
    const keys = await gatewayKeys();
    const parts: string[] = [];
    for (const k of keys) {
      const type = await client.type(k);
      parts.push(k);
      if (type === 'string') parts.push(String(await client.get(k)));
      else if (type === 'set') parts.push(...(await client.smembers(k)));
      else if (type === 'hash') parts.push(...Object.entries(await client.hgetall(k)).flat());
      else if (type === 'zset') parts.push(...(await client.zrange(k, '0', '-1')));
      else if (type === 'list') parts.push(...(await client.lrange(k, '0', '-1')));
      else if (type !== 'none') parts.push(`<${type}>`);
    }
    return { keys, text: parts.join('\n') };
  }

  /** Caches `t` through `gw` and returns the one string key that appeared for it (its entry). */
  async function cacheAndFindEntryKey(t: string): Promise<string> {
    const before = await stringKeys();
    expect((await call(t, gw)).res.status).toBe(200);
    const added = [...(await stringKeys())].filter((k) => !before.has(k));
    expect(added.length).toBe(1);
    return added[0]!;
  }

  it('serves an entry cached by one replica in another without introspecting', async () => {
    const t = activeToken();
    const first = await call(t, gw);
    expect(first.res.status).toBe(200);
    const second = await call(t, replica);
    expect(second.res.status).toBe(200);
    expect(introspections(t)).toBe(1);
    expect(forwardedJwt(second.id)).toBe(forwardedJwt(first.id));
    expect((await accessLine(replica, second.id))['cache']).toBe('l2');
  });

  it('holds neither tokens nor JWTs in Redis (SPEC §7: values are encrypted)', async () => {
    const t = activeToken();
    const { id } = await call(t, gw);
    const jwt = forwardedJwt(id)!;
    const { keys, text } = await dumpRedis();
    expect(keys.length).toBeGreaterThan(0);
    expect(text.includes(t), 'the opaque token in Redis').toBe(false);
    expect(text.includes(jwt), 'the JWT in Redis').toBe(false);
    expect(text.includes('alice'), 'a claim in Redis').toBe(false);
    expect(/eyJ[A-Za-z0-9_-]{10,}\.eyJ/.test(text), 'a JWT in Redis').toBe(false);
  });

  it('keeps the max-age cap of an answer when another replica reads the entry from Redis', async () => {
    const t = activeToken({}, { maxAge: 3 });
    expect((await call(t, gw)).res.status).toBe(200);
    // Normally an L2 hit (the entry is younger than 3 s); were it not, the replica would introspect
    // and cache the answer itself, and the expectation below would hold just the same.
    expect((await call(t, replica)).res.status).toBe(200);
    await waitFor(
      async () => {
        expect((await call(t, replica)).res.status).toBe(200);
        return introspections(t) >= 2;
      },
      10_000,
      'the replica to let go of the max-age=3 entry',
    );
  });

  it('treats a tampered Redis value as a miss and never forwards it', async () => {
    const t = activeToken();
    const entryKey = await cacheAndFindEntryKey(t);
    const forged = await realSign(
      { sub: 'mallory', aud: AUD, scope: 'invoice_read admin' },
      {},
      { foreignKey: true },
    );
    issuedJwts.push(forged);
    const keys = await stringKeys();
    expect(keys.has(entryKey)).toBe(true);
    for (const k of keys) await client.set(k, forged, 'KEEPTTL');
    try {
      const { res, id } = await call(t, replica); // the replica has no L1 entry for t
      expect(res.status).toBe(200);
      expect(introspections(t)).toBe(2);
      const got = forwardedJwt(id);
      expect(got).not.toBe(forged);
      expect(got).toBe(issuedJwts.filter((j) => j !== forged).at(-1));
      expect(up.requests.some((r) => String(r.headers.authorization).includes(forged))).toBe(false);
    } finally {
      // The attacker's plaintext plant is the test's own data, not something the gateway wrote:
      // remove what is left of it, so the whole-run leak check judges only the gateway's values.
      for (const k of keys) if ((await client.get(k)) === forged) await client.del(k);
    }
  });

  it("treats another token's genuine value moved onto a token's key as a miss", async () => {
    const other = activeToken({ sub: 'bob' });
    const otherKey = await cacheAndFindEntryKey(other);
    const otherJwt = issuedJwts.at(-1)!;
    const t = activeToken();
    const entryKey = await cacheAndFindEntryKey(t);
    const moved = await client.get(otherKey);
    expect(moved).not.toBeNull();
    await client.set(entryKey, moved!, 'KEEPTTL');

    const { res, id } = await call(t, replica); // the replica has no L1 entry for t
    expect(res.status).toBe(200);
    expect(introspections(t)).toBe(2);
    const got = forwardedJwt(id);
    expect(got).not.toBe(otherJwt);
    expect(got).toBe(issuedJwts.at(-1));
  });
});

describe('key rotation', () => {
  it('picks up a new signing key by refetching the JWKS on an unknown kid, at most once per 30 s', async () => {
    expect((await call(activeToken())).res.status).toBe(200); // the JWKS is known and cached
    const jwksBefore = stub.jwksCalls;
    await stub.rotateKeys({ keepOld: false });
    // An unknown kid refetches at most once per 30 s, counted from the previous unknown-kid
    // refetch (RFC 8725 hygiene: random kids cannot make the gateway hammer the JWKS endpoint).
    // Earlier tests in this file present unknown kids, so the window may still be open: the new
    // key is picked up by exactly one fetch once it closes (at once when it is not open).
    let status = 0;
    let id = '';
    let attempts = 0;
    const deadline = Date.now() + 45_000;
    while (Date.now() < deadline) {
      attempts++;
      ({
        res: { status },
        id,
      } = await call(activeToken()));
      if (status === 200) break;
      expect(status).toBe(401);
      await new Promise((r) => setTimeout(r, 1000));
    }
    expect(status).toBe(200);
    expect(forwardedJwt(id)).toBe(issuedJwts.at(-1));
    expect(stub.jwksCalls - jwksBefore).toBe(1);
    expect(attempts).toBeGreaterThan(0);
  }, 60_000);
});

describe('secrets', () => {
  it('never prints an opaque token, a JWT or the client secret', async () => {
    const gateways = [gw, replica, shortGw, deadGw];
    expect(issuedTokens.length).toBeGreaterThan(20);
    expect(issuedJwts.length).toBeGreaterThan(20);
    for (const g of gateways) {
      const out = g.output();
      expect(out).toContain('phantom-gateway listening');
      for (const t of issuedTokens) expect(out.includes(t), 'an opaque token in the output').toBe(false);
      for (const j of issuedJwts) expect(out.includes(j), 'a JWT in the output').toBe(false);
      expect(out).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\.eyJ/);
      expect(out).not.toContain(GW_SECRET);
      expect(out).not.toContain(CACHE_KEY);
    }
  });
});
