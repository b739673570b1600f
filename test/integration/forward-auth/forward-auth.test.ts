import { randomUUID } from 'node:crypto';
import { createLocalJWKSet, decodeJwt, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { freePort } from '../../helpers/free-port.ts';
import { accessLine, type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * Forward-auth mode (issue 7 part 5) end to end: the real gateway process with a forwardAuth
 * listener, a Curity-style token service stub (accept-jwt), a real redis-server. The listener is
 * asked the way Traefik (X-Forwarded-*), nginx (X-Original-*) and Envoy (prefix mode) ask, and
 * answers with the public pipeline's decision: 200 + the JWT and claim headers, or the SPEC §5
 * error. A second gateway trusts only 10.0.0.0/8, so its loopback callers are untrusted peers; it
 * shares Redis and the cache key with the first (a replica, for the shared-cache check).
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'forward-auth-gateway-secret-0123456789';
const ENV = { GW_SECRET, PHANTOM_CACHE_KEY: 'f'.repeat(48) };

let stub: CurityStub;
let redis: RedisServerHandle;
let up: EchoUpstream;
let gw: GatewayProcess;
let faUrl: string;
/** Same routes, Redis and cache key; forwardAuth.trustedProxies: [10.0.0.0/8]. */
let untrusted: GatewayProcess;
let untrustedFaUrl: string;

const issuedTokens: string[] = [];
const issuedJwts: string[] = [];

function config(faPort: number, trustedProxies: string[]): Record<string, unknown> {
  return {
    tokenService: {
      issuer: stub.issuer,
      clientId: CLIENT_ID,
      clientSecret: '${GW_SECRET}',
      mode: 'accept-jwt',
      timeoutMs: 1000,
    },
    cache: { redis: { url: redis.url, commandTimeoutMs: 200 } },
    routes: [
      {
        name: 'invoices-read',
        match: { pathPrefix: '/api/invoices', methods: ['GET', 'HEAD'] },
        upstream: up.url,
        scopes: ['invoice_read'],
      },
      {
        name: 'invoices-write',
        match: { pathPrefix: '/api/invoices', methods: ['POST', 'PUT', 'PATCH', 'DELETE'] },
        upstream: up.url,
        scopes: ['invoice_write'],
      },
      { name: 'status', match: { pathPrefix: '/status' }, upstream: up.url, auth: 'none' },
    ],
    forwardAuth: {
      host: '127.0.0.1',
      port: faPort,
      prefixMode: true,
      trustedProxies,
      claimHeaders: [
        { header: 'X-Auth-Subject', claim: 'sub' },
        { header: 'X-Auth-Roles', claim: 'roles' },
        { header: 'X-Auth-Level', claim: 'level' },
        { header: 'X-Auth-Email', claim: 'email' },
        { header: 'X-Auth-Admin', claim: 'admin' },
      ],
    },
  };
}

beforeAll(async () => {
  [stub, redis, up] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startRedisServer(),
    startEchoUpstream(),
  ]);
  const realSign = stub.signJwt;
  stub.signJwt = async (claims, header, opts) => {
    const jwt = await realSign(claims, header, opts);
    issuedJwts.push(jwt);
    return jwt;
  };
  const [faPort, untrustedFaPort] = [await freePort(), await freePort()];
  [gw, untrusted] = await Promise.all([
    startGateway(config(faPort, ['127.0.0.1/32', '::1/128']), { env: ENV }),
    startGateway(config(untrustedFaPort, ['10.0.0.0/8']), { env: ENV }),
  ]);
  faUrl = `http://127.0.0.1:${faPort}`;
  untrustedFaUrl = `http://127.0.0.1:${untrustedFaPort}`;
}, 60_000);

afterAll(async () => {
  await Promise.all([gw?.stop(), untrusted?.stop()]);
  await Promise.all([stub?.close(), redis?.stop(), up?.close()]);
});

function activeToken(claims: Record<string, unknown> = {}): string {
  const t = stub.newToken();
  stub.register(t, {
    sub: 'alice',
    scope: 'invoice_read',
    roles: ['admin', 'ops'],
    level: 3,
    admin: true,
    ...claims,
  });
  issuedTokens.push(t);
  return t;
}

const introspections = (t: string) => stub.requests.filter((r) => r.body.get('token') === t).length;

/** One forward-auth call; returns the response and its request id. */
async function ask(
  headers: Record<string, string>,
  opts: { url?: string; path?: string; method?: string } = {},
): Promise<{ res: SimpleResponse; id: string }> {
  const id = `fa-${randomUUID()}`;
  const res = await request(`${opts.url ?? faUrl}${opts.path ?? '/auth'}`, {
    method: opts.method ?? 'GET',
    headers: { 'x-request-id': id, ...headers },
  });
  return { res, id };
}

const traefik = (method: string, uri: string) => ({
  'x-forwarded-method': method,
  'x-forwarded-uri': uri,
  'x-forwarded-host': 'api.example.com',
  'x-forwarded-proto': 'https',
  'x-forwarded-for': '203.0.113.7',
});
const nginx = (method: string, uri: string) => ({ 'x-original-method': method, 'x-original-uri': uri });
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

/** The JWT of a 200 answer, checked against the token service's keys. */
async function jwtOf(res: SimpleResponse): Promise<string> {
  const header = String(res.headers['authorization'] ?? '');
  expect(header).toMatch(/^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);
  const jwt = header.slice('Bearer '.length);
  await jwtVerify(jwt, createLocalJWKSet(stub.publicJwks()), { issuer: stub.issuer });
  return jwt;
}

function expectError(res: SimpleResponse, status: number, error: string, id: string): void {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  expect(res.headers['cache-control']).toBe('no-store');
  expect(res.headers['authorization']).toBeUndefined();
  expect(res.json()).toMatchObject({ error, request_id: id });
}

describe('Traefik forwardAuth style (X-Forwarded-Method / -Uri / -Host / -Proto)', () => {
  it('answers 200, empty body, Authorization: Bearer <the issued JWT>, claim headers, no-store, X-Request-Id', async () => {
    const t = activeToken();
    const { res, id } = await ask({ ...traefik('GET', '/api/invoices/7?page=2'), ...bearer(t) });
    expect(res.status).toBe(200);
    expect(res.body).toBe('');
    const jwt = await jwtOf(res);
    expect(jwt).toBe(issuedJwts.at(-1));
    expect(jwt).not.toBe(t);
    expect(decodeJwt(jwt)['sub']).toBe('alice');
    expect(res.headers['x-auth-subject']).toBe('alice');
    expect(res.headers['x-auth-roles']).toBe('admin ops');
    expect(res.headers['x-auth-level']).toBe('3');
    expect(res.headers['x-auth-email']).toBeUndefined(); // absent claim
    expect(res.headers['x-auth-admin']).toBeUndefined(); // boolean claim
    // For Envoy (which only adds headers): the client's copies of the absent ones are removed.
    expect(res.headers['x-envoy-auth-headers-to-remove']).toBe('x-auth-email, x-auth-admin');
    expect(res.headers['cache-control']).toBe('no-store');
    expect(res.headers['x-request-id']).toBe(id);
    const line = await accessLine(gw, id);
    expect(line).toMatchObject({
      listener: 'forward-auth',
      route: 'invoices-read',
      method: 'GET',
      path: '/api/invoices/7',
      status: 200,
      reason: 'allowed',
      cache: 'introspection',
    });
  });

  it('judges the original method, not the call’s: a write needs invoice_write', async () => {
    const t = activeToken({ scope: 'invoice_read invoice_write' });
    const { res } = await ask({ ...traefik('DELETE', '/api/invoices/7'), ...bearer(t) });
    expect(res.status).toBe(200);
    await jwtOf(res);
  });
});

describe('nginx auth_request style (X-Original-Method / -URI)', () => {
  it('gives the same 200 answer, for a GET or a POST call', async () => {
    const t = activeToken();
    for (const method of ['GET', 'POST']) {
      const { res, id } = await ask({ ...nginx('GET', '/api/invoices'), ...bearer(t) }, { method });
      expect(res.status).toBe(200);
      expect(res.body).toBe('');
      await jwtOf(res);
      expect(res.headers['x-auth-subject']).toBe('alice');
      expect(await accessLine(gw, id)).toMatchObject({
        listener: 'forward-auth',
        path: '/api/invoices',
        status: 200,
      });
    }
    expect(introspections(t)).toBe(1);
  });
});

describe('Envoy ext_authz HTTP style (prefix mode: /auth<original path>)', () => {
  it('judges the call’s own method and the rest of its path', async () => {
    const t = activeToken();
    const ok = await ask(bearer(t), { path: '/auth/api/invoices/7?x=1' });
    expect(ok.res.status).toBe(200);
    await jwtOf(ok.res);
    expect(await accessLine(gw, ok.id)).toMatchObject({
      route: 'invoices-read',
      method: 'GET',
      path: '/api/invoices/7',
    });
    const write = await ask(bearer(t), { path: '/auth/api/invoices/7', method: 'PATCH' });
    expectError(write.res, 403, 'insufficient_scope', write.id);
    const none = await ask(bearer(t), { path: '/authz/api/invoices/7' });
    expectError(none.res, 404, 'route_not_found', none.id);
  });
});

describe('the SPEC §5 errors, with their challenges', () => {
  it('no token → 401 with a bare challenge', async () => {
    const { res, id } = await ask(traefik('GET', '/api/invoices/7'));
    expectError(res, 401, 'unauthorized', id);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="api"');
    expect((await accessLine(gw, id))['reason']).toBe('token_missing');
  });

  it('insufficient scope → 403 with the route’s scope', async () => {
    const t = activeToken({ scope: 'invoice_read' });
    const { res, id } = await ask({ ...nginx('POST', '/api/invoices'), ...bearer(t) });
    expectError(res, 403, 'insufficient_scope', id);
    expect(res.headers['www-authenticate']).toBe(
      'Bearer realm="api", error="insufficient_scope", scope="invoice_write"',
    );
    expect((await accessLine(gw, id))['reason']).toBe('scope_missing');
  });

  it('inactive token → 401 invalid_token', async () => {
    const t = stub.newToken();
    issuedTokens.push(t);
    const { res, id } = await ask({ ...traefik('GET', '/api/invoices'), ...bearer(t) });
    expectError(res, 401, 'invalid_token', id);
    expect(res.headers['www-authenticate']).toMatch(/^Bearer realm="api", error="invalid_token"/);
  });

  it('unknown route → 404, method not allowed → 405 + Allow, bad path → 400 path_rejected', async () => {
    const t = activeToken();
    const unknown = await ask({ ...traefik('GET', '/admin'), ...bearer(t) });
    expectError(unknown.res, 404, 'route_not_found', unknown.id);
    const method = await ask({ ...traefik('OPTIONS', '/api/invoices'), ...bearer(t) });
    expectError(method.res, 405, 'method_not_allowed', method.id);
    expect(method.res.headers['allow']).toBe('GET, HEAD, POST, PUT, PATCH, DELETE');
    const bad = await ask({ ...traefik('GET', '/status/%2e%2e/api/invoices'), ...bearer(t) });
    expectError(bad.res, 400, 'invalid_request', bad.id);
    expect((await accessLine(gw, bad.id))['reason']).toBe('path_rejected');
    const query = await ask(traefik('GET', `/api/invoices?access_token=${t}`));
    expectError(query.res, 400, 'invalid_request', query.id);
    expect(introspections(t)).toBe(0);
  });

  it('auth: none → 200 without Authorization or claim headers, even with a token', async () => {
    const t = activeToken();
    const { res, id } = await ask({ ...traefik('GET', '/status/health'), ...bearer(t) });
    expect(res.status).toBe(200);
    expect(res.headers['authorization']).toBeUndefined();
    expect(res.headers['x-auth-subject']).toBeUndefined();
    expect(res.headers['x-envoy-auth-headers-to-remove']).toBe(
      'authorization, x-auth-subject, x-auth-roles, x-auth-level, x-auth-email, x-auth-admin',
    );
    expect(introspections(t)).toBe(0);
    expect(await accessLine(gw, id)).toMatchObject({ route: 'status', status: 200, reason: 'allowed' });
  });

  it('a call without the original request → 400; two families that disagree → 400; another path → 404', async () => {
    const t = activeToken();
    const missing = await ask(bearer(t));
    expectError(missing.res, 400, 'invalid_request', missing.id);
    // A client's own X-Forwarded-Uri next to the X-Original-URI its nginx set: never "the other request".
    const spoof = await ask({ ...nginx('GET', '/api/invoices'), 'x-forwarded-uri': '/status', ...bearer(t) });
    expectError(spoof.res, 400, 'invalid_request', spoof.id);
    const other = await ask({ ...traefik('GET', '/api/invoices'), ...bearer(t) }, { path: '/check' });
    expectError(other.res, 404, 'route_not_found', other.id);
    expect(introspections(t)).toBe(0);
  });
});

describe('one cache with the public listener (same resolver, Redis shared by replicas)', () => {
  it('a token resolved by forward-auth is an L1 hit on the public listener and an L2 hit on a replica', async () => {
    const t = activeToken();
    const first = await ask({ ...traefik('GET', '/api/invoices/1'), ...bearer(t) });
    expect(first.res.status).toBe(200);
    const again = await ask({ ...traefik('GET', '/api/invoices/2'), ...bearer(t) });
    expect((await accessLine(gw, again.id))['cache']).toBe('l1');
    const id = `pub-${randomUUID()}`;
    const pub = await request(`${gw.url}/api/invoices/3`, { headers: { ...bearer(t), 'x-request-id': id } });
    expect(pub.status).toBe(200);
    const line = await accessLine(gw, id);
    expect(line['cache']).toBe('l1');
    expect(line['listener']).toBeUndefined();
    const rid = `replica-${randomUUID()}`;
    const replica = await request(`${untrusted.url}/api/invoices/4`, {
      headers: { ...bearer(t), 'x-request-id': rid },
    });
    expect(replica.status).toBe(200);
    expect((await accessLine(untrusted, rid))['cache']).toBe('l2');
    expect(introspections(t)).toBe(1);
  });
});

describe('an untrusted peer (trustedProxies: [10.0.0.0/8], caller on 127.0.0.1)', () => {
  it('is refused with 403 whatever it sends; its token is never looked at', async () => {
    const t = activeToken();
    for (const [headers, path] of [
      [{ ...traefik('GET', '/api/invoices/7'), ...bearer(t) }, '/auth'],
      [{ ...nginx('GET', '/status'), ...bearer(t) }, '/auth'],
      [bearer(t), '/auth/api/invoices/7'],
      [bearer(t), '/elsewhere'],
    ] as const) {
      const { res, id } = await ask(headers, { url: untrustedFaUrl, path });
      expectError(res, 403, 'forbidden', id);
      expect(res.headers['www-authenticate']).toBeUndefined();
      expect(await accessLine(untrusted, id)).toMatchObject({
        listener: 'forward-auth',
        status: 403,
        reason: 'proxy_untrusted',
        path: path.split('?')[0],
      });
    }
    expect(introspections(t)).toBe(0);
  });
});

describe('logs', () => {
  it('the listening line names the forward-auth address; no token or JWT appears in any output', async () => {
    const listening = gw.logs().find((l) => l['msg'] === 'phantom-gateway listening');
    expect(listening?.['forwardAuth']).toBe(faUrl.replace('http://', ''));
    expect(issuedTokens.length).toBeGreaterThan(5);
    expect(issuedJwts.length).toBeGreaterThan(5);
    for (const g of [gw, untrusted]) {
      const out = g.output();
      for (const secret of [...issuedTokens, ...issuedJwts]) expect(out.includes(secret)).toBe(false);
      expect(out.includes(GW_SECRET)).toBe(false);
    }
  });
});
