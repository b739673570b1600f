import { randomBytes, randomUUID } from 'node:crypto';
import { decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { accessLine, type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * Token service key rotation (issue 5 part 6, SPEC §6 accept-jwt): the real gateway process in
 * front of a Curity-style stub whose signing key changes. A new `kid` is picked up with one JWKS
 * fetch and no failed request, cached JWTs keep working while their key is published, a cached JWT
 * whose key left the JWKS is re-introspected, and random `kid`s cost at most one JWKS fetch.
 * Each test has its own stub and gateway: the 30 s unknown-kid window is per gateway process.
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'rotation-gateway-secret-0123456789';
const ENV = { GW_SECRET, PHANTOM_CACHE_KEY: 'r'.repeat(48) };
const FLOOD_MARKER = 'x_flood';

interface World {
  stub: CurityStub;
  gw: GatewayProcess;
  tokens: string[];
}

let up: EchoUpstream;
let redis: RedisServerHandle;
const worlds: Record<'loop' | 'removed' | 'removedRedis' | 'flood', World> = {} as never;
/** Every JWT any stub handed out (leak check). */
const issuedJwts: string[] = [];

/** A stub and a gateway (L1 only, or L1 + Redis at `redisUrl`) in front of the shared upstream. */
async function startWorld(redisUrl?: string): Promise<World> {
  const stub = await startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET });
  // The stub signs every answer with `stub.signJwt(claims)`: the wrapper records each JWT and,
  // for a flood token, signs with the attacker key under a random kid instead.
  const realSign = stub.signJwt;
  stub.signJwt = async (claims = {}, header, opts) => {
    let jwt: string;
    if (claims[FLOOD_MARKER] === true) {
      const { [FLOOD_MARKER]: _, ...rest } = claims;
      jwt = await realSign(rest, { kid: randomBytes(8).toString('hex') }, { foreignKey: true });
    } else {
      jwt = await realSign(claims, header, opts);
    }
    issuedJwts.push(jwt);
    return jwt;
  };
  const gw = await startGateway(
    {
      tokenService: {
        issuer: stub.issuer,
        clientId: CLIENT_ID,
        clientSecret: '${GW_SECRET}',
        mode: 'accept-jwt',
        timeoutMs: 2000,
      },
      ...(redisUrl !== undefined
        ? { cache: { redis: { url: redisUrl, keyPrefix: `rot-${randomUUID()}:` } } }
        : {}),
      routes: [
        { name: 'orders', match: { pathPrefix: '/api/orders' }, upstream: up.url, scopes: ['orders'] },
      ],
    },
    { env: ENV },
  );
  return { stub, gw, tokens: [] };
}

beforeAll(async () => {
  [up, redis] = await Promise.all([startEchoUpstream(), startRedisServer()]);
  const [loop, removed, removedRedis, flood] = await Promise.all([
    startWorld(),
    startWorld(),
    startWorld(redis.url),
    startWorld(),
  ]);
  Object.assign(worlds, { loop, removed, removedRedis, flood });
}, 60_000);

afterAll(async () => {
  const all = Object.values(worlds);
  await Promise.all(all.map((w) => w.gw.stop()));
  await Promise.all([...all.map((w) => w.stub.close()), up?.close(), redis?.stop()]);
});

/** A fresh opaque token the stub considers active. */
function activeToken(w: World, claims: Record<string, unknown> = {}): string {
  const t = w.stub.newToken();
  w.stub.register(t, { sub: `user-${w.tokens.length}`, scope: 'orders', ...claims });
  w.tokens.push(t);
  return t;
}

async function call(w: World, t: string): Promise<{ res: SimpleResponse; id: string }> {
  const id = `rot-${randomUUID()}`;
  const res = await request(`${w.gw.url}/api/orders/1`, {
    headers: { authorization: `Bearer ${t}`, 'x-request-id': id },
  });
  return { res, id };
}

/** The JWT the upstream received for this request id (undefined: nothing was forwarded). */
function forwardedJwt(id: string): string | undefined {
  const got = up.requests.find((r) => r.headers['x-request-id'] === id);
  return got === undefined ? undefined : String(got.headers.authorization).replace(/^Bearer /, '');
}

function forwardedKid(id: string): string | undefined {
  const jwt = forwardedJwt(id);
  return jwt === undefined ? undefined : decodeProtectedHeader(jwt).kid;
}

const introspections = (w: World, t: string) =>
  w.stub.requests.filter((r) => r.body.get('token') === t).length;

const currentKid = (w: World) => w.stub.publicJwks().keys[0]!.kid!;

describe('token service key rotation', () => {
  it('a rotation during a request loop: zero failures, one JWKS fetch for the new kid, cached JWTs keep working', async () => {
    const w = worlds.loop;
    const oldKid = currentKid(w);
    const oldTokens = Array.from({ length: 4 }, () => activeToken(w));
    const results: Array<{ status: number; id: string; token: string; phase: 'before' | 'after' }> = [];
    const BATCH = 6;
    const MAX_REQUESTS = 300;
    const ROTATE_AT = 8; // batches before the rotation
    const BATCHES = 24;
    const deadline = Date.now() + 20_000;
    let jwksBefore = -1;
    let newKid = '';
    for (let b = 0; b < BATCHES && results.length + BATCH <= MAX_REQUESTS && Date.now() < deadline; b++) {
      if (b === ROTATE_AT) {
        jwksBefore = w.stub.jwksCalls;
        await w.stub.rotateKeys({ keepOld: true }); // publish the new key and sign with it at once
        newKid = currentKid(w);
      }
      const phase = b < ROTATE_AT ? 'before' : 'after';
      // Half cached tokens (old kid), half fresh ones (introspected: after the rotation, new kid).
      const batch = Array.from({ length: BATCH }, (_, i) =>
        i % 2 === 0 ? oldTokens[(b + i) % oldTokens.length]! : activeToken(w),
      );
      const answers = await Promise.all(batch.map((t) => call(w, t)));
      answers.forEach(({ res, id }, i) => {
        results.push({ status: res.status, id, token: batch[i]!, phase });
      });
    }
    expect(jwksBefore).toBeGreaterThanOrEqual(1); // the rotation happened, after a first fetch
    expect(results.filter((r) => r.phase === 'after').length).toBeGreaterThanOrEqual(BATCH * 4);
    expect(results.filter((r) => r.status !== 200)).toEqual([]);
    // Exactly one extra JWKS fetch for the new kid, shared by the concurrent first users.
    expect(w.stub.jwksCalls - jwksBefore).toBe(1);
    expect(newKid).not.toBe(oldKid);
    for (const r of results) {
      const old = oldTokens.includes(r.token);
      expect(forwardedKid(r.id)).toBe(old || r.phase === 'before' ? oldKid : newKid);
    }
    // The old tokens were introspected once, at their first use: their cached JWTs stayed valid.
    for (const t of oldTokens) expect(introspections(w, t)).toBe(1);
  }, 40_000);

  it.each([
    ['L1 only', 'removed'],
    ['L1 + Redis: the L2 copy is re-verified and refused too', 'removedRedis'],
  ] as const)(
    'a cached JWT whose key was removed from the JWKS is re-introspected once the gateway has refetched (%s)',
    async (_, name) => {
      const w = worlds[name];
      const oldKid = currentKid(w);
      const t1 = activeToken(w);
      const first = await call(w, t1);
      expect(first.res.status).toBe(200);
      expect(forwardedKid(first.id)).toBe(oldKid);
      const jwksAfterFirst = w.stub.jwksCalls;

      await w.stub.rotateKeys({ keepOld: false }); // the new key signs; the old one is gone from the JWKS
      const newKid = currentKid(w);
      // The gateway does not know yet: the cached JWT is still served.
      const stillCached = await call(w, t1);
      expect(stillCached.res.status).toBe(200);
      expect(forwardedJwt(stillCached.id)).toBe(forwardedJwt(first.id));
      expect(introspections(w, t1)).toBe(1);

      // A token signed with the new kid makes the gateway refetch the JWKS.
      const t2 = activeToken(w);
      const second = await call(w, t2);
      expect(second.res.status).toBe(200);
      expect(forwardedKid(second.id)).toBe(newKid);
      expect(w.stub.jwksCalls).toBe(jwksAfterFirst + 1);

      // Now t1's cached JWT is signed by a key that is no longer published: dropped, re-introspected.
      const callsBefore = w.stub.calls;
      const again = await call(w, t1);
      expect(again.res.status).toBe(200);
      expect(w.stub.calls).toBe(callsBefore + 1);
      expect(introspections(w, t1)).toBe(2);
      expect(forwardedKid(again.id)).toBe(newKid);
      expect(forwardedJwt(again.id)).not.toBe(forwardedJwt(first.id));
      expect((await accessLine(w.gw, again.id))['cache']).toBe('introspection');
      // And the new JWT is cached again.
      const cached = await call(w, t1);
      expect(cached.res.status).toBe(200);
      expect(introspections(w, t1)).toBe(2);
      expect((await accessLine(w.gw, cached.id))['cache']).toBe('l1');
    },
  );

  it('a flood of JWTs with random unknown kids: all 401 jwt_invalid, at most one JWKS fetch', async () => {
    const w = worlds.flood;
    const good = await call(w, activeToken(w));
    expect(good.res.status).toBe(200); // the JWKS is known
    const jwksBefore = w.stub.jwksCalls;
    const flood = Array.from({ length: 40 }, () => activeToken(w, { [FLOOD_MARKER]: true }));
    const answers: Array<{ res: SimpleResponse; id: string }> = [];
    for (let i = 0; i < flood.length; i += 10) {
      answers.push(...(await Promise.all(flood.slice(i, i + 10).map((t) => call(w, t)))));
    }
    for (const { res, id } of answers) {
      expect(res.status).toBe(401);
      expect(res.json()['error']).toBe('invalid_token');
      expect(res.headers['www-authenticate']).toMatch(/error="invalid_token"/);
      expect(forwardedJwt(id)).toBeUndefined();
      expect((await accessLine(w.gw, id))['reason']).toBe('jwt_invalid');
    }
    expect(w.stub.jwksCalls - jwksBefore).toBeLessThanOrEqual(1);
    // Legitimate tokens are unaffected and need no fetch.
    const after = await call(w, activeToken(w));
    expect(after.res.status).toBe(200);
    expect(w.stub.jwksCalls - jwksBefore).toBeLessThanOrEqual(1);
  });

  it('never prints an opaque token or a JWT', () => {
    expect(issuedJwts.length).toBeGreaterThan(40);
    for (const w of Object.values(worlds)) {
      const out = w.gw.output();
      for (const t of w.tokens) expect(out.includes(t), 'an opaque token in the output').toBe(false);
      for (const j of issuedJwts) expect(out.includes(j), 'a JWT in the output').toBe(false);
    }
  });
});
