import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  errorOf,
  expectAuthorizedJwt,
  finals,
  rawExchange,
  type SecurityEnv,
  startSecurityEnv,
  upstreamSince,
} from './fixture.ts';

/**
 * Request smuggling and framing (issue 8 part 1): ambiguous or invalid message framing, pipelined
 * and keep-alive exchanges where a later request is poisoned or goes for the admin route without
 * the right token. Everything is written byte for byte on a raw socket. For each case: the
 * statuses the client got, and every request that reached the upstream (path, JWT, body) — never
 * one the gateway did not authorize. The L1 cache is warm, so an authorized request is forwarded
 * in the same tick the parser emits it: a body the parser refuses afterwards must not turn into a
 * request at the upstream either.
 */

let env: SecurityEnv;
let auth: string;

beforeAll(async () => {
  env = await startSecurityEnv();
  auth = `Authorization: Bearer ${env.readToken}`;
});

afterAll(async () => {
  await env?.close();
});

/** The request line + headers (CRLF) of a request with the read token, up to the blank line. */
const post = (path: string, ...headers: string[]) =>
  [`POST ${path} HTTP/1.1`, 'Host: 127.0.0.1', auth, ...headers].join('\r\n');

/** An admin request a smuggler hopes the upstream sees without the gateway's say-so. */
const SMUGGLED = 'GET /api/admin/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';

async function send(raw: string, expectCount = 1) {
  const mark = env.up.requests.length;
  const x = await rawExchange(env.gw.port, raw, { expect: expectCount, timeoutMs: 3_000 });
  const got = await upstreamSince(env, mark);
  // Whatever happened, the admin route was never reached.
  expect(got.filter((r) => r.url.startsWith('/api/admin'))).toHaveLength(0);
  return { x, got, statuses: finals(x).map((r) => r.status) };
}

/** A refused message: 400, the connection closed, nothing at the upstream. */
async function expectRefused(raw: string) {
  const { x, got, statuses } = await send(raw, 2);
  expect(statuses).toEqual([400]);
  expect(x.closed).toBe(true);
  expect(got).toHaveLength(0);
}

/** An accepted chunked/sized POST: 200 and exactly one request with body `hello` upstream. */
async function expectHelloBody(raw: string, extra = 1) {
  const { got, statuses } = await send(raw, extra);
  expect(statuses[0]).toBe(200);
  expect(got).toHaveLength(1);
  expect(got[0]!.method).toBe('POST');
  expect(got[0]!.url).toBe('/api/reports/body');
  expect(got[0]!.body.toString()).toBe('hello');
  expect(
    got[0]!.headers['transfer-encoding'] === undefined || got[0]!.headers['content-length'] === undefined,
  ).toBe(true);
  expectAuthorizedJwt(got[0]!, env);
  return statuses;
}

describe('Content-Length and Transfer-Encoding', () => {
  it('CL + TE: chunked → 400, closed, nothing forwarded', async () => {
    await expectRefused(
      `${post('/api/reports/body', 'Content-Length: 4', 'Transfer-Encoding: chunked')}\r\n\r\n0\r\n\r\n${SMUGGLED}`,
    );
  });
  it('TE: chunked + CL (reversed order) → 400, closed, nothing forwarded', async () => {
    await expectRefused(
      `${post('/api/reports/body', 'Transfer-Encoding: chunked', `Content-Length: ${5 + SMUGGLED.length}`)}\r\n\r\n0\r\n\r\n${SMUGGLED}`,
    );
  });
  it('duplicate Content-Length, same value → 400', async () => {
    await expectRefused(
      `${post('/api/reports/body', 'Content-Length: 5', 'Content-Length: 5')}\r\n\r\nhello`,
    );
  });
  it('duplicate Content-Length, different values → 400', async () => {
    await expectRefused(
      `${post('/api/reports/body', 'Content-Length: 5', `Content-Length: ${5 + SMUGGLED.length}`)}\r\n\r\nhello${SMUGGLED}`,
    );
  });
  it('Content-Length list "5, 5" → 400', async () => {
    await expectRefused(`${post('/api/reports/body', 'Content-Length: 5, 5')}\r\n\r\nhello`);
  });
  it.each(['-1', '+5', '0x5', '5 5', '1e1', ' '])('Content-Length: %j → 400', async (v) => {
    await expectRefused(`${post('/api/reports/body', `Content-Length: ${v}`)}\r\n\r\nhello`);
  });
});

describe('obfuscated Transfer-Encoding', () => {
  it.each([
    'Transfer-Encoding: chunked, identity',
    'Transfer-Encoding: xchunked',
    'Transfer-Encoding: chunkedx',
    'Transfer-Encoding: identity',
    'Transfer-Encoding : chunked',
    'Transfer-Encoding: chunked\r\nTransfer-Encoding: identity',
    'Transfer-Encoding: "chunked"',
    'Transfer_Encoding: chunked\r\nContent-Length: x',
  ])('%j → 400, nothing forwarded', async (te) => {
    await expectRefused(`${post('/api/reports/body', te)}\r\n\r\n5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`);
  });
  it.each([
    'Transfer-Encoding:  chunked',
    'Transfer-Encoding:\tchunked',
    'Transfer-Encoding: CHUNKED',
    'Transfer-Encoding: identity, chunked',
  ])('%j is chunked: the body is exactly the chunk data, the rest a request of its own', async (te) => {
    // The terminating chunk ends the message; the smuggled admin request after it is the gateway's
    // next request on this connection (no token → 401), never a request at the upstream.
    const statuses = await expectHelloBody(
      `${post('/api/reports/body', te)}\r\n\r\n5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
      2,
    );
    expect(statuses).toEqual([200, 401]);
  });
});

describe('chunk framing', () => {
  it.each([
    ['non-hex size', 'zz\r\nhello\r\n0\r\n\r\n'],
    ['negative size', '-5\r\nhello\r\n0\r\n\r\n'],
    ['size overflow', 'fffffffffffffffff5\r\nhello\r\n0\r\n\r\n'],
    ['size smaller than the data', '3\r\nhello\r\n0\r\n\r\n'],
    ['size with leading space', ' 5\r\nhello\r\n0\r\n\r\n'],
    ['LF-only chunk lines', '5\nhello\n0\n\n'],
    ['0x prefix', '0x5\r\nhello\r\n0\r\n\r\n'],
  ])('%s → 400, nothing forwarded', async (_name, body) => {
    await expectRefused(
      `${post('/api/reports/body', 'Transfer-Encoding: chunked')}\r\n\r\n${body}${SMUGGLED}`,
    );
  });
  it('a chunk extension is framing only: body is "hello"', async () => {
    await expectHelloBody(
      `${post('/api/reports/body', 'Transfer-Encoding: chunked')}\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n`,
    );
  });
  it('trailer fields do not become headers upstream', async () => {
    const { got, statuses } = await send(
      `${post('/api/reports/body', 'Transfer-Encoding: chunked')}\r\n\r\n5\r\nhello\r\n0\r\nAuthorization: Bearer forged\r\nX-Phantom-Sub: root\r\n\r\n`,
    );
    expect(statuses).toEqual([200]);
    expect(got).toHaveLength(1);
    expectAuthorizedJwt(got[0]!, env);
    expect(got[0]!.headers['x-phantom-sub']).toBeUndefined();
  });
});

describe('line endings and header folding', () => {
  it('bare LF line endings → 400', async () => {
    await expectRefused(`GET /api/reports/lf HTTP/1.1\nHost: 127.0.0.1\n${auth}\n\n`);
  });
  it('a bare LF hiding a Transfer-Encoding inside another header → 400', async () => {
    await expectRefused(
      `${post('/api/reports/body', 'X-Note: a\nTransfer-Encoding: chunked', 'Content-Length: 5')}\r\n\r\nhello`,
    );
  });
  it('a bare CR inside a header value → 400', async () => {
    await expectRefused(`${post('/api/reports/body', 'X-Note: a\rb', 'Content-Length: 5')}\r\n\r\nhello`);
  });
  it('obs-fold (a continuation line) → 400', async () => {
    await expectRefused(
      `${post('/api/reports/body', 'X-Note: a', ' folded', 'Content-Length: 5')}\r\n\r\nhello`,
    );
  });
  it('obs-fold that would extend Transfer-Encoding → 400', async () => {
    await expectRefused(
      `${post('/api/reports/body', 'Transfer-Encoding: identity', ' chunked', 'Content-Length: 5')}\r\n\r\nhello`,
    );
  });
  it('obs-fold that would extend Authorization → 400', async () => {
    await expectRefused(
      `GET /api/admin/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer\r\n ${env.readToken}\r\n\r\n`,
    );
  });
});

describe('request line', () => {
  it.each([
    ['lowercase method', `get /api/reports/x HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth}\r\n\r\n`],
    ['unknown version', `GET /api/reports/x HTTP/1.2\r\nHost: 127.0.0.1\r\n${auth}\r\n\r\n`],
    ['HTTP/2 preface on HTTP/1', 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'],
    ['space in the target', `GET /api/reports /../admin HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth}\r\n\r\n`],
  ])('%s → 400, nothing forwarded', async (_name, raw) => {
    await expectRefused(raw);
  });
  it('an HTTP/0.9-style request line is answered as a request without a token (401)', async () => {
    const { got, statuses } = await send('GET /api/admin/x\r\n\r\n');
    expect(statuses).toEqual([401]);
    expect(got).toHaveLength(0);
  });
});

describe('pipelining', () => {
  const get = (path: string, ...headers: string[]) =>
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`;

  it('an authorized request, then the admin route without a token → 200, 401; one request upstream', async () => {
    const { x, got, statuses } = await send(get('/api/reports/p1', auth) + get('/api/admin/p2'), 2);
    expect(statuses).toEqual([200, 401]);
    expect(finals(x)[1]!.headers['www-authenticate']).toBe('Bearer realm="api"');
    expect(got.map((r) => r.url)).toEqual(['/api/reports/p1']);
    expectAuthorizedJwt(got[0]!, env);
  });
  it('an authorized request, then the admin route with the read token → 200, 403', async () => {
    const { got, statuses } = await send(get('/api/reports/p1', auth) + get('/api/admin/p2', auth), 2);
    expect(statuses).toEqual([200, 403]);
    expect(got.map((r) => r.url)).toEqual(['/api/reports/p1']);
  });
  it('an authorized request, then a poisoned one (duplicate Content-Length) → 400, closed; never p2 or p3', async () => {
    // Written in one packet, the parser meets the poisoned request before the first answer is
    // out: the connection ends with one 400 (as node:http's own handler does); the first request
    // may or may not have been forwarded, nothing after it is.
    const poisoned = `${post('/api/reports/p2', 'Content-Length: 5', 'Content-Length: 40')}\r\n\r\nhello${SMUGGLED}`;
    const { x, got, statuses } = await send(
      get('/api/reports/p1', auth) + poisoned + get('/api/reports/p3', auth),
      3,
    );
    expect(statuses.at(-1)).toBe(400);
    expect(statuses.length).toBeLessThanOrEqual(2);
    expect(x.closed).toBe(true);
    expect(got.every((r) => r.url === '/api/reports/p1')).toBe(true);
  });
  it('a poisoned request sent once the first answer completed → 200, then 400; closed', async () => {
    const mark = env.up.requests.length;
    const poisoned = `${post('/api/reports/p2', 'Content-Length: 5', 'Content-Length: 40')}\r\n\r\nhello${SMUGGLED}`;
    const x = await rawExchange(env.gw.port, [get('/api/reports/p1', auth), poisoned], {
      expect: 2,
      pauseMs: 300,
    });
    expect(finals(x).map((r) => r.status)).toEqual([200, 400]);
    expect((await upstreamSince(env, mark)).map((r) => r.url)).toEqual(['/api/reports/p1']);
  });
  it('a poisoned request while an answer is streaming never injects a status line into its body (noClientErrorInsideResponse)', async () => {
    // Regression: the clientError handler used to write `HTTP/1.1 400` on the socket whatever was
    // in flight, i.e. inside the body being streamed: a front proxy pooling connections would
    // read it as the answer to its next request (response queue poisoning).
    env.up.behaviour = { streamBytes: 8 * 1024 * 1024 };
    try {
      const x = await new Promise<{ raw: Buffer; closed: boolean }>((resolve) => {
        const sock = connect(env.gw.port, '127.0.0.1');
        let buf = Buffer.alloc(0);
        let poisonedSent = false;
        const timer = setTimeout(() => {
          sock.destroy();
          resolve({ raw: buf, closed: false });
        }, 10_000);
        sock.on('data', (d: Buffer) => {
          buf = Buffer.concat([buf, d]);
          if (!poisonedSent && buf.indexOf('\r\n\r\n') !== -1 && buf.length > 64 * 1024) {
            poisonedSent = true;
            sock.write(
              'GET /api/reports/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n',
            );
          }
        });
        const done = () => {
          clearTimeout(timer);
          resolve({ raw: buf, closed: true });
        };
        sock.on('close', done);
        sock.on('error', () => {});
        sock.write(get('/api/reports/stream', auth));
      });
      expect(x.closed).toBe(true);
      const text = x.raw.toString('latin1');
      expect(text.startsWith('HTTP/1.1 200')).toBe(true);
      // The only status line is the first one: the rest is body bytes ('a') and chunk framing.
      expect(text.indexOf('HTTP/1.1', 1)).toBe(-1);
    } finally {
      env.up.behaviour = 'echo';
    }
  });
  it('a poisoned first request: the connection ends there, the authorized one after it is never run', async () => {
    const poisoned = `${post('/api/reports/p1', 'Transfer-Encoding: xchunked')}\r\n\r\n0\r\n\r\n`;
    const { got, statuses } = await send(poisoned + get('/api/reports/p2', auth), 2);
    expect(statuses).toEqual([400]);
    expect(got).toHaveLength(0);
  });
  it('a body shorter than its bytes on the wire: the rest is a new request (401), not body', async () => {
    const raw = `${post('/api/reports/body', 'Content-Length: 5')}\r\n\r\nhello${SMUGGLED}`;
    const statuses = await expectHelloBody(raw, 2);
    expect(statuses).toEqual([200, 401]);
  });
  it('a request hidden in a sized body stays body: the upstream gets one POST with those bytes', async () => {
    const { got, statuses } = await send(
      `${post('/api/reports/body', `Content-Length: ${SMUGGLED.length}`)}\r\n\r\n${SMUGGLED}`,
    );
    expect(statuses).toEqual([200]);
    expect(got).toHaveLength(1);
    expect(got[0]!.url).toBe('/api/reports/body');
    expect(got[0]!.body.toString()).toBe(SMUGGLED);
  });
  it('ten pipelined requests alternating allowed and forbidden: only the allowed five reach the upstream', async () => {
    let raw = '';
    for (let i = 0; i < 5; i++) raw += get(`/api/reports/n${i}`, auth) + get(`/api/admin/n${i}`, auth);
    const { got, statuses } = await send(raw, 10);
    expect(statuses).toEqual([200, 403, 200, 403, 200, 403, 200, 403, 200, 403]);
    expect(got.map((r) => r.url)).toEqual([0, 1, 2, 3, 4].map((i) => `/api/reports/n${i}`));
  });
});

describe('Expect: 100-continue', () => {
  it('to the admin route with the read token → 403; the body never reaches the upstream', async () => {
    const { got, statuses } = await send(
      `POST /api/admin/x HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth}\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello`,
    );
    expect(statuses).toEqual([403]);
    expect(got).toHaveLength(0);
  });
  it('to the admin route without a token → 401', async () => {
    const { got, statuses } = await send(
      'POST /api/admin/x HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello',
    );
    expect(statuses).toEqual([401]);
    expect(got).toHaveLength(0);
  });
  it('authorized, body sent after 100 Continue → 200; the upstream gets the body, no Expect', async () => {
    const mark = env.up.requests.length;
    const x = await rawExchange(
      env.gw.port,
      [`${post('/api/reports/body', 'Expect: 100-continue', 'Content-Length: 5')}\r\n\r\n`, 'hello'],
      { pauseMs: 100 },
    );
    expect(x.responses.map((r) => r.status)).toEqual([100, 200]);
    const got = await upstreamSince(env, mark);
    expect(got).toHaveLength(1);
    expect(got[0]!.body.toString()).toBe('hello');
    expect(got[0]!.headers.expect).toBeUndefined();
    expectAuthorizedJwt(got[0]!, env);
  });
  it('an unknown expectation → 417, nothing forwarded', async () => {
    const { got, statuses } = await send(
      `${post('/api/reports/body', 'Expect: 200-ok', 'Content-Length: 5')}\r\n\r\nhello`,
    );
    expect(statuses).toEqual([417]);
    expect(got).toHaveLength(0);
  });
});

describe('HTTP/1.0', () => {
  const req10 = (path: string, ...headers: string[]) =>
    `GET ${path} HTTP/1.0\r\nHost: 127.0.0.1\r\n${auth}\r\n${headers.map((h) => `${h}\r\n`).join('')}\r\n`;

  it('keep-alive, an answer without length: the connection closes, the admin request after it is never run', async () => {
    // The upstream's answer is chunked; HTTP/1.0 cannot chunk, so the answer is close-delimited.
    const { x, got, statuses } = await send(
      req10('/api/reports/k1', 'Connection: keep-alive') + req10('/api/admin/k2', 'Connection: keep-alive'),
      2,
    );
    expect(statuses).toEqual([200]);
    expect(x.closed).toBe(true);
    expect(got.map((r) => r.url)).toEqual(['/api/reports/k1']);
    expectAuthorizedJwt(got[0]!, env);
  });
  it('keep-alive with a sized answer (a 403): the next request runs and is enforced → 403, 200', async () => {
    const mark = env.up.requests.length;
    const x = await rawExchange(
      env.gw.port,
      [req10('/api/admin/k1', 'Connection: keep-alive'), req10('/api/reports/k2', 'Connection: keep-alive')],
      { expect: 2, pauseMs: 300 },
    );
    expect(finals(x).map((r) => r.status)).toEqual([403, 200]);
    expect(finals(x)[0]!.headers.connection?.toLowerCase()).toBe('keep-alive');
    expect((await upstreamSince(env, mark)).map((r) => r.url)).toEqual(['/api/reports/k2']);
  });
  it('without keep-alive: bytes after the first request end the connection, the second is never run', async () => {
    const { x, got, statuses } = await send(
      `GET /api/reports/c1 HTTP/1.0\r\n${auth}\r\n\r\nGET /api/admin/c2 HTTP/1.0\r\n${auth}\r\n\r\n`,
      2,
    );
    // node:http refuses data after a message that closes the connection: one answer, 200 or 400.
    expect(statuses).toHaveLength(1);
    expect([200, 400]).toContain(statuses[0]);
    expect(x.closed).toBe(true);
    expect(got.every((r) => r.url === '/api/reports/c1')).toBe(true);
  });
  it('HTTP/1.0 without Host is routed by path and still enforced (403 on admin)', async () => {
    const { got, statuses } = await send(`GET /api/admin/x HTTP/1.0\r\n${auth}\r\n\r\n`);
    expect(statuses).toEqual([403]);
    expect(got).toHaveLength(0);
  });
});

describe('error answers are the gateway own', () => {
  it('a 400 for a smuggling attempt carries no upstream detail', async () => {
    const { x } = await send(
      `${post('/api/reports/body', 'Content-Length: 4', 'Transfer-Encoding: chunked')}\r\n\r\n0\r\n\r\n`,
    );
    expect(x.raw).not.toContain(String(env.up.port));
    expect(errorOf(finals(x)[0]!)).toBe('');
  });
});
