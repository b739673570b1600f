import http, { type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../../src/config/parse-config.ts';
import { createForwardAuthApp } from '../../../src/forward-auth/forward-auth-app.ts';
import { createLogger } from '../../../src/observability/logger.ts';
import { ctx } from '../../../src/pipeline/context.ts';
import { RouteTable } from '../../../src/routing/route-table.ts';
import { pollUntil } from '../../helpers/wait.ts';

/**
 * The forward-auth listener's trust decision on real sockets: a dual-stack listener (::) sees IPv4
 * peers as IPv4-mapped IPv6 addresses and IPv6 peers as themselves. Only `auth: none` routes and
 * refusals are exercised here (no token service: the resolver stage must never be reached with a
 * token); the token paths run against the real gateway in test/integration/forward-auth.
 */

const lines: Array<Record<string, unknown>> = [];
const sink = new Writable({
  write(chunk: Buffer, _enc, cb) {
    for (const l of chunk.toString().split('\n')) if (l.startsWith('{')) lines.push(JSON.parse(l));
    cb();
  },
});

function configWith(trustedProxies: string[]) {
  return parseConfig({
    tokenService: {
      issuer: 'https://login.example.com',
      clientId: 'gw',
      clientSecret: 'not-used-here-0123456789',
    },
    routes: [
      { name: 'status', match: { pathPrefix: '/status' }, upstream: 'http://status.internal', auth: 'none' },
      { name: 'api', match: { pathPrefix: '/api' }, upstream: 'http://api.internal', scopes: ['read'] },
    ],
    forwardAuth: { trustedProxies },
  });
}

async function serve(trustedProxies: string[]): Promise<{ server: Server; port: number }> {
  const config = configWith(trustedProxies);
  const table = new RouteTable(config);
  const app = createForwardAuthApp({
    config: config.forwardAuth!,
    table: () => table,
    resolveJwt: (_req, res, next) => {
      if (ctx(res).token !== undefined) throw new Error('no token is resolved in this test');
      next();
    },
    realm: () => config.realm,
    logger: createLogger({ destination: sink, level: 'info' }),
  });
  const server = http.createServer(app);
  await new Promise<void>((r) => server.listen(0, '::', r));
  return { server, port: (server.address() as AddressInfo).port };
}

let v4Only: { server: Server; port: number };
let v6Only: { server: Server; port: number };

beforeAll(async () => {
  [v4Only, v6Only] = await Promise.all([serve(['127.0.0.0/8']), serve(['::1/128'])]);
});
afterAll(async () => {
  for (const s of [v4Only, v6Only]) {
    s?.server.closeAllConnections();
    await new Promise((r) => s?.server.close(r));
  }
});

function ask(host: string, port: number, path: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>(
    (resolve, reject) => {
      const req = http.request({ host, port, path, headers, agent: false, timeout: 5000 }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', reject);
      req.end();
    },
  );
}

const PUBLIC = { 'X-Forwarded-Method': 'GET', 'X-Forwarded-Uri': '/status/health' };

describe('forward-auth trust (real sockets, dual-stack listener)', () => {
  it('trusts an IPv4 peer (seen as ::ffff:127.0.0.1) by an IPv4 block', async () => {
    const r = await ask('127.0.0.1', v4Only.port, '/auth', PUBLIC);
    expect(r.status).toBe(200);
    expect(r.body).toBe('');
    expect(r.headers['authorization']).toBeUndefined();
    expect(r.headers['cache-control']).toBe('no-store');
  });

  it('refuses an IPv6 peer outside the IPv4 block: 403, no challenge, no JWT', async () => {
    const r = await ask('::1', v4Only.port, '/auth', { ...PUBLIC, 'X-Request-Id': 'untrusted-v6' });
    expect(r.status).toBe(403);
    expect(r.headers['www-authenticate']).toBeUndefined();
    expect(r.headers['authorization']).toBeUndefined();
    expect(r.headers['cache-control']).toBe('no-store');
    expect(JSON.parse(r.body)).toEqual({
      error: 'forbidden',
      error_description: 'This endpoint answers trusted proxies only',
      request_id: 'untrusted-v6',
    });
  });

  it('trusts an IPv6 peer by an IPv6 block, and refuses the IPv4 one there', async () => {
    expect((await ask('::1', v6Only.port, '/auth', PUBLIC)).status).toBe(200);
    expect((await ask('127.0.0.1', v6Only.port, '/auth', PUBLIC)).status).toBe(403);
  });

  it('refuses an untrusted peer whatever it asks for (other paths, missing headers, prefixes)', async () => {
    for (const path of ['/auth', '/other', '/auth/status']) {
      expect((await ask('::1', v4Only.port, path)).status).toBe(403);
    }
  });

  it('answers a trusted peer: 404 for other paths, 400 without the original request, the route decision otherwise', async () => {
    expect((await ask('127.0.0.1', v4Only.port, '/other', PUBLIC)).status).toBe(404);
    const missing = await ask('127.0.0.1', v4Only.port, '/auth');
    expect(missing.status).toBe(400);
    expect(JSON.parse(missing.body)).toMatchObject({ error: 'invalid_request' });
    const noToken = await ask('127.0.0.1', v4Only.port, '/auth', {
      'X-Forwarded-Method': 'GET',
      'X-Forwarded-Uri': '/api/x',
    });
    expect(noToken.status).toBe(401);
    expect(noToken.headers['www-authenticate']).toBe('Bearer realm="api"');
    const unknown = await ask('127.0.0.1', v4Only.port, '/auth', {
      'X-Forwarded-Method': 'GET',
      'X-Forwarded-Uri': '/nowhere',
    });
    expect(unknown.status).toBe(404);
    expect(JSON.parse(unknown.body)).toMatchObject({ error: 'route_not_found' });
  });

  it('writes one access line per call, marked forward-auth; refusals log the call’s own request line', async () => {
    await ask('::1', v4Only.port, '/auth?q=1', { ...PUBLIC, 'X-Request-Id': 'log-untrusted' });
    await ask('127.0.0.1', v4Only.port, '/auth', { ...PUBLIC, 'X-Request-Id': 'log-trusted' });
    const find = (id: string) => lines.find((l) => l['requestId'] === id);
    await pollUntil(
      () => find('log-untrusted') !== undefined && find('log-trusted') !== undefined,
      'access lines',
      5000,
    );
    expect(find('log-untrusted')).toMatchObject({
      msg: 'request',
      listener: 'forward-auth',
      method: 'GET',
      path: '/auth',
      status: 403,
      reason: 'proxy_untrusted',
    });
    expect(find('log-trusted')).toMatchObject({
      msg: 'request',
      listener: 'forward-auth',
      route: 'status',
      method: 'GET',
      path: '/status/health',
      status: 200,
      reason: 'allowed',
      cache: 'none',
    });
  });
});
