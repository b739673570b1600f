import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import type { DevTokenService } from '../../helpers/dev-token-service.ts';
import { type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';
import {
  ADMIN_TOKEN,
  bearer,
  cacheLevel,
  GATEWAY_ENV,
  mintConfig,
  startOidcTokenService,
  waitReady,
} from './cluster-fixture.ts';

/**
 * Issue 4, revocation across replicas: `POST /cache/purge` at replica A's admin port evicts the
 * token (or every token of a subject) in Redis and, through pub/sub, in replica B's in-process
 * cache within one second; B then introspects again (and refuses a token the token service has
 * revoked). Real oidc-provider, real redis-server, real gateway processes.
 */

/** Issue 4: a purge reaches every replica within one second. */
const PROPAGATION_BOUND_MS = 1000;
/** Period of the requests at replica B while waiting for the purge to arrive there. */
const PROBE_EVERY_MS = 20;

const CLIENTS = {
  alpha: 'alpha-secret-0001',
  beta: 'beta-secret-0002',
  gamma: 'gamma-secret-0003',
} as const;
type ClientId = keyof typeof CLIENTS;

let ts: DevTokenService;
let redis: RedisServerHandle;
let up: EchoUpstream;
let dir: string;
/** Replicas with admin.token. */
let a: GatewayProcess;
let b: GatewayProcess;
/** Same Redis, no admin.token: the purge endpoint is disabled. */
let noAdmin: GatewayProcess;
const measured: string[] = [];

async function issue(client: ClientId): Promise<string> {
  return (await ts.issueToken(client, CLIENTS[client], 'invoice_read')).access_token;
}

function get(gw: GatewayProcess, token: string): Promise<SimpleResponse> {
  return request(`${gw.url}/api/invoices`, { headers: bearer(token), timeoutMs: 10_000 });
}

function purge(
  gw: GatewayProcess,
  body: string,
  /** null: no Authorization header. */
  authorization: string | null = `Bearer ${ADMIN_TOKEN}`,
): Promise<SimpleResponse> {
  return request(`${gw.adminUrl}/cache/purge`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(authorization !== null ? { authorization } : {}),
    },
    body,
    timeoutMs: 10_000,
  });
}

/** Requests `token` at `gw` and checks the cache level it was answered from. */
async function expectLevel(gw: GatewayProcess, token: string, level: string, status = 200): Promise<void> {
  const res = await get(gw, token);
  expect(res.status).toBe(status);
  expect(await cacheLevel(gw, res)).toBe(level);
}

/**
 * Requests `token` at replica `gw` every PROBE_EVERY_MS until `done(response)` (each request either
 * hits L1, still holding the purged entry, or misses and reaches the token service). Returns the
 * milliseconds from `purgedAt` (the purge's 200) to the sending of the first request that saw the
 * purge — an upper bound of the propagation — and that request's response. Bounded in count and time.
 */
async function untilPropagated(
  gw: GatewayProcess,
  token: string,
  purgedAt: number,
  done: (res: SimpleResponse) => boolean,
): Promise<{ ms: number; res: SimpleResponse; probes: number }> {
  const maxProbes = Math.ceil((PROPAGATION_BOUND_MS * 2) / PROBE_EVERY_MS);
  for (let probes = 1; probes <= maxProbes; probes++) {
    const sentAt = performance.now();
    const res = await get(gw, token);
    if (done(res)) return { ms: sentAt - purgedAt, res, probes };
    if (sentAt - purgedAt > PROPAGATION_BOUND_MS * 2) break;
    await sleep(Math.max(0, PROBE_EVERY_MS - (performance.now() - sentAt)));
  }
  throw new Error(`the purge did not reach ${gw.url} within ${PROPAGATION_BOUND_MS * 2} ms`);
}

/**
 * When replica `gw` logged applying a purge to its in-process cache (epoch ms) at or
 * after `sinceEpochMs`, if it did (the line is written only when something was evicted).
 */
function evictionLoggedAt(gw: GatewayProcess, sinceEpochMs: number): number | undefined {
  for (const l of gw.logs()) {
    if (l['msg'] !== 'purge applied to the in-process cache') continue;
    const at = Date.parse(String(l['time'])); // pino isoTime
    if (at >= sinceEpochMs) return at;
  }
  return undefined;
}

/** "B evicted its entry N ms after A was asked to purge" from B's own log (ms resolution). */
function describeEviction(gw: GatewayProcess, requestedAt: number, answeredAt: number): string {
  const at = evictionLoggedAt(gw, requestedAt - 1);
  return at === undefined
    ? 'no eviction line in its log'
    : `its log shows the eviction ${at - requestedAt} ms after the purge request was sent (purge answered after ${answeredAt - requestedAt} ms)`;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-purge-'));
  const keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  [ts, redis, up] = await Promise.all([
    startOidcTokenService(
      Object.entries(CLIENTS).map(([client_id, client_secret]) => ({
        client_id,
        client_secret,
        scope: 'invoice_read',
      })),
      ['invoice_read'],
    ),
    startRedisServer(),
    startEchoUpstream(),
  ]);
  const base = { ts, keysFile, redisUrl: redis.url, upstream: up.url };
  const withAdmin = mintConfig({ ...base, admin: { token: '${ADMIN_TOKEN}' } });
  [a, b, noAdmin] = await Promise.all([
    startGateway(withAdmin, { env: GATEWAY_ENV }),
    startGateway(withAdmin, { env: GATEWAY_ENV }),
    startGateway(mintConfig(base), { env: GATEWAY_ENV }),
  ]);
  await Promise.all([a, b, noAdmin].map((g) => waitReady(g)));
}, 60_000);

afterAll(async () => {
  if (measured.length > 0) console.log(`purge propagation A → B: ${measured.join('; ')}`);
  await Promise.all([a, b, noAdmin].map((g) => g?.stop()));
  await Promise.all([ts?.close(), redis?.stop(), up?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('purge by token', () => {
  it('at replica A → the next request at replica B is introspected again, within one second', async () => {
    const token = await issue('alpha');
    const c0 = ts.introspectionCount();
    await expectLevel(b, token, 'introspection');
    await expectLevel(b, token, 'l1');
    await expectLevel(a, token, 'l2');
    expect(ts.introspectionCount() - c0).toBe(1);

    const requestedAt = Date.now();
    const res = await purge(a, JSON.stringify({ token }));
    const purgedAt = performance.now();
    const answeredAt = Date.now();
    expect(res.status).toBe(200);
    expect(res.headers['cache-control']).toBe('no-store');
    expect(res.json()['purged']).toBeGreaterThanOrEqual(1);

    const c1 = ts.introspectionCount();
    const seen = await untilPropagated(b, token, purgedAt, () => ts.introspectionCount() > c1);
    expect(seen.res.status).toBe(200);
    expect(await cacheLevel(b, seen.res)).toBe('introspection');
    expect(ts.introspectionCount() - c1).toBe(1);
    const detail = describeEviction(b, requestedAt, answeredAt);
    measured.push(`by token ≤ ${seen.ms.toFixed(1)} ms (${detail})`);
    console.log(
      `purge propagation (by token, A → B): B re-introspected at the request sent ${seen.ms.toFixed(1)} ms ` +
        `after the purge's 200 (request ${seen.probes} at B); ${detail}`,
    );
    expect(seen.ms).toBeLessThanOrEqual(PROPAGATION_BOUND_MS);
    // A evicted it too (its L1 and Redis): B's new entry is in Redis again, A reads it there.
    await expectLevel(a, token, 'l2');
  });

  it('a token revoked at the token service and then purged → 401 at replica B within one second', async () => {
    const token = await issue('gamma');
    await expectLevel(a, token, 'introspection');
    await expectLevel(b, token, 'l2');
    await ts.revoke(token);
    // Revoked at the token service but still cached: that is what the purge is for.
    await expectLevel(b, token, 'l1');

    const requestedAt = Date.now();
    const res = await purge(a, JSON.stringify({ token }));
    const purgedAt = performance.now();
    const answeredAt = Date.now();
    expect(res.status).toBe(200);
    const seen = await untilPropagated(b, token, purgedAt, (r) => r.status !== 200);
    expect(seen.res.status).toBe(401);
    expect(seen.res.json()['error']).toBe('invalid_token');
    expect(seen.res.headers['www-authenticate']).toContain('error="invalid_token"');
    const detail = describeEviction(b, requestedAt, answeredAt);
    measured.push(`revoked + purged ≤ ${seen.ms.toFixed(1)} ms (${detail})`);
    console.log(
      `purge propagation (revoked token, A → B): B answered 401 to the request sent ${seen.ms.toFixed(1)} ms ` +
        `after the purge's 200; ${detail}`,
    );
    expect(seen.ms).toBeLessThanOrEqual(PROPAGATION_BOUND_MS);
    const atA = await get(a, token);
    expect(atA.status).toBe(401);
  });
});

describe('purge by sub', () => {
  it("evicts every token of the subject at both replicas, and not another client's", async () => {
    // client_credentials tokens have no sub: the minted JWT's sub is the client_id.
    const [alpha1, alpha2, beta1] = await Promise.all([issue('alpha'), issue('alpha'), issue('beta')]);
    for (const t of [alpha1, alpha2, beta1]) {
      await expectLevel(a, t, 'introspection');
      await expectLevel(b, t, 'l2');
      await expectLevel(a, t, 'l1');
      await expectLevel(b, t, 'l1');
    }
    const upstreamJwt = String(up.requests.at(-1)!.headers.authorization).replace(/^Bearer /, '');
    const claims = JSON.parse(Buffer.from(upstreamJwt.split('.')[1]!, 'base64url').toString()) as {
      sub: string;
    };
    expect(claims.sub).toBe('beta');

    const requestedAt = Date.now();
    const res = await purge(a, JSON.stringify({ sub: 'alpha' }));
    const purgedAt = performance.now();
    const answeredAt = Date.now();
    expect(res.status).toBe(200);
    expect(res.json()['purged']).toBeGreaterThanOrEqual(2);

    const c1 = ts.introspectionCount();
    const seen = await untilPropagated(b, alpha1, purgedAt, () => ts.introspectionCount() > c1);
    expect(await cacheLevel(b, seen.res)).toBe('introspection');
    const detail = describeEviction(b, requestedAt, answeredAt);
    measured.push(`by sub ≤ ${seen.ms.toFixed(1)} ms (${detail})`);
    console.log(
      `purge propagation (by sub, A → B): B re-introspected at the request sent ${seen.ms.toFixed(1)} ms ` +
        `after the purge's 200; ${detail}`,
    );
    expect(seen.ms).toBeLessThanOrEqual(PROPAGATION_BOUND_MS);
    // The subject's other token is gone from B's L1 and from Redis too…
    await expectLevel(b, alpha2, 'introspection');
    // …and from A's L1 (A now reads B's fresh entries from Redis).
    await expectLevel(a, alpha1, 'l2');
    await expectLevel(a, alpha2, 'l2');
    expect(ts.introspectionCount() - c1).toBe(2);
    // Another client's token stays cached at both replicas.
    await expectLevel(a, beta1, 'l1');
    await expectLevel(b, beta1, 'l1');
    expect(ts.introspectionCount() - c1).toBe(2);
  });
});

describe('purge endpoint access', () => {
  it('401 without or with a wrong admin token, and then nothing is evicted', async () => {
    const token = await issue('beta');
    await expectLevel(a, token, 'introspection');
    await expectLevel(b, token, 'l2');
    const body = JSON.stringify({ token });
    const attempts: Array<string | null> = [
      null,
      'Bearer wrong-admin-token-0123456789',
      `Bearer ${ADMIN_TOKEN}x`,
      `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}`,
      ADMIN_TOKEN,
      'Bearer',
    ];
    for (const authorization of attempts) {
      const res = await purge(a, body, authorization);
      expect(res.status, `Authorization: ${authorization}`).toBe(401);
      expect(res.headers['www-authenticate']).toMatch(/^Bearer /);
      expect(res.body).not.toContain(ADMIN_TOKEN);
    }
    // Give a (wrongly) published purge time to arrive, then check nothing was evicted.
    await sleep(200);
    await expectLevel(a, token, 'l1');
    await expectLevel(b, token, 'l1');
  });

  it('404 when admin.token is not configured, whatever the credentials', async () => {
    const token = await issue('beta');
    await expectLevel(noAdmin, token, 'introspection');
    for (const authorization of [`Bearer ${ADMIN_TOKEN}`, null]) {
      const res = await purge(noAdmin, JSON.stringify({ token }), authorization);
      expect(res.status).toBe(404);
    }
    await expectLevel(noAdmin, token, 'l1');
  });

  it('400 for a malformed body', async () => {
    const bodies = [
      'not json',
      '{"token": ',
      '',
      '{}',
      '[]',
      'null',
      '"token"',
      '{"token": 5}',
      '{"token": ""}',
      '{"sub": ["alpha"]}',
      '{"token": "x", "sub": "alpha"}',
      '{"tokens": "x"}',
    ];
    for (const body of bodies) {
      const res = await purge(a, body);
      expect(res.status, `body ${JSON.stringify(body)}`).toBe(400);
      expect(res.json()['error']).toBe('invalid_request');
    }
  });
});
