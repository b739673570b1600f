import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REASON_CODES } from '../../../src/errors/reason-codes.ts';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { freePort } from '../../helpers/free-port.ts';
import { accessLine, type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';
import { type Family, parsePrometheusText, samplesOf, sampleValue } from '../../helpers/prometheus-text.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * Admin GET /metrics of the real gateway process (SPEC §8, §10) in front of a stub token service
 * (Curity's accept-jwt behaviour), a real redis-server and a real upstream: a known mix of
 * requests, then the exact counters per label set, histogram counts, introspection outcomes and
 * Redis state read from the exposition text. Also `logging.includeSubject` on the access line.
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'metrics-gateway-secret-0123456789';
const AUD = 'https://api.example.test';
const ENV = { GW_SECRET, PHANTOM_CACHE_KEY: 'm'.repeat(48) };

let stub: CurityStub;
let redis: RedisServerHandle;
let up: EchoUpstream;
let gw: GatewayProcess;
/** No Redis, logging.includeSubject: true. */
let subGw: GatewayProcess;

const tokens: string[] = [];
const jwts: string[] = [];

beforeAll(async () => {
  let deadPort: number;
  [stub, redis, up, deadPort] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startRedisServer(),
    startEchoUpstream(),
    freePort(),
  ]);
  // Every JWT the stub hands out, for the leak check.
  const sign = stub.signJwt;
  stub.signJwt = async (...args) => {
    const jwt = await sign(...args);
    jwts.push(jwt);
    return jwt;
  };
  const base = {
    tokenService: {
      issuer: stub.issuer,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 1000,
    },
    jwt: { audience: AUD },
    routes: [
      {
        name: 'invoices',
        match: { pathPrefix: '/api/invoices' },
        upstream: up.url,
        scopes: ['invoice_read'],
      },
      // Nothing listens there: connection refused → 502 upstream_unavailable.
      {
        name: 'broken',
        match: { pathPrefix: '/api/broken' },
        upstream: `http://127.0.0.1:${deadPort}`,
        auth: 'none',
      },
    ],
  };
  [gw, subGw] = await Promise.all([
    startGateway({ ...base, cache: { redis: { url: redis.url, commandTimeoutMs: 100 } } }, { env: ENV }),
    startGateway({ ...base, logging: { includeSubject: true } }, { env: ENV }),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([gw?.stop(), subGw?.stop()]);
  await Promise.all([stub?.close(), redis?.stop(), up?.close()]);
});

function activeToken(scope = 'invoice_read'): string {
  const t = stub.newToken();
  stub.register(t, { sub: 'alice', aud: AUD, scope });
  tokens.push(t);
  return t;
}

/** One request; resolves once its access line (and so its metrics) is written. */
async function call(
  path: string,
  opts: { token?: string; method?: string; g?: GatewayProcess } = {},
): Promise<SimpleResponse & { id: string }> {
  const g = opts.g ?? gw;
  const id = `metrics-${randomUUID()}`;
  const res = await request(`${g.url}${path}`, {
    method: opts.method ?? 'GET',
    headers: { 'x-request-id': id, ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}) },
  });
  await accessLine(g, id);
  return { ...res, id };
}

async function scrape(g: GatewayProcess = gw): Promise<{ text: string; families: Map<string, Family> }> {
  const res = await request(`${g.adminUrl}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
  return { text: res.body, families: parsePrometheusText(res.body) };
}

const req = (route: string, method: string, status: string, reason: string) => ({
  route,
  method,
  status,
  reason,
});

describe('admin GET /metrics after a known mix of requests', () => {
  let families: Map<string, Family>;
  let text: string;

  beforeAll(async () => {
    const a = activeToken();
    expect((await call('/api/invoices/1', { token: a })).status).toBe(200); // introspection
    expect((await call('/api/invoices/2', { token: a })).status).toBe(200); // l1
    expect((await call('/api/invoices/3?q=secret-query', { token: a })).status).toBe(200); // l1
    expect((await call('/api/invoices/1')).status).toBe(401); // token_missing
    expect((await call('/api/invoices/1', { method: 'PROPFIND' })).status).toBe(401); // token_missing, OTHER
    const inactive = stub.newToken(); // never registered: 204
    tokens.push(inactive);
    expect((await call('/api/invoices/1', { token: inactive })).status).toBe(401); // token_inactive
    expect((await call('/api/invoices/1', { token: activeToken('other') })).status).toBe(403); // scope_missing
    expect((await call('/nope/at/all')).status).toBe(404); // route_not_found
    expect((await call('/api/broken/x', { method: 'POST' })).status).toBe(502); // upstream_unavailable
    stub.behaviour = 'status:503';
    expect((await call('/api/invoices/1', { token: activeToken() })).status).toBe(503); // unavailable
    stub.behaviour = 'garbage';
    expect((await call('/api/invoices/1', { token: activeToken() })).status).toBe(502); // bad_answer
    stub.behaviour = 'ok';
    ({ text, families } = await scrape());
  });

  it('counts requests per route, method, status and reason exactly', () => {
    const expected: Array<[ReturnType<typeof req>, number]> = [
      [req('invoices', 'GET', '200', 'allowed'), 3],
      [req('invoices', 'GET', '401', 'token_missing'), 1],
      [req('invoices', 'OTHER', '401', 'token_missing'), 1],
      [req('invoices', 'GET', '401', 'token_inactive'), 1],
      [req('invoices', 'GET', '403', 'scope_missing'), 1],
      [req('none', 'GET', '404', 'route_not_found'), 1],
      [req('broken', 'POST', '502', 'upstream_unavailable'), 1],
      [req('invoices', 'GET', '503', 'token_service_unavailable'), 1],
      [req('invoices', 'GET', '502', 'token_service_unavailable'), 1],
    ];
    for (const [labels, n] of expected) {
      expect(sampleValue(families, 'phantom_gateway_requests_total', labels), JSON.stringify(labels)).toBe(n);
    }
    expect(samplesOf(families, 'phantom_gateway_requests_total')).toHaveLength(expected.length);
  });

  it('counts decisions by reason code and lookups by cache level', () => {
    const decisions = Object.fromEntries(
      samplesOf(families, 'phantom_gateway_decisions_total').map((s) => [s.labels['reason'], s.value]),
    );
    // Every SPEC §5 reason code is a series, 0 unless seen.
    expect(decisions).toEqual({
      ...Object.fromEntries(REASON_CODES.map((r) => [r, 0])),
      allowed: 3,
      token_missing: 2,
      token_inactive: 1,
      scope_missing: 1,
      route_not_found: 1,
      token_service_unavailable: 2,
      upstream_unavailable: 1,
    });
    const levels = Object.fromEntries(
      samplesOf(families, 'phantom_gateway_cache_lookups_total').map((s) => [s.labels['level'], s.value]),
    );
    // introspection: the first allowed request and the scope_missing one (its JWT was resolved).
    expect(levels).toEqual({ l1: 2, l2: 0, introspection: 2, none: 7 });
  });

  it('has request and upstream duration histograms with the right counts', () => {
    const count = (route: string, status: string) =>
      sampleValue(families, 'phantom_gateway_request_duration_seconds_count', { route, status });
    expect(count('invoices', '200')).toBe(3);
    expect(count('invoices', '401')).toBe(3);
    expect(count('invoices', '403')).toBe(1);
    expect(count('none', '404')).toBe(1);
    expect(count('broken', '502')).toBe(1);
    expect(count('invoices', '503')).toBe(1);
    expect(count('invoices', '502')).toBe(1);
    expect(
      sampleValue(families, 'phantom_gateway_request_duration_seconds_sum', {
        route: 'invoices',
        status: '200',
      }),
    ).toBeGreaterThan(0);
    // Upstream: the three forwarded requests; the refused one is an error, not a duration.
    expect(
      sampleValue(families, 'phantom_gateway_upstream_duration_seconds_count', { route: 'invoices' }),
    ).toBe(3);
    expect(
      sampleValue(families, 'phantom_gateway_upstream_duration_seconds_count', { route: 'broken' }),
    ).toBe(0);
    expect(
      sampleValue(families, 'phantom_gateway_upstream_errors_total', {
        route: 'broken',
        reason: 'upstream_unavailable',
      }),
    ).toBe(1);
    expect(samplesOf(families, 'phantom_gateway_upstream_errors_total')).toHaveLength(1);
  });

  it('counts introspections by outcome, with one duration per introspection', () => {
    const expected = { active: 2, inactive: 1, unavailable: 1, bad_answer: 1 };
    for (const [outcome, n] of Object.entries(expected)) {
      expect(sampleValue(families, 'phantom_gateway_introspections_total', { outcome }), outcome).toBe(n);
      expect(
        sampleValue(families, 'phantom_gateway_introspection_duration_seconds_count', { outcome }),
        outcome,
      ).toBe(n);
    }
  });

  it('shows Redis up, the config hash of the "configuration loaded" line, no reloads yet, process metrics', () => {
    expect(sampleValue(families, 'phantom_gateway_redis_up')).toBe(1);
    const info = samplesOf(families, 'phantom_gateway_config_info');
    expect(info).toHaveLength(1);
    expect(info[0]!.value).toBe(1);
    const loaded = gw.logs().find((l) => l['msg'] === 'configuration loaded');
    expect(info[0]!.labels['hash']).toMatch(/^[0-9a-f]{12}$/);
    expect(info[0]!.labels['hash']).toBe(loaded?.['configHash']);
    expect(sampleValue(families, 'phantom_gateway_config_reloads_total', { result: 'success' })).toBe(0);
    expect(sampleValue(families, 'phantom_gateway_config_reloads_total', { result: 'failure' })).toBe(0);
    expect(sampleValue(families, 'phantom_gateway_cache_coalesced_waits_total')).toBe(0);
    expect(sampleValue(families, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(families.get('nodejs_heap_size_used_bytes')?.type).toBe('gauge');
  });

  it('holds no token, JWT, subject, path or query the requests carried', () => {
    expect(tokens.length).toBeGreaterThanOrEqual(5);
    expect(jwts.length).toBeGreaterThanOrEqual(2);
    for (const secret of [...tokens, ...jwts, GW_SECRET]) expect(text.includes(secret)).toBe(false);
    for (const s of ['alice', '/api/invoices', '/nope', 'secret-query', 'PROPFIND'])
      expect(text).not.toContain(s);
  });
});

describe('the /metrics endpoint', () => {
  it('answers HEAD, refuses other methods with 405, and is not served on the public listener', async () => {
    const head = await request(`${gw.adminUrl}/metrics`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    const post = await request(`${gw.adminUrl}/metrics`, { method: 'POST', body: '' });
    expect(post.status).toBe(405);
    expect(post.headers['allow']).toBe('GET, HEAD');
    const pub = await call('/metrics');
    expect(pub.status).toBe(404);
    expect(pub.json()['error']).toBe('route_not_found');
    expect(pub.body).not.toContain('phantom_gateway');
  });

  it('counts a SIGHUP key reload', async () => {
    gw.signal('SIGHUP');
    await waitFor(
      async () =>
        sampleValue((await scrape()).families, 'phantom_gateway_config_reloads_total', {
          result: 'success',
        }) === 1,
      10_000,
      'the reload to be counted',
    );
  });
});

describe('logging.includeSubject', () => {
  it('puts the JWT sub on the access line only when enabled', async () => {
    const t = activeToken();
    const withSub = await call('/api/invoices/9', { token: t, g: subGw });
    const without = await call('/api/invoices/9', { token: t });
    expect(withSub.status).toBe(200);
    expect(without.status).toBe(200);
    expect((await accessLine(subGw, withSub.id))['sub']).toBe('alice');
    const plain = await accessLine(gw, without.id);
    expect(plain['reason']).toBe('allowed');
    expect('sub' in plain).toBe(false);
    // A refused request (no JWT) has no sub either way.
    const refused = await call('/api/invoices/9', { g: subGw });
    expect('sub' in (await accessLine(subGw, refused.id))).toBe(false);
  });
});

// Last: it kills redis-server.
describe('Redis down', () => {
  it('turns redis_up to 0 and counts Redis errors', async () => {
    await redis.kill();
    // A new token: L2 lookup and lock are attempted (and fail or are skipped).
    await waitFor(
      async () => sampleValue((await scrape()).families, 'phantom_gateway_redis_up') === 0,
      10_000,
      'redis_up to drop to 0',
    );
    expect((await call('/api/invoices/1', { token: activeToken() })).status).toBe(200);
    const { families } = await scrape();
    expect(sampleValue(families, 'phantom_gateway_redis_up')).toBe(0);
    expect(sampleValue(families, 'phantom_gateway_redis_errors_total')).toBeGreaterThan(0);
  });
});
