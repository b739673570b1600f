import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RecordedRequest } from '../helpers/upstream.ts';
import {
  expectAuthorizedJwt,
  finals,
  head,
  rawExchange,
  type SecurityEnv,
  startSecurityEnv,
  upstreamSince,
} from './fixture.ts';

/**
 * Header abuse (issue 8 part 1): headers the gateway owns or a trusted proxy would set, sent by
 * the client; hop-by-hop tricks through `Connection`; oversized, numerous and invalid headers.
 * Checked at the upstream: what it received, not what the client sent.
 */

let env: SecurityEnv;
let trusted: SecurityEnv;

beforeAll(async () => {
  [env, trusted] = await Promise.all([startSecurityEnv(), startSecurityEnv({ trustProxyHeaders: true })]);
});

afterAll(async () => {
  await Promise.all([env?.close(), trusted?.close()]);
});

/** Spoofed headers a client might send, as raw lines. */
const SPOOFED = [
  'X-Forwarded-For: 6.6.6.6',
  'X-Forwarded-For: 7.7.7.7',
  'X-Forwarded-Proto: https',
  'X-Forwarded-Host: admin.internal',
  'X-Forwarded-Prefix: /api/admin',
  'X-Forwarded-Port: 443',
  'X-Forwarded-Uri: /api/admin/users',
  'Forwarded: for=6.6.6.6;proto=https;host=admin.internal',
  'Txn-Token: eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0.',
  'X-Phantom-Sub: root',
  'X-Phantom-Scope: admin',
  'x-PHANTOM-claims: {"scope":"admin"}',
  'Client-Cert: :MIIBszCCAVmgAwIBAgIUforged=:',
  'Client-Cert-Chain: :MIIBszCCAVmgAwIBAgIUforged=:',
];

async function one(e: SecurityEnv, lines: string[], target = '/api/reports/h', body = '') {
  const mark = e.up.requests.length;
  const x = await rawExchange(
    e.gw.port,
    head([
      `${body === '' ? 'GET' : 'POST'} ${target} HTTP/1.1`,
      'Host: 127.0.0.1',
      `Authorization: Bearer ${e.readToken}`,
      ...lines,
      'Connection: close',
    ]) + body,
  );
  const got = await upstreamSince(e, mark);
  return { res: finals(x)[0], got };
}

function only(got: RecordedRequest[]): RecordedRequest {
  expect(got).toHaveLength(1);
  return got[0]!;
}

/** How many raw lines named `name` the upstream received. */
const lines = (r: RecordedRequest, name: string) =>
  r.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === name).length;

describe('spoofed proxy and gateway headers (trustProxyHeaders: false)', () => {
  let r: RecordedRequest;
  beforeAll(async () => {
    const { res, got } = await one(env, SPOOFED);
    expect(res?.status).toBe(200);
    r = only(got);
  });
  it('X-Forwarded-For is the peer address only, one line', () => {
    expect(r.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(lines(r, 'x-forwarded-for')).toBe(1);
  });
  it('X-Forwarded-Proto is the listener scheme', () => {
    expect(r.headers['x-forwarded-proto']).toBe('http');
  });
  it('X-Forwarded-Host is the request Host, not the spoofed value', () => {
    expect(r.headers['x-forwarded-host']).toBe('127.0.0.1');
  });
  it.each(['x-forwarded-prefix', 'x-forwarded-port', 'x-forwarded-uri', 'forwarded'])(
    '%s is dropped',
    (name) => {
      expect(r.headers[name]).toBeUndefined();
    },
  );
  it('Txn-Token is dropped', () => {
    expect(r.headers['txn-token']).toBeUndefined();
  });
  it('every X-Phantom-* (any case) is dropped', () => {
    expect(Object.keys(r.headers).filter((k) => k.startsWith('x-phantom-'))).toEqual([]);
  });
  it('Client-Cert and Client-Cert-Chain from an untrusted client are dropped (dropsUntrustedClientCert)', () => {
    // Regression: they used to reach the upstream as sent, where an RFC 9440 consumer would take
    // a forged certificate for the one the client proved possession of.
    expect(r.headers['client-cert']).toBeUndefined();
    expect(r.headers['client-cert-chain']).toBeUndefined();
  });
  it('the upstream gets exactly one Authorization: the gateway JWT', () => {
    expectAuthorizedJwt(r, env);
  });
});

describe('spoofed proxy and gateway headers (trustProxyHeaders: true)', () => {
  let r: RecordedRequest;
  beforeAll(async () => {
    const { res, got } = await one(trusted, SPOOFED);
    expect(res?.status).toBe(200);
    r = only(got);
  });
  it('X-Forwarded-For is appended to (the peer address last), never replaced by the client', () => {
    expect(r.headers['x-forwarded-for']).toBe('6.6.6.6, 7.7.7.7, 127.0.0.1');
    expect(lines(r, 'x-forwarded-for')).toBe(1);
  });
  it('the trusted proxy X-Forwarded-Proto/-Host are kept', () => {
    expect(r.headers['x-forwarded-proto']).toBe('https');
    expect(r.headers['x-forwarded-host']).toBe('admin.internal');
  });
  it('Txn-Token and X-Phantom-* are dropped even from a trusted proxy', () => {
    expect(r.headers['txn-token']).toBeUndefined();
    expect(Object.keys(r.headers).filter((k) => k.startsWith('x-phantom-'))).toEqual([]);
  });
  it('the upstream gets exactly one Authorization: the gateway JWT', () => {
    expectAuthorizedJwt(r, trusted);
  });
  it('spoofed headers never widen access: the admin route is still 403', async () => {
    const { res, got } = await one(trusted, SPOOFED, '/api/admin/x');
    expect(res?.status).toBe(403);
    expect(got).toHaveLength(0);
  });
});

describe('X-Request-Id', () => {
  it.each([
    ['with a space', 'evil id'],
    ['too long', 'a'.repeat(129)],
    ['with a non-ASCII byte', 'caf\u00e9'],
  ])('an invalid one (%s) is replaced by a minted id, upstream and response alike', async (_n, id) => {
    const { res, got } = await one(env, [`X-Request-Id: ${id}`]);
    expect(res?.status).toBe(200);
    const r = only(got);
    expect(r.headers['x-request-id']).not.toBe(id);
    expect(r.headers['x-request-id']).toBe(res!.headers['x-request-id']);
  });
  it("the client sees the gateway's id, never an upstream's own X-Request-Id", async () => {
    env.up.responseHeaders = { 'X-Request-Id': 'upstream-own-id', 'x-request-id-extra': 'kept' };
    try {
      const x = await rawExchange(
        env.gw.port,
        head([
          'GET /api/reports/h HTTP/1.1',
          'Host: 127.0.0.1',
          `Authorization: Bearer ${env.readToken}`,
          'X-Request-Id: client-id-7',
          'Connection: close',
        ]),
      );
      const res = finals(x)[0]!;
      expect(res.status).toBe(200);
      expect(res.headers['x-request-id']).toBe('client-id-7');
      // One line only: the upstream's was dropped, not joined to ours.
      expect(x.raw.match(/^x-request-id:/gim)).toHaveLength(1);
      expect(res.headers['x-request-id-extra']).toBe('kept');
    } finally {
      delete env.up.responseHeaders;
    }
  });
  it('a refusal (401, 404, 400) carries the request id too, in the header and the body', async () => {
    for (const [target, auth, status] of [
      ['/api/reports/h', [], 401],
      ['/nowhere', [`Authorization: Bearer ${env.readToken}`], 404],
      ['/api/%2e%2e/admin', [`Authorization: Bearer ${env.readToken}`], 400],
    ] as const) {
      const x = await rawExchange(
        env.gw.port,
        head([
          `GET ${target} HTTP/1.1`,
          'Host: 127.0.0.1',
          ...auth,
          'X-Request-Id: refused-1',
          'Connection: close',
        ]),
      );
      const res = finals(x)[0]!;
      expect(res.status, target).toBe(status);
      expect(res.headers['x-request-id'], target).toBe('refused-1');
      expect(JSON.parse(res.body).request_id, target).toBe('refused-1');
    }
  });
  it('two X-Request-Id lines: the upstream gets one, the same as the response', async () => {
    const { res, got } = await one(env, ['X-Request-Id: aaa', 'X-Request-Id: bbb']);
    const r = only(got);
    expect(lines(r, 'x-request-id')).toBe(1);
    expect(r.headers['x-request-id']).toBe(res!.headers['x-request-id']);
  });
});

describe('public route (auth: none)', () => {
  it('a client Authorization never reaches the upstream, nor do owned headers', async () => {
    const { res, got } = await one(env, ['X-Phantom-Sub: root', 'Txn-Token: x.y.z'], '/public/x');
    expect(res?.status).toBe(200);
    const r = only(got);
    expect(r.headers.authorization).toBeUndefined();
    expect(r.headers['x-phantom-sub']).toBeUndefined();
    expect(r.headers['txn-token']).toBeUndefined();
  });
});

describe('hop-by-hop tricks through Connection', () => {
  it('Connection: authorization, x-request-id, host, content-length keeps the JWT, id, Host and framing', async () => {
    const { res, got } = await one(
      env,
      [
        'Connection: authorization, x-request-id, host, content-length',
        'X-Request-Id: hop-1',
        'Content-Length: 5',
      ],
      '/api/reports/hop',
      'hello',
    );
    expect(res?.status).toBe(200);
    const r = only(got);
    expectAuthorizedJwt(r, env);
    expect(r.headers['x-request-id']).toBe('hop-1');
    expect(r.headers.host).toBe(`127.0.0.1:${env.up.port}`);
    expect(r.body.toString()).toBe('hello');
  });
  it('Connection naming the forwarding headers cannot remove the gateway values', async () => {
    const { got } = await one(env, [
      'Connection: x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-request-id',
    ]);
    const r = only(got);
    expect(r.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(r.headers['x-forwarded-proto']).toBe('http');
    expect(r.headers['x-forwarded-host']).toBe('127.0.0.1');
    expect(typeof r.headers['x-request-id']).toBe('string');
  });
  it('Connection: transfer-encoding with a chunked body: the body arrives intact', async () => {
    const { res, got } = await one(
      env,
      ['Connection: transfer-encoding', 'Transfer-Encoding: chunked'],
      '/api/reports/hop',
      '5\r\nhello\r\n0\r\n\r\n',
    );
    expect(res?.status).toBe(200);
    expect(only(got).body.toString()).toBe('hello');
  });
  it('Connection: authorization on the admin route does not skip the check (403)', async () => {
    const { res, got } = await one(env, ['Connection: authorization'], '/api/admin/x');
    expect(res?.status).toBe(403);
    expect(got).toHaveLength(0);
  });
  it('a header the client names in Connection is dropped; hop-by-hop fields never pass', async () => {
    const { got } = await one(env, [
      'Connection: x-secret-hop',
      'X-Secret-Hop: 1',
      'Keep-Alive: timeout=999',
      'Proxy-Authorization: Basic Zm9vOmJhcg==',
      'Proxy-Connection: keep-alive',
      'TE: trailers',
      'Upgrade: h2c',
      'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA',
    ]);
    const r = only(got);
    for (const name of [
      'x-secret-hop',
      'keep-alive',
      'proxy-authorization',
      'proxy-connection',
      'te',
      'upgrade',
      'http2-settings',
    ])
      expect(r.headers[name], name).toBeUndefined();
  });
});

describe('oversized, numerous and invalid headers', () => {
  it('one header over 16 KiB → 431, nothing forwarded (answers431ForHeaderOverflow)', async () => {
    const { res, got } = await one(env, [`X-Big: ${'a'.repeat(17 * 1024)}`]);
    expect(res?.status).toBe(431);
    expect(got).toHaveLength(0);
  });
  it('many small headers over 16 KiB together → 431, nothing forwarded', async () => {
    const many = Array.from({ length: 1200 }, (_, i) => `X-H${i}: ${'b'.repeat(12)}`);
    const { res, got } = await one(env, many);
    expect(res?.status).toBe(431);
    expect(got).toHaveLength(0);
  });
  it('an Authorization over 16 KiB → 431, never introspected', async () => {
    const calls = env.stub.calls;
    const { res, got } = await one(env, [`Authorization: Bearer ${'t'.repeat(17 * 1024)}`], '/api/admin/x');
    expect(res?.status).toBe(431);
    expect(got).toHaveLength(0);
    expect(env.stub.calls).toBe(calls);
  });
  it('2 100 header lines → 431 (node counts them against the 16 KiB limit), nothing forwarded', async () => {
    const filler = Array.from({ length: 2100 }, () => 'a:1');
    const { res, got } = await one(env, [...filler, 'X-Phantom-Sub: root']);
    expect(res?.status).toBe(431);
    expect(got).toHaveLength(0);
  });
  it('500 header lines with owned headers hidden at the end: still dropped, JWT still the only Authorization', async () => {
    const filler = Array.from({ length: 500 }, () => 'a:1');
    const { res, got } = await one(env, [
      ...filler,
      'X-Phantom-Sub: root',
      'Txn-Token: x.y.z',
      'Client-Cert: :Zm9v:',
      'Authorization: Bearer second',
    ]);
    // The second Authorization line makes the credential ambiguous: 400, nothing forwarded.
    expect(res?.status).toBe(400);
    expect(got).toHaveLength(0);
    const again = await one(env, [
      ...filler,
      'X-Phantom-Sub: root',
      'Txn-Token: x.y.z',
      'Client-Cert: :Zm9v:',
    ]);
    expect(again.res?.status).toBe(200);
    const r = only(again.got);
    expect(r.headers['x-phantom-sub']).toBeUndefined();
    expect(r.headers['txn-token']).toBeUndefined();
    expect(r.headers['client-cert']).toBeUndefined();
    expectAuthorizedJwt(r, env);
  });
  it.each([
    ['NUL in a value', 'X-Note: a\u0000b'],
    ['a control character in a value', 'X-Note: a\u0001b'],
    ['DEL in a value', 'X-Note: a\u007fb'],
    ['a space in a name', 'X Note: 1'],
    ['a parenthesis in a name', 'X(Note): 1'],
    ['an empty name', ': value'],
    ['a colon-less line', 'X-Note'],
    ['a non-ASCII name', 'X-N\u00f6te: 1'],
  ])('%s → 400, nothing forwarded', async (_n, line) => {
    const { res, got } = await one(env, [line]);
    expect(res?.status).toBe(400);
    expect(got).toHaveLength(0);
  });
  it('obs-text (bytes 0x80-0xff) in a value is passed on as the same bytes', async () => {
    const { res, got } = await one(env, ['X-Note: caf\u00e9']);
    expect(res?.status).toBe(200);
    const r = only(got);
    expect(Buffer.from(r.headers['x-note'] as string, 'latin1')).toEqual(
      Buffer.from([0x63, 0x61, 0x66, 0xe9]),
    );
  });
});
