import { mkdtempSync, rmSync } from 'node:fs';
import type http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import { startDevTokenService } from '../../helpers/dev-token-service.ts';
import { freePort } from '../../helpers/free-port.ts';
import { type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { rawRequest, rawStatus, request } from '../../helpers/http.ts';
import { startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * The gateway end to end in mint mode: a real oidc-provider token service issuing opaque
 * tokens, a real redis-server, real upstreams, and the real gateway process.
 */
type TokenService = Awaited<ReturnType<typeof startDevTokenService>>;
type Redis = Awaited<ReturnType<typeof startRedisServer>>;

const MINT_ISSUER = 'https://gateway.test';
const GW_SECRET = 'gw-introspection-secret-0123456789';
const CACHE_KEY = 'k'.repeat(48);
const issuedTokens: string[] = [];

let ts: TokenService;
let redis: Redis;
let up: EchoUpstream;
let gw: GatewayProcess;
let dir: string;
let deadPort: number;
let config: Record<string, unknown>;

async function token(scope: string, client = 'writer'): Promise<string> {
  const secret = client === 'writer' ? 'writer-secret' : 'reader-secret';
  const t = (await ts.issueToken(client, secret, scope)).access_token;
  issuedTokens.push(t);
  return t;
}
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
const lastUpstream = () => up.requests.at(-1)!;
const accessLines = () => gw.logs().filter((l) => l['msg'] === 'request');

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-mint-'));
  const keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  [ts, redis, up, deadPort] = await Promise.all([
    startDevTokenService({
      host: '127.0.0.1',
      port: await freePort(),
      clients: [
        { client_id: 'phantom-gateway', client_secret: GW_SECRET, grant_types: [] },
        { client_id: 'reader', client_secret: 'reader-secret', scope: 'invoice_read' },
        { client_id: 'writer', client_secret: 'writer-secret', scope: 'invoice_read invoice_write reports' },
      ],
      scopes: ['invoice_read', 'invoice_write', 'reports'],
      introspectionClientId: 'phantom-gateway',
    }),
    startRedisServer(),
    startEchoUpstream(),
    freePort(),
  ]);
  config = {
    tokenService: {
      issuer: ts.issuer,
      clientId: 'phantom-gateway',
      clientSecret: '${GW_SECRET}',
      mode: 'mint',
      timeoutMs: 2000,
    },
    jwt: { mint: { issuer: MINT_ISSUER, signingKeysFile: keysFile, lifetimeSeconds: 120 } },
    cache: { redis: { url: redis.url, commandTimeoutMs: 100 } },
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
      {
        name: 'reports',
        match: { pathPrefix: '/api/reports' },
        upstream: `${up.url}/base`,
        stripPrefix: true,
        scopes: { anyOf: ['reports', 'admin'] },
      },
      {
        name: 'both',
        match: { pathPrefix: '/api/both' },
        upstream: up.url,
        scopes: { allOf: ['invoice_read', 'admin'] },
      },
      { name: 'status', match: { pathPrefix: '/status' }, upstream: up.url, auth: 'none' },
      {
        name: 'dead',
        match: { pathPrefix: '/dead' },
        upstream: `http://127.0.0.1:${deadPort}`,
        scopes: ['invoice_read'],
      },
      {
        name: 'slow',
        match: { pathPrefix: '/slow' },
        upstream: up.url,
        scopes: ['invoice_read'],
        timeoutMs: 300,
      },
    ],
  };
  gw = await startGateway(config, { env: { GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY } });
}, 60_000);

afterAll(async () => {
  await gw?.stop();
  await Promise.all([ts?.close(), redis?.stop(), up?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('allowed requests', () => {
  it('forwards with a JWT minted per RFC 9068 that the upstream can verify with the admin JWKS', async () => {
    const t = await token('invoice_read invoice_write');
    const res = await request(`${gw.url}/api/invoices/7?x=1`, { headers: bearer(t) });
    expect(res.status).toBe(200);
    const got = lastUpstream();
    expect(got.url).toBe('/api/invoices/7?x=1');
    const jwt = String(got.headers.authorization).replace(/^Bearer /, '');
    expect(jwt).not.toBe(t);
    const jwks = (await request(`${gw.adminUrl}/.well-known/jwks.json`)).json() as { keys: [] };
    const { payload, protectedHeader } = await jwtVerify(jwt, createLocalJWKSet(jwks), {
      issuer: MINT_ISSUER,
      audience: up.url,
      typ: 'at+jwt',
    });
    expect(protectedHeader.alg).toBe('ES256');
    expect(payload.sub).toBe('writer'); // client_credentials: no sub → client_id (RFC 9068 §2.2)
    expect(payload['client_id']).toBe('writer');
    expect(payload['scope']).toBe('invoice_read invoice_write');
    expect(typeof payload.jti).toBe('string');
    expect(payload.exp! - payload.iat!).toBeLessThanOrEqual(120);
  });

  it('strips the prefix and prepends the upstream path with stripPrefix', async () => {
    const t = await token('reports');
    const res = await request(`${gw.url}/api/reports/q1`, { headers: bearer(t) });
    expect(res.status).toBe(200);
    expect(lastUpstream().url).toBe('/base/q1');
  });

  it('introspects a token once, then serves it from the in-process cache', async () => {
    const t = await token('invoice_read');
    const before = ts.introspectionCount();
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const res = await request(`${gw.url}/api/invoices`, { headers: bearer(t) });
      expect(res.status).toBe(200);
      ids.push(String(res.headers['x-request-id']));
    }
    expect(ts.introspectionCount() - before).toBe(1);
    const levelOf = (id: string) => accessLines().find((l) => l['requestId'] === id)?.['cache'];
    await waitFor(() => ids.every((id) => levelOf(id) !== undefined), 5000, 'access lines');
    expect(ids.map(levelOf)).toEqual(['introspection', 'l1', 'l1', 'l1', 'l1']);
  });

  it('shares one introspection among concurrent first requests for one token', async () => {
    const t = await token('invoice_read');
    const before = ts.introspectionCount();
    const all = await Promise.all(
      Array.from({ length: 30 }, () => request(`${gw.url}/api/invoices`, { headers: bearer(t) })),
    );
    expect(all.every((r) => r.status === 200)).toBe(true);
    expect(ts.introspectionCount() - before).toBe(1);
  });

  it('serves a public route without a token and removes any Authorization the client sent', async () => {
    const res = await request(`${gw.url}/status`, { headers: { authorization: 'Bearer whatever' } });
    expect(res.status).toBe(200);
    expect(lastUpstream().headers.authorization).toBeUndefined();
  });

  it('streams a 2 MiB upload and a 5 MiB download through', async () => {
    const t = await token('invoice_read invoice_write');
    const body = Buffer.alloc(2 * 1024 * 1024, 0x62);
    const res = await request(`${gw.url}/api/invoices`, {
      method: 'POST',
      headers: { ...bearer(t), 'content-type': 'application/octet-stream' },
      body,
    });
    expect(res.status).toBe(200);
    expect(lastUpstream().bodyLength).toBe(body.length);
    up.behaviour = { streamBytes: 5 * 1024 * 1024 };
    try {
      const down = await request(`${gw.url}/api/invoices/big`, { headers: bearer(t) });
      expect(down.status).toBe(200);
      expect(down.body.length).toBe(5 * 1024 * 1024);
    } finally {
      up.behaviour = 'echo';
    }
  });
});

describe('headers the upstream receives', () => {
  it('removes client copies of gateway-owned and forwarding headers and sets its own', async () => {
    const t = await token('invoice_read');
    const res = await request(`${gw.url}/api/invoices`, {
      headers: {
        ...bearer(t),
        'x-phantom-sub': 'admin',
        'txn-token': 'forged',
        'x-forwarded-for': '6.6.6.6',
        'x-forwarded-host': 'evil.example',
        'x-forwarded-proto': 'https',
        forwarded: 'for=6.6.6.6',
        'x-request-id': 'client-chosen-id-1',
      },
    });
    expect(res.status).toBe(200);
    expect(res.headers['x-request-id']).toBe('client-chosen-id-1');
    const h = lastUpstream().headers;
    expect(h['x-phantom-sub']).toBeUndefined();
    expect(h['txn-token']).toBeUndefined();
    expect(h['forwarded']).toBeUndefined();
    expect(h['x-forwarded-for']).toBe('127.0.0.1');
    expect(h['x-forwarded-proto']).toBe('http');
    expect(h['x-forwarded-host']).toBe(`127.0.0.1:${gw.port}`);
    expect(h['x-request-id']).toBe('client-chosen-id-1');
    expect(String(h.authorization)).toMatch(/^Bearer ey/);
  });

  it('cannot be made to drop its own Authorization with Connection: authorization', async () => {
    const t = await token('invoice_read');
    const raw = await rawRequest(
      gw.port,
      `GET /api/invoices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${t}\r\nConnection: close, authorization, x-request-id\r\n\r\n`,
    );
    expect(rawStatus(raw)).toBe(200);
    expect(String(lastUpstream().headers.authorization)).toMatch(/^Bearer ey/);
    expect(lastUpstream().headers['x-request-id']).toBeTypeOf('string');
  });

  it('replaces an invalid X-Request-Id with its own', async () => {
    const res = await request(`${gw.url}/status`, { headers: { 'x-request-id': 'x'.repeat(129) } });
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(lastUpstream().headers['x-request-id']).toBe(res.headers['x-request-id']);
  });
});

describe('errors (SPEC §5)', () => {
  function expectErrorBody(
    res: { headers: http.IncomingHttpHeaders; json(): Record<string, unknown> },
    error: string,
  ) {
    const body = res.json();
    expect(body['error']).toBe(error);
    expect(typeof body['error_description']).toBe('string');
    expect(body['request_id']).toBe(res.headers['x-request-id']);
    expect(res.headers['cache-control']).toBe('no-store');
    expect(res.headers['content-type']).toMatch(/^application\/json/);
  }

  it('401 with a bare challenge when no Authorization header is sent', async () => {
    const res = await request(`${gw.url}/api/invoices`);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="api"');
    expectErrorBody(res, 'unauthorized');
  });

  it.each(['Basic d3JpdGVyOndyaXRlci1zZWNyZXQ=', 'Bearertoken abc'])(
    '401 with a bare challenge for another scheme (%s)',
    async (h) => {
      const res = await request(`${gw.url}/api/invoices`, { headers: { authorization: h } });
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Bearer realm="api"');
    },
  );

  it.each([
    ['an empty credential', { authorization: 'Bearer' }],
    ['a malformed credential', { authorization: 'Bearer a b' }],
    ['two Authorization headers', { authorization: ['Bearer aaaa', 'Bearer bbbb'] }],
    ['an over-long credential', { authorization: `Bearer ${'a'.repeat(4097)}` }],
  ] as Array<[string, http.OutgoingHttpHeaders]>)('400 invalid_request for %s', async (_name, headers) => {
    const before = up.requests.length;
    const res = await request(`${gw.url}/api/invoices`, { headers });
    expect(res.status).toBe(400);
    expect(res.headers['www-authenticate']).toBe('Bearer error="invalid_request"');
    expectErrorBody(res, 'invalid_request');
    expect(up.requests.length).toBe(before);
  });

  it('400 for an access_token query parameter, with or without the header, and never forwards it', async () => {
    const t = await token('invoice_read');
    const before = up.requests.length;
    expect((await request(`${gw.url}/api/invoices?access_token=${t}`)).status).toBe(400);
    expect((await request(`${gw.url}/api/invoices?access_token=${t}`, { headers: bearer(t) })).status).toBe(
      400,
    );
    expect((await request(`${gw.url}/status?access_token=${t}`)).status).toBe(400);
    expect(up.requests.length).toBe(before);
  });

  it('401 invalid_token for a JWT presented as the opaque token', async () => {
    const t = await token('invoice_read');
    const ok = await request(`${gw.url}/api/invoices`, { headers: bearer(t) });
    const jwt = String(lastUpstream().headers.authorization).slice(7);
    expect(decodeProtectedHeader(jwt).typ).toBe('at+jwt');
    expect(ok.status).toBe(200);
    const res = await request(`${gw.url}/api/invoices`, { headers: bearer(jwt) });
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toContain('error="invalid_token"');
  });

  it('401 invalid_token for an unknown token, and remembers the verdict for negativeTtlSeconds', async () => {
    const before = ts.introspectionCount();
    const fake = 'this-token-was-never-issued-' + Date.now();
    for (let i = 0; i < 3; i++) {
      const res = await request(`${gw.url}/api/invoices`, { headers: bearer(fake) });
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toBe(
        'Bearer realm="api", error="invalid_token", error_description="The access token is invalid or expired"',
      );
      expectErrorBody(res, 'invalid_token');
    }
    expect(ts.introspectionCount() - before).toBe(1);
  });

  it('401 invalid_token for a revoked token', async () => {
    const t = await token('invoice_read');
    await ts.revoke(t);
    const res = await request(`${gw.url}/api/invoices`, { headers: bearer(t) });
    expect(res.status).toBe(401);
  });

  it('403 insufficient_scope naming every scope of the route', async () => {
    const t = await token('invoice_read', 'reader');
    const res = await request(`${gw.url}/api/invoices`, { method: 'POST', headers: bearer(t), body: '{}' });
    expect(res.status).toBe(403);
    expect(res.headers['www-authenticate']).toBe(
      'Bearer realm="api", error="insufficient_scope", scope="invoice_write"',
    );
    expectErrorBody(res, 'insufficient_scope');
    const both = await request(`${gw.url}/api/both`, { headers: bearer(t) });
    expect(both.status).toBe(403);
    expect(both.headers['www-authenticate']).toContain('scope="invoice_read admin"');
  });

  it('checks scopes on every request, also for cached tokens', async () => {
    const t = await token('invoice_read', 'reader');
    expect((await request(`${gw.url}/api/invoices`, { headers: bearer(t) })).status).toBe(200);
    expect((await request(`${gw.url}/api/invoices`, { method: 'DELETE', headers: bearer(t) })).status).toBe(
      403,
    );
  });

  it('404 route_not_found for a path no route covers', async () => {
    const res = await request(`${gw.url}/nowhere`);
    expect(res.status).toBe(404);
    expectErrorBody(res, 'route_not_found');
    expect(res.headers['www-authenticate']).toBeUndefined();
  });

  it('405 with Allow when no route of the prefix takes the method', async () => {
    const res = await request(`${gw.url}/api/invoices`, { method: 'OPTIONS' });
    expect(res.status).toBe(405);
    expect(res.headers['allow']).toBe('GET, HEAD, POST, PUT, PATCH, DELETE');
    expectErrorBody(res, 'method_not_allowed');
  });

  it.each([
    '/api/invoices/%2e%2e/admin',
    '/api/invoices/..%2Fadmin',
    '/api/invoices/../admin',
    '/api/invoices/./7',
    '/api//invoices',
    '/api/invoices\\7',
    '/api/invoices/%5C7',
    '/api/invoices/%00',
    '/api/%69nvoices',
  ])('400 path_rejected for %s, before anything else', async (path) => {
    const t = await token('invoice_read');
    const before = up.requests.length;
    const raw = await rawRequest(
      gw.port,
      `GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${t}\r\nConnection: close\r\n\r\n`,
    );
    expect(rawStatus(raw)).toBe(400);
    expect(raw).toContain('"error":"invalid_request"');
    expect(up.requests.length).toBe(before);
  });

  it('502 upstream_unavailable when the upstream refuses the connection', async () => {
    const t = await token('invoice_read');
    const res = await request(`${gw.url}/dead`, { headers: bearer(t) });
    expect(res.status).toBe(502);
    expectErrorBody(res, 'upstream_unavailable');
    expect(res.body).not.toContain(String(deadPort));
  });

  it('502 upstream_unavailable when the upstream resets the connection', async () => {
    const t = await token('invoice_read');
    up.behaviour = 'reset';
    try {
      const res = await request(`${gw.url}/api/invoices`, { headers: bearer(t) });
      expect(res.status).toBe(502);
    } finally {
      up.behaviour = 'echo';
    }
  });

  it('504 upstream_timeout when the upstream does not answer within the route timeout', async () => {
    const t = await token('invoice_read');
    up.behaviour = 'hang';
    try {
      const res = await request(`${gw.url}/slow`, { headers: bearer(t) });
      expect(res.status).toBe(504);
      expectErrorBody(res, 'upstream_timeout');
    } finally {
      up.behaviour = 'echo';
    }
  });
});

describe('admin port', () => {
  it('answers /livez and /readyz with the Redis state', async () => {
    expect((await request(`${gw.adminUrl}/livez`)).status).toBe(200);
    const ready = await request(`${gw.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.json()['redis']).toBe('ready');
  });
  it('is not reachable through the public listener', async () => {
    expect((await request(`${gw.url}/.well-known/jwks.json`)).status).toBe(404);
    expect((await request(`${gw.url}/readyz`)).status).toBe(404);
  });
});

describe('two-level cache with Redis', () => {
  it('serves a token from Redis in a new gateway process, without introspecting again', async () => {
    const t = await token('invoice_read');
    expect((await request(`${gw.url}/api/invoices`, { headers: bearer(t) })).status).toBe(200);
    const second = await startGateway(config, { env: { GW_SECRET, PHANTOM_CACHE_KEY: CACHE_KEY } });
    try {
      const before = ts.introspectionCount();
      expect((await request(`${second.url}/api/invoices`, { headers: bearer(t) })).status).toBe(200);
      expect(ts.introspectionCount()).toBe(before);
      await waitFor(
        () => second.logs().some((l) => l['msg'] === 'request' && l['cache'] === 'l2'),
        5000,
        'an l2 access line',
      );
    } finally {
      await second.stop();
    }
  });

  it('keeps serving when Redis dies mid-test, and reports it on /readyz while staying ready', async () => {
    const cached = await token('invoice_read');
    expect((await request(`${gw.url}/api/invoices`, { headers: bearer(cached) })).status).toBe(200);
    await redis.kill();
    try {
      for (let i = 0; i < 5; i++) {
        const fresh = await token('invoice_read');
        expect((await request(`${gw.url}/api/invoices`, { headers: bearer(fresh) })).status).toBe(200);
        expect((await request(`${gw.url}/api/invoices`, { headers: bearer(cached) })).status).toBe(200);
      }
      const ready = await request(`${gw.adminUrl}/readyz`);
      expect(ready.status).toBe(200);
      expect(ready.json()['redis']).toBe('down');
    } finally {
      await redis.restart();
    }
    await waitFor(
      async () => (await request(`${gw.adminUrl}/readyz`)).json()['redis'] === 'ready',
      10_000,
      'redis to be ready again',
    );
    const stateLines = gw.logs().filter((l) => l['msg'] === 'redis state changed');
    expect(stateLines.length).toBeGreaterThanOrEqual(2);
    expect(stateLines.length).toBeLessThanOrEqual(4);
  });
});

describe('secrets', () => {
  it('never writes a token or JWT into a log line or an error body', async () => {
    const out = gw.output();
    for (const t of issuedTokens) expect(out.includes(t)).toBe(false);
    expect(out).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\.eyJ/);
    expect(out).not.toContain(GW_SECRET);
  });
});
