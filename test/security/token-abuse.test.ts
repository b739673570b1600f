import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/http.ts';
import { recordSecret } from '../helpers/leak-registry.ts';
import {
  errorOf,
  expectAuthorizedJwt,
  finals,
  head,
  rawExchange,
  type SecurityEnv,
  startSecurityEnv,
  upstreamSince,
} from './fixture.ts';

/**
 * Token abuse (issue 8 part 1): JWTs presented as the opaque token, tokens in the query string,
 * several or odd Authorization headers, the 4096-byte credential bound, and token scanning —
 * 2 000 random tokens answered (401) while the gateway's resident memory stays bounded and the
 * inactive verdicts are negative-cached (a second pass asks the token service nothing).
 */

let env: SecurityEnv;

beforeAll(async () => {
  // A long negative TTL so the second scanning pass is inside it whatever the machine's speed.
  env = await startSecurityEnv({ extra: { cache: { negativeTtlSeconds: 120 } } });
});

afterAll(async () => {
  await env?.close();
});

async function withAuth(authLines: string[], target = '/api/reports/t') {
  const mark = env.up.requests.length;
  const calls = env.stub.calls;
  const x = await rawExchange(
    env.gw.port,
    head([`GET ${target} HTTP/1.1`, 'Host: 127.0.0.1', ...authLines, 'Connection: close']),
  );
  const got = await upstreamSince(env, mark);
  return { res: finals(x)[0]!, got, introspected: env.stub.calls - calls };
}

describe('a JWT sent as the opaque token', () => {
  it('on a route without acceptJwt → 401 invalid_token, never introspected, nothing forwarded', async () => {
    const jwt = await env.stub.signJwt({
      sub: 'root',
      aud: 'https://api.security.test',
      scope: 'admin read',
    });
    recordSecret(jwt);
    const { res, got, introspected } = await withAuth([`Authorization: Bearer ${jwt}`]);
    expect(res.status).toBe(401);
    expect(errorOf(res)).toBe('invalid_token');
    expect(got).toHaveLength(0);
    // The barrier request is an L1 hit: any introspection here would be the JWT's.
    expect(introspected).toBe(0);
  });
  it('a validly signed admin JWT on the admin route → 401 too (a JWT is never trusted as is)', async () => {
    const jwt = await env.stub.signJwt({ sub: 'root', aud: 'https://api.security.test', scope: 'admin' });
    recordSecret(jwt);
    const { res, got } = await withAuth([`Authorization: Bearer ${jwt}`], '/api/admin/x');
    expect(res.status).toBe(401);
    expect(got).toHaveLength(0);
  });
  it('an unsigned JWT-shaped token (alg none, empty signature) → 401', async () => {
    const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from('{"scope":"admin"}').toString('base64url')}.`;
    const { res, got } = await withAuth([`Authorization: Bearer ${none}`], '/api/admin/x');
    expect(res.status).toBe(401);
    expect(got).toHaveLength(0);
  });
  it('with acceptJwt the JWT is introspected like any token: unknown to the token service → 401', async () => {
    const jwt = await env.stub.signJwt({ sub: 'root', scope: 'read' });
    recordSecret(jwt);
    const { res, got, introspected } = await withAuth([`Authorization: Bearer ${jwt}`], '/api/jwt-ok/x');
    expect(res.status).toBe(401);
    expect(introspected).toBe(1);
    expect(got).toHaveLength(0);
  });
  it('with acceptJwt and known to the token service → the upstream gets the service JWT, not the client one', async () => {
    const jwt = await env.stub.signJwt({ sub: 'alice', scope: 'read' });
    recordSecret(jwt);
    env.stub.register(jwt, { sub: 'alice', aud: 'https://api.security.test', scope: 'read' });
    const { res, got } = await withAuth([`Authorization: Bearer ${jwt}`], '/api/jwt-ok/x');
    expect(res.status).toBe(200);
    expect(got).toHaveLength(1);
    expect(got[0]!.headers.authorization).not.toBe(`Bearer ${jwt}`);
  });
});

describe('tokens in the query string', () => {
  it.each([
    ['query and header', '/api/reports/q?access_token=TOKEN', true],
    ['query only', '/api/reports/q?access_token=TOKEN', false],
    ['encoded parameter name', '/api/reports/q?access%5Ftoken=TOKEN', true],
    ['second parameter', '/api/reports/q?a=1&access_token=TOKEN', true],
    ['on a public route', '/public/q?access_token=TOKEN', false],
    ['on the admin route', '/api/admin/q?access_token=TOKEN', true],
  ])('%s → 400, nothing forwarded (the query never reaches the upstream)', async (_n, target, withHeader) => {
    const t = target.replace('TOKEN', env.readToken);
    const { res, got } = await withAuth(withHeader ? [`Authorization: Bearer ${env.readToken}`] : [], t);
    expect(res.status).toBe(400);
    expect(errorOf(res)).toBe('invalid_request');
    expect(got).toHaveLength(0);
  });
});

describe('Authorization header shapes', () => {
  it('two Authorization headers (read and admin) → 400, nothing forwarded', async () => {
    const { res, got, introspected } = await withAuth(
      [`Authorization: Bearer ${env.readToken}`, `Authorization: Bearer ${env.adminToken}`],
      '/api/admin/x',
    );
    expect(res.status).toBe(400);
    expect(res.headers['www-authenticate']).toBe('Bearer error="invalid_request"');
    expect(got).toHaveLength(0);
    expect(introspected).toBe(0);
  });
  it('two Authorization headers, the same token twice → 400', async () => {
    const { res, got } = await withAuth([
      `Authorization: Bearer ${env.readToken}`,
      `Authorization: Bearer ${env.readToken}`,
    ]);
    expect(res.status).toBe(400);
    expect(got).toHaveLength(0);
  });
  it.each([
    ['Basic', () => 'Authorization: Basic YWRtaW46YWRtaW4='],
    ['DPoP (not enabled)', () => `Authorization: DPoP ${env.adminToken}`],
    ['Bearertoken (no space)', () => `Authorization: Bearer${env.adminToken}`],
    ['a scheme alone', () => 'Authorization: Negotiate'],
    ['an empty value', () => 'Authorization:'],
  ])('%s → 401 with the bare challenge, nothing forwarded', async (_n, line) => {
    const { res, got } = await withAuth([line()], '/api/admin/x');
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe('Bearer realm="api"');
    expect(got).toHaveLength(0);
  });
  it.each([
    ['a tab after Bearer', () => `Authorization: Bearer\t${env.readToken}`],
    ['two credentials', () => `Authorization: Bearer ${env.readToken} ${env.adminToken}`],
    ['a comma list', () => `Authorization: Bearer ${env.readToken}, Bearer ${env.adminToken}`],
    ['a quoted credential', () => `Authorization: Bearer "${env.readToken}"`],
    ['Bearer alone', () => 'Authorization: Bearer'],
    ['a character outside b64token', () => `Authorization: Bearer ${env.readToken}!`],
    ['padding in the middle', () => `Authorization: Bearer ab=cd`],
  ])('%s → 400 invalid_request, nothing forwarded', async (_n, line) => {
    const { res, got } = await withAuth([line()], '/api/admin/x');
    expect(res.status).toBe(400);
    expect(errorOf(res)).toBe('invalid_request');
    expect(got).toHaveLength(0);
  });
  it.each([
    ['lowercase bearer', (t: string) => `Authorization: bearer ${t}`],
    ['uppercase BEARER', (t: string) => `Authorization: BEARER ${t}`],
    ['several spaces', (t: string) => `Authorization: Bearer    ${t}`],
  ])('%s is the Bearer scheme: allowed on reports, still 403 on admin', async (_n, line) => {
    const ok = await withAuth([line(env.readToken)]);
    expect(ok.res.status).toBe(200);
    expect(ok.got).toHaveLength(1);
    expectAuthorizedJwt(ok.got[0]!, env);
    const denied = await withAuth([line(env.readToken)], '/api/admin/x');
    expect(denied.res.status).toBe(403);
    expect(denied.got).toHaveLength(0);
  });
});

describe('credential length', () => {
  it('a registered 4096-byte token is accepted (the bound is inclusive)', async () => {
    const t = randomBytes(3072).toString('base64url');
    expect(t).toHaveLength(4096);
    recordSecret(t);
    env.stub.register(t, { sub: 'long', aud: 'https://api.security.test', scope: 'read' });
    const { res, got } = await withAuth([`Authorization: Bearer ${t}`]);
    expect(res.status).toBe(200);
    expect(got).toHaveLength(1);
  });
  it('an unknown 4096-byte token → 401 after introspection', async () => {
    const t = randomBytes(3072).toString('base64url');
    const { res, got, introspected } = await withAuth([`Authorization: Bearer ${t}`]);
    expect(res.status).toBe(401);
    expect(introspected).toBe(1);
    expect(got).toHaveLength(0);
  });
  it('a 4097-byte token (even a registered one) → 400, never introspected', async () => {
    const t = `${randomBytes(3072).toString('base64url')}x`;
    expect(t).toHaveLength(4097);
    recordSecret(t);
    env.stub.register(t, { sub: 'long', aud: 'https://api.security.test', scope: 'admin' });
    const { res, got, introspected } = await withAuth([`Authorization: Bearer ${t}`], '/api/admin/x');
    expect(res.status).toBe(400);
    expect(introspected).toBe(0);
    expect(got).toHaveLength(0);
  });
});

/** Resident set size of a process in bytes (Linux /proc). */
function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : Number.NaN;
}

describe('token scanning', () => {
  it('2 000 random tokens are all 401, memory stays bounded, and a second pass is answered from the negative cache', async () => {
    const N = 2000;
    const CONCURRENCY = 16;
    const tokens = Array.from({ length: N }, () => randomBytes(24).toString('base64url'));
    const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    const mark = env.up.requests.length;
    const rssBefore = rssOf(env.gw.pid);
    const pass = async (list: string[]) => {
      const statuses = new Map<number, number>();
      let next = 0;
      const worker = async () => {
        while (next < list.length) {
          const t = list[next++]!;
          // Each request is bounded (a generous timeout); no speed is asserted.
          const res = await request(`${env.gw.url}/api/reports/scan`, {
            headers: { authorization: `Bearer ${t}` },
            agent,
            timeoutMs: 10_000,
          });
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          if (res.status === 401) expect(res.json()['error']).toBe('invalid_token');
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
      return Object.fromEntries(statuses);
    };
    try {
      const calls0 = env.stub.calls;
      expect(await pass(tokens)).toEqual({ 401: N });
      const introspections = env.stub.calls - calls0;
      // One introspection per distinct token at most (single-flight), and at least one each.
      expect(introspections).toBe(N);
      const rssAfter = rssOf(env.gw.pid);
      expect(rssAfter - rssBefore).toBeLessThan(100 * 1024 * 1024);
      // The same tokens again: every verdict is in the negative cache, the token service is not asked.
      const calls1 = env.stub.calls;
      expect(await pass(tokens.slice(0, 500))).toEqual({ 401: 500 });
      expect(env.stub.calls - calls1).toBe(0);
    } finally {
      agent.destroy();
    }
    expect(await upstreamSince(env, mark)).toHaveLength(0);
  }, 120_000);
});
