import { randomUUID } from 'node:crypto';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CurityStub, startCurityStub } from '../../helpers/curity-stub.ts';
import { freePort } from '../../helpers/free-port.ts';
import { accessLine, type GatewayProcess, startGateway } from '../../helpers/gateway-process.ts';
import { rawRequest, request } from '../../helpers/http.ts';
import { type RedisServerHandle, startRedisServer } from '../../helpers/redis-server.ts';
import { type EchoUpstream, type RecordedRequest, startEchoUpstream } from '../../helpers/upstream.ts';
import { type NginxProcess, startNginx } from './nginx-process.ts';

/**
 * Real nginx (Debian's package) with `auth_request` to the gateway's forward-auth listener, in
 * front of a recording upstream: the ingress keeps routing and proxying, the gateway decides and
 * hands over the JWT (issue 7 part 5). The nginx configuration is docs/forward-auth.md's.
 */

const CLIENT_ID = 'api-gateway';
const GW_SECRET = 'nginx-forward-auth-secret-0123456789';
const ENV = { GW_SECRET, PHANTOM_CACHE_KEY: 'n'.repeat(48) };

let stub: CurityStub;
let redis: RedisServerHandle;
let up: EchoUpstream;
let gw: GatewayProcess;
let ngx: NginxProcess;
const issuedTokens: string[] = [];
const issuedJwts: string[] = [];

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
  const faPort = await freePort();
  gw = await startGateway(
    {
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
          upstream: 'http://unused.invalid',
          scopes: ['invoice_read'],
        },
        {
          name: 'invoices-write',
          match: { pathPrefix: '/api/invoices', methods: ['POST', 'PUT', 'PATCH', 'DELETE'] },
          upstream: 'http://unused.invalid',
          scopes: ['invoice_write'],
        },
        { name: 'status', match: { pathPrefix: '/status' }, upstream: 'http://unused.invalid', auth: 'none' },
      ],
      forwardAuth: {
        host: '127.0.0.1',
        port: faPort,
        trustedProxies: ['127.0.0.1/32'],
        claimHeaders: [{ header: 'X-Auth-Subject', claim: 'sub' }],
      },
    },
    { env: ENV },
  );
  ngx = await startNginx({ forwardAuthUrl: `http://127.0.0.1:${faPort}`, upstreamUrl: up.url });
}, 60_000);

afterAll(async () => {
  await ngx?.stop();
  await gw?.stop();
  await Promise.all([stub?.close(), redis?.stop(), up?.close()]);
});

function activeToken(scope: string): string {
  const t = stub.newToken();
  stub.register(t, { sub: 'alice', scope });
  issuedTokens.push(t);
  return t;
}

/** A request through nginx, tagged with a fresh X-Request-Id (the auth subrequest carries it too). */
async function viaNginx(
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
) {
  const id = `ngx-${randomUUID()}`;
  const res = await request(`${ngx.url}${path}`, {
    method: opts.method ?? 'GET',
    headers: { 'x-request-id': id, ...opts.headers },
    ...(opts.body !== undefined ? { body: opts.body } : {}),
  });
  return { res, id };
}

/** What the upstream received for request `id` (undefined: nginx never forwarded it). */
const atUpstream = (id: string): RecordedRequest | undefined =>
  up.requests.find((r) => r.headers['x-request-id'] === id);

describe('nginx auth_request → phantom-gateway forward-auth → upstream', () => {
  it('an allowed request reaches the upstream with Authorization: Bearer <the JWT>, the claim header and exactly its path', async () => {
    const t = activeToken('invoice_read');
    const path = '/api/invoices/a%20b/7?x=%2F&y=1&y=2';
    const { res, id } = await viaNginx(path, { headers: { authorization: `Bearer ${t}` } });
    expect(res.status).toBe(200);
    expect(res.headers['x-upstream']).toBe('echo');
    const got = atUpstream(id)!;
    expect(got.url).toBe(path);
    expect(got.method).toBe('GET');
    const forwarded = String(got.headers.authorization);
    expect(forwarded).toMatch(/^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);
    const jwt = forwarded.slice('Bearer '.length);
    expect(jwt).not.toBe(t);
    expect(jwt).toBe(issuedJwts.at(-1));
    const { payload } = await jwtVerify(jwt, createLocalJWKSet(stub.publicJwks()), { issuer: stub.issuer });
    expect(payload.sub).toBe('alice');
    expect(got.headers['x-auth-subject']).toBe('alice');
    expect(await accessLine(gw, id)).toMatchObject({
      listener: 'forward-auth',
      route: 'invoices-read',
      method: 'GET',
      path: '/api/invoices/a%20b/7',
      status: 200,
      reason: 'allowed',
    });
  });

  it('a POST with a body: the body reaches the upstream, the write scope is checked', async () => {
    const t = activeToken('invoice_read invoice_write');
    const body = JSON.stringify({ amount: 42 });
    const { res, id } = await viaNginx('/api/invoices', {
      method: 'POST',
      headers: { authorization: `Bearer ${t}`, 'content-type': 'application/json' },
      body,
    });
    expect(res.status).toBe(200);
    const got = atUpstream(id)!;
    expect(got.method).toBe('POST');
    expect(got.body.toString()).toBe(body);
    expect(String(got.headers.authorization)).toBe(`Bearer ${issuedJwts.at(-1)}`);
    expect((await accessLine(gw, id))['route']).toBe('invoices-write');
  });

  it('no token: 401 from nginx with the bare challenge; the upstream never sees it', async () => {
    const { res, id } = await viaNginx('/api/invoices/7');
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="api"');
    expect(atUpstream(id)).toBeUndefined();
    expect((await accessLine(gw, id))['reason']).toBe('token_missing');
  });

  it('insufficient scope: 403 with the scope challenge; the upstream never sees it', async () => {
    const t = activeToken('invoice_read');
    const { res, id } = await viaNginx('/api/invoices/7', {
      method: 'DELETE',
      headers: { authorization: `Bearer ${t}` },
    });
    expect(res.status).toBe(403);
    expect(res.headers['www-authenticate']).toBe(
      'Bearer realm="api", error="insufficient_scope", scope="invoice_write"',
    );
    expect(atUpstream(id)).toBeUndefined();
    expect((await accessLine(gw, id))['reason']).toBe('scope_missing');
  });

  it('the gateway’s other statuses survive nginx (it reports them as 500 otherwise): 404, 405 + Allow, 400', async () => {
    const t = activeToken('invoice_read');
    const auth = { authorization: `Bearer ${t}` };
    const unknown = await viaNginx('/admin/users', { headers: auth });
    expect(unknown.res.status).toBe(404);
    const method = await viaNginx('/api/invoices', { method: 'OPTIONS', headers: auth });
    expect(method.res.status).toBe(405);
    expect(method.res.headers['allow']).toBe('GET, HEAD, POST, PUT, PATCH, DELETE');
    // nginx matches /status/../api/invoices as /api/invoices and would forward it unchanged; the
    // gateway judges the raw URI and rejects it. (Sent raw: a WHATWG URL would remove the dots.)
    const dotsId = `ngx-${randomUUID()}`;
    const raw = await rawRequest(
      Number(new URL(ngx.url).port),
      `GET /status/../api/invoices HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer ${t}\r\nX-Request-Id: ${dotsId}\r\nConnection: close\r\n\r\n`,
    );
    expect(raw).toMatch(/^HTTP\/1\.1 400 /);
    const dots = { id: dotsId };
    for (const r of [unknown, method, dots]) expect(atUpstream(r.id)).toBeUndefined();
    expect((await accessLine(gw, dots.id))['reason']).toBe('path_rejected');
  });

  it('a client cannot choose the judged request or the identity headers', async () => {
    // Its own X-Forwarded-Method/-Uri naming a public path are removed by the auth location.
    const spoof = await viaNginx('/api/invoices/7', {
      headers: { 'x-forwarded-method': 'GET', 'x-forwarded-uri': '/status/health' },
    });
    expect(spoof.res.status).toBe(401);
    expect(atUpstream(spoof.id)).toBeUndefined();
    // On a public route its Authorization and X-Auth-Subject do not reach the upstream.
    const t = activeToken('invoice_read');
    const pub = await viaNginx('/status/health', {
      headers: { authorization: `Bearer ${t}`, 'x-auth-subject': 'mallory' },
    });
    expect(pub.res.status).toBe(200);
    const got = atUpstream(pub.id)!;
    expect(got.url).toBe('/status/health');
    expect(got.headers.authorization).toBeUndefined();
    expect(got.headers['x-auth-subject']).toBeUndefined();
  });

  it('a token is introspected once across requests; no token or JWT in the gateway output', async () => {
    const t = activeToken('invoice_read');
    for (let i = 0; i < 3; i++) {
      expect(
        (await viaNginx(`/api/invoices/${i}`, { headers: { authorization: `Bearer ${t}` } })).res.status,
      ).toBe(200);
    }
    expect(stub.requests.filter((r) => r.body.get('token') === t).length).toBe(1);
    const out = gw.output();
    for (const secret of [...issuedTokens, ...issuedJwts, GW_SECRET])
      expect(out.includes(secret)).toBe(false);
  });
});
