import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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
 * Path and routing bypass (issue 8 part 1). The attacker holds a `read` token and wants
 * `/api/admin` (scope `admin`); both routes share one upstream. Every request target goes out
 * byte for byte on a raw socket. Each attack is either refused (400 path_rejected, 404) with
 * nothing reaching the upstream, or matched to a route that is then enforced, the upstream
 * receiving exactly the path that was authorized.
 */

let env: SecurityEnv;

beforeAll(async () => {
  env = await startSecurityEnv();
});

afterAll(async () => {
  await env?.close();
});

type Expect = { status: 400 | 404 } | { forwarded: true };

async function attack(target: string, extraHeaders: string[] = [], method = 'GET') {
  const mark = env.up.requests.length;
  const x = await rawExchange(
    env.gw.port,
    head([
      `${method} ${target} HTTP/1.1`,
      'Host: 127.0.0.1',
      `Authorization: Bearer ${env.readToken}`,
      ...extraHeaders,
      'Connection: close',
    ]),
  );
  const got = await upstreamSince(env, mark);
  return { x, got, res: finals(x)[0] };
}

async function expectOutcome(target: string, want: Expect, method = 'GET') {
  const { got, res } = await attack(target, [], method);
  expect(res, `an answer to ${target}`).toBeDefined();
  if ('status' in want) {
    expect(res!.status).toBe(want.status);
    expect(errorOf(res!)).toBe(want.status === 400 ? 'invalid_request' : 'route_not_found');
    expect(got).toHaveLength(0);
  } else {
    expect(res!.status).toBe(200);
    expect(got).toHaveLength(1);
    // Exactly the authorized path, byte for byte, on the route the read token may use.
    expect(got[0]!.url).toBe(target);
    expect(got[0]!.url.startsWith('/api/reports')).toBe(true);
    expectAuthorizedJwt(got[0]!, env);
  }
}

describe('controls: the routes are enforced', () => {
  it('the read token reaches /api/reports and the upstream gets exactly that path', async () => {
    await expectOutcome('/api/reports/q1', { forwarded: true });
  });
  it('the read token is refused on /api/admin (403) and nothing reaches the upstream', async () => {
    const { got, res } = await attack('/api/admin/users');
    expect(res!.status).toBe(403);
    expect(errorOf(res!)).toBe('insufficient_scope');
    expect(got).toHaveLength(0);
  });
});

describe('encoded slashes, dots and backslashes are refused', () => {
  it.each([
    '/api/reports/..%2fadmin',
    '/api/reports/..%2Fadmin',
    '/api/reports%2f..%2fadmin',
    '/api/reports/%2e%2e/admin',
    '/api/reports/%2E%2E/admin',
    '/api/reports/.%2e/admin',
    '/api/reports/%2e./admin',
    '/api/reports/%2e',
    '/api/reports/..%5cadmin',
    '/api/reports/%5c..%5cadmin',
    '/api/reports/%2e%2e%2fadmin',
  ])('%s → 400', async (target) => {
    await expectOutcome(target, { status: 400 });
  });
});

describe('double encoding is matched as received and forwarded byte for byte', () => {
  it.each([
    '/api/reports/%252e%252e/admin',
    '/api/reports/..%252fadmin',
    '/api/reports/%25252e%25252e/admin',
  ])('%s → the reports route, forwarded exactly', async (target) => {
    await expectOutcome(target, { forwarded: true });
  });
  it('/api/reports%252f..%252fadmin is one segment: no route (404)', async () => {
    await expectOutcome('/api/reports%252f..%252fadmin', { status: 404 });
  });
});

describe('overlong UTF-8 is not a slash to the gateway: matched and forwarded byte for byte', () => {
  it.each([
    '/api/reports/..%c0%afadmin',
    '/api/reports/%c0%ae%c0%ae%c0%afadmin',
    '/api/reports/..%e0%80%afadmin',
    '/api/reports/%e0%80%ae%e0%80%ae/admin',
  ])('%s → the reports route, forwarded exactly', async (target) => {
    await expectOutcome(target, { forwarded: true });
  });
  it.each(['/api/admin%c0%af', '/api%c0%afadmin', '/api%e0%80%afadmin'])(
    '%s → no route (404)',
    async (target) => {
      await expectOutcome(target, { status: 404 });
    },
  );
});

describe('dot segments are refused', () => {
  it.each([
    '/api/reports/../admin',
    '/api/reports/./../admin',
    '/api/reports/..',
    '/api/reports/.',
    '/api/reports/x/../../admin',
    '/api/./admin',
  ])('%s → 400', async (target) => {
    await expectOutcome(target, { status: 400 });
  });
  it('/api/reports/.../admin ("..." is a name, not a dot segment) → forwarded exactly', async () => {
    await expectOutcome('/api/reports/.../admin', { forwarded: true });
  });
});

describe('";" matrix parameters', () => {
  // Tomcat, Jetty and Spring read `..;x` as `..` with a path parameter (RFC 2396 segments):
  // `/api/reports/..;/admin` is /api/admin to them. Regression: such segments used to be forwarded.
  it.each([
    '/api/reports/..;/admin',
    '/api/reports/..;x=1/admin',
    '/api/reports/.;/../admin',
    '/api/reports/x/..;/..;/admin',
    '/api/reports/.;x/admin',
    '/api/reports/..;',
    '/api/reports;/../admin',
  ])('dot segment with a path parameter %s → 400 (rejectsDotSegmentsWithMatrixParams)', async (target) => {
    await expectOutcome(target, { status: 400 });
  });
  it.each(['/api/admin;x=1', '/api/reports;jsessionid=abc', '/api;/admin'])(
    '%s is another segment name: no route (404)',
    async (target) => {
      await expectOutcome(target, { status: 404 });
    },
  );
  it('/api/reports/x;v=1 → the reports route, forwarded exactly', async () => {
    await expectOutcome('/api/reports/x;v=1', { forwarded: true });
  });
});

describe('empty segments and backslashes are refused', () => {
  it.each([
    '//api/admin',
    '/api//admin',
    '/api/reports//../admin',
    '/api/reports//admin',
    '/api/reports\\..\\admin',
    '/api\\admin',
    '/api/reports/..\\admin',
  ])('%s → 400', async (target) => {
    await expectOutcome(target, { status: 400 });
  });
});

describe('routes are case-sensitive', () => {
  it.each(['/API/admin', '/api/ADMIN', '/Api/Admin', '/API/REPORTS'])('%s → 404', async (target) => {
    await expectOutcome(target, { status: 404 });
  });
});

describe('trailing dots, NUL, control characters and unusual targets', () => {
  it.each(['/api/admin.', '/api/admin./x', '/api/reports.', '/api/admin..'])(
    '%s is another segment name: 404',
    async (target) => {
      await expectOutcome(target, { status: 404 });
    },
  );
  it.each([
    '/api/reports/%00/../admin',
    '/api/admin%00',
    '/api/reports%00',
    '/api/reports/%00',
    '/api/reports/%0d%0aX-Injected:%20yes',
    '/api/reports/%7f',
    '/api/%61dmin',
    '/api/reports/%u002e%u002e/admin',
    '/api/reports/%zz',
  ])('%s → 400', async (target) => {
    await expectOutcome(target, { status: 400 });
  });
  it.each(['/api/reports/x\u0000y', '/api/reports/\u00e9', '/api/reports/\t/admin'])(
    'raw byte in the target %j → 400 from the HTTP parser, nothing forwarded',
    async (target) => {
      const { x, got } = await attack(target);
      expect(finals(x)[0]?.status).toBe(400);
      expect(got).toHaveLength(0);
    },
  );
});

describe('fragments', () => {
  it('/api/reports#/../admin → 400 (the dot segment is in the path as received)', async () => {
    await expectOutcome('/api/reports#/../admin', { status: 400 });
  });
  it('/api/admin#x → 400 (a route-prefix match that an upstream would read as /api/admin)', async () => {
    await expectOutcome('/api/admin#x', { status: 400 });
  });
  it('/api/reports#/admin → 400 (no fragment in a request target)', async () => {
    await expectOutcome('/api/reports#/admin', { status: 400 });
  });
  it('/api/reports/x#frag → 400, nothing forwarded', async () => {
    await expectOutcome('/api/reports/x#frag', { status: 400 });
  });
});

describe('the query string is not the path', () => {
  it('/api/reports?next=/../admin → the reports route, query forwarded as received', async () => {
    await expectOutcome('/api/reports?next=/../admin', { forwarded: true });
  });
  it('/api/reports?%2e%2e/admin → the reports route, query forwarded as received', async () => {
    await expectOutcome('/api/reports?%2e%2e/admin', { forwarded: true });
  });
});

describe('request targets that are not origin-form', () => {
  it('absolute-form to the admin route → 400, nothing forwarded', async () => {
    await expectOutcome(`http://127.0.0.1:${env.gw.port}/api/admin`, { status: 400 });
  });
  it('absolute-form to the reports route → 400 (never routed by its authority)', async () => {
    await expectOutcome('http://127.0.0.1/api/reports', { status: 400 });
  });
  it('absolute-form with another scheme → 400', async () => {
    await expectOutcome('https://evil.example/api/reports', { status: 400 });
  });
  it('asterisk-form (OPTIONS *) → 400', async () => {
    await expectOutcome('*', { status: 400 }, 'OPTIONS');
  });
  it('authority-form (CONNECT host:port) → connection closed (no CONNECT handler), no tunnel', async () => {
    const mark = env.up.requests.length;
    const x = await rawExchange(
      env.gw.port,
      head([
        `CONNECT 127.0.0.1:${env.up.port} HTTP/1.1`,
        `Host: 127.0.0.1:${env.up.port}`,
        `Authorization: Bearer ${env.readToken}`,
      ]),
    );
    // node:http closes a CONNECT when nobody listens for it: no answer, no bytes relayed.
    expect(x.closed).toBe(true);
    expect(finals(x)).toHaveLength(0);
    expect(await upstreamSince(env, mark)).toHaveLength(0);
  });
});

describe('Host tricks', () => {
  async function withHost(hostLines: string[], target = '/api/reports/h') {
    const mark = env.up.requests.length;
    const x = await rawExchange(
      env.gw.port,
      head([
        `GET ${target} HTTP/1.1`,
        ...hostLines,
        `Authorization: Bearer ${env.readToken}`,
        'Connection: close',
      ]),
    );
    return { res: finals(x)[0], got: await upstreamSince(env, mark) };
  }

  it('no Host on HTTP/1.1 → 400, nothing forwarded', async () => {
    const { res, got } = await withHost([]);
    expect(res?.status).toBe(400);
    expect(got).toHaveLength(0);
  });
  it('two Host headers → 400, nothing forwarded (rejectsDuplicateHost; RFC 9112 §3.2)', async () => {
    const { res, got } = await withHost(['Host: 127.0.0.1', 'Host: admin.internal']);
    expect(res?.status).toBe(400);
    expect(got).toHaveLength(0);
  });
  it('two Host headers to the admin route → 400, nothing forwarded', async () => {
    const { res, got } = await withHost(['Host: a.example', 'Host: b.example'], '/api/admin/x');
    expect(res?.status).toBe(400);
    expect(got).toHaveLength(0);
  });
  it.each([
    'Host: 127.0.0.1/api/admin',
    'Host: 127.0.0.1/../api/admin',
    'Host: user@evil.example',
    'Host: evil.example?x=1',
    'Host: evil.example#frag',
    'Host: evil.example\\admin',
    'Host: a b',
  ])('an invalid Host value (%s) → 400, nothing forwarded (rejectsInvalidHost)', async (line) => {
    const { res, got } = await withHost([line]);
    expect(res?.status).toBe(400);
    expect(got).toHaveLength(0);
  });
  it.each(['Host: localhost.', 'Host: evil.example', 'Host: [::1]:8080', 'Host: 127.0.0.1:1'])(
    'a valid but foreign Host (%s) routes by path only; the upstream gets its own Host',
    async (line) => {
      const { res, got } = await withHost([line]);
      expect(res?.status).toBe(200);
      expect(got).toHaveLength(1);
      expect(got[0]!.url).toBe('/api/reports/h');
      expect(got[0]!.headers.host).toBe(`127.0.0.1:${env.up.port}`);
      expect(got[0]!.headers['x-forwarded-host']).toBe(line.slice('Host: '.length));
    },
  );
  it('a foreign Host never turns a read token into admin access', async () => {
    const { res, got } = await withHost([`Host: 127.0.0.1:${env.up.port}`], '/api/admin/x');
    expect(res?.status).toBe(403);
    expect(got).toHaveLength(0);
  });
});
