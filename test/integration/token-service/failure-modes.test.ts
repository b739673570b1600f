import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeysFile } from '../../../src/jwt/signing-keys.ts';
import {
  type CurityStub,
  HUGE_BODY_BYTES,
  type StubBehaviour,
  startCurityStub,
} from '../../helpers/curity-stub.ts';
import { freePort } from '../../helpers/free-port.ts';
import { accessLine, type GatewayProcess, startGateway, waitFor } from '../../helpers/gateway-process.ts';
import { request, type SimpleResponse } from '../../helpers/http.ts';
import { type EchoUpstream, startEchoUpstream } from '../../helpers/upstream.ts';

/**
 * Every token-service failure mode of issue 5 part 7 through the real gateway process (SPEC §5):
 * "could not ask" (refused, DNS, TLS, timeout, 503, 429, reset twice) is 503 + Retry-After, an
 * unusable answer (other 5xx, 401/403 to the gateway's credentials, HTML, malformed bodies, no
 * `active`, huge bodies, redirects) is 502; both `token_service_unavailable`, never 401, never a
 * crash, never the token in a log line. A reset once is retried and the request succeeds.
 */

const CLIENT_ID = 'failure-gw';
const GW_SECRET = 'failure-modes-gateway-secret-0123456789';
const ENV = { GW_SECRET };
const TIMEOUT_MS = 600;

let stub: CurityStub;
let up: EchoUpstream;
/** Where the stub's 3xx answers point: it must never receive anything. */
let redirectTarget: EchoUpstream;
/** An HTTPS "token service" whose self-signed certificate nobody trusts. */
let untrusted: { port: number; connections: number; requests: number; close(): Promise<void> };
let dir: string;
let deadPort: number;

/** Mode accept-jwt (Curity's application/jwt), metadata discovered from the stub. */
let gwJwt: GatewayProcess;
/** Mode mint (RFC 7662 JSON answers), metadata discovered from the stub. */
let gwMint: GatewayProcess;
/** Introspection endpoint on a closed port. */
let gwRefused: GatewayProcess;
/** Introspection endpoint under `.invalid` (RFC 6761: never resolves). */
let gwDns: GatewayProcess;
/** Introspection endpoint on the untrusted HTTPS server. */
let gwTls: GatewayProcess;

const usedTokens: string[] = [];

const routes = (upstream: string) => [
  { name: 'invoices', match: { pathPrefix: '/api/invoices' }, upstream, scopes: ['invoice_read'] },
];

/** A self-signed certificate for 127.0.0.1, made with the openssl CLI. */
function selfSigned(into: string): { key: Buffer; cert: Buffer } {
  const keyFile = join(into, 'key.pem');
  const certFile = join(into, 'cert.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-days',
      '1',
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ],
    { stdio: 'ignore' },
  );
  return { key: readFileSync(keyFile), cert: readFileSync(certFile) };
}

async function startUntrustedHttps(): Promise<typeof untrusted> {
  const server = https.createServer(selfSigned(dir), (_req, res) => {
    state.requests++;
    res.writeHead(200, { 'content-type': 'application/jwt' });
    res.end('a.b.c');
  });
  const state = {
    port: 0,
    connections: 0,
    requests: 0,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
  server.on('connection', () => state.connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  state.port = (server.address() as AddressInfo).port;
  return state;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'phantom-failure-'));
  const keysFile = join(dir, 'keys.json');
  await generateSigningKeysFile(keysFile);
  [stub, up, redirectTarget, deadPort] = await Promise.all([
    startCurityStub({ clientId: CLIENT_ID, clientSecret: GW_SECRET }),
    startEchoUpstream(),
    startEchoUpstream(),
    freePort(),
  ]);
  untrusted = await startUntrustedHttps();
  stub.redirectTo = `${redirectTarget.url}/elsewhere`;

  const tokenService = {
    issuer: stub.issuer,
    clientId: CLIENT_ID,
    clientSecret: '${GW_SECRET}',
    timeoutMs: TIMEOUT_MS,
  };
  /** accept-jwt with a fixed introspection endpoint (no discovery). */
  const fixed = (introspectionEndpoint: string) => ({
    tokenService: { ...tokenService, mode: 'accept-jwt', introspectionEndpoint },
    jwt: { jwksUri: stub.jwksUri },
    routes: routes(up.url),
  });
  [gwJwt, gwMint, gwRefused, gwDns, gwTls] = await Promise.all([
    startGateway(
      { tokenService: { ...tokenService, mode: 'accept-jwt' }, routes: routes(up.url) },
      { env: ENV },
    ),
    startGateway(
      {
        tokenService: { ...tokenService, mode: 'mint' },
        jwt: { mint: { issuer: 'https://gateway.test', signingKeysFile: keysFile } },
        routes: routes(up.url),
      },
      { env: ENV },
    ),
    startGateway(fixed(`http://127.0.0.1:${deadPort}/introspect`), { env: ENV }),
    startGateway(fixed('http://phantom-gateway-failure-modes.invalid/introspect'), { env: ENV }),
    startGateway(fixed(`https://127.0.0.1:${untrusted.port}/introspect`), { env: ENV }),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([gwJwt, gwMint, gwRefused, gwDns, gwTls].map((g) => g?.stop()));
  await Promise.all([stub?.close(), up?.close(), redirectTarget?.close(), untrusted?.close()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

afterEach(() => {
  stub.behaviour = 'ok';
  stub.responseHeaders = {};
});

/** A fresh opaque token the stub considers active. */
function activeToken(): string {
  const t = stub.newToken();
  stub.register(t, {
    sub: 'alice',
    scope: 'invoice_read',
    client_id: 'web',
    exp: Math.floor(Date.now() / 1000) + 300,
  });
  usedTokens.push(t);
  return t;
}

async function call(t: string, g: GatewayProcess): Promise<{ res: SimpleResponse; id: string }> {
  const id = `fm-${randomUUID()}`;
  const res = await request(`${g.url}/api/invoices/7`, {
    headers: { authorization: `Bearer ${t}`, 'x-request-id': id },
  });
  return { res, id };
}

/** The gateway's warn line saying why the introspection of this request failed. */
async function failureLine(g: GatewayProcess, id: string): Promise<Record<string, unknown>> {
  let line: Record<string, unknown> | undefined;
  await waitFor(
    () => {
      line = g.logs().find((l) => l['msg'] === 'token service introspection failed' && l['requestId'] === id);
      return line !== undefined;
    },
    5000,
    `the failure line of ${id}`,
  );
  return line!;
}

const forwarded = (id: string) => up.requests.some((r) => r.headers['x-request-id'] === id);

/** SPEC §5 for one token-service failure: status, body, Retry-After, access log, nothing forwarded. */
async function expectFailure(
  g: GatewayProcess,
  { res, id }: { res: SimpleResponse; id: string },
  status: 502 | 503,
  retryAfter?: string | RegExp,
): Promise<void> {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  expect(res.headers['cache-control']).toBe('no-store');
  expect(res.headers['www-authenticate']).toBeUndefined();
  const body = res.json();
  expect(body['error']).toBe('token_service_unavailable');
  expect(body['request_id']).toBe(id);
  if (status === 503) {
    if (retryAfter instanceof RegExp) expect(res.headers['retry-after']).toMatch(retryAfter);
    else expect(res.headers['retry-after']).toBe(retryAfter ?? '5');
  } else {
    expect(res.headers['retry-after']).toBeUndefined();
  }
  // No internal detail in the response.
  for (const leak of [`127.0.0.1:${stub.port}`, `${deadPort}`, '.invalid', `${untrusted.port}`]) {
    expect(res.body).not.toContain(leak);
  }
  expect(forwarded(id)).toBe(false);
  const line = await accessLine(g, id);
  expect(line['reason']).toBe('token_service_unavailable');
  expect(line['status']).toBe(status);
  expect((await failureLine(g, id))['status']).toBe(status);
}

interface Row {
  name: string;
  behaviour: StubBehaviour;
  /** Extra answer headers (a function: computed when the row runs). */
  headers?: Record<string, string> | (() => Record<string, string>);
  status: 200 | 502 | 503;
  retryAfter?: string | RegExp;
  /** Introspection requests the stub must have received for the call. */
  calls: number;
  check?: () => void;
}

const rows: Row[] = [
  { name: '500', behaviour: 'status:500', status: 502, calls: 1 },
  { name: '502', behaviour: 'status:502', status: 502, calls: 1 },
  { name: '504', behaviour: 'status:504', status: 502, calls: 1 },
  { name: '503 without Retry-After', behaviour: 'status:503', status: 503, retryAfter: '5', calls: 1 },
  {
    name: '503 Retry-After: 42',
    behaviour: 'status:503',
    headers: { 'retry-after': '42' },
    status: 503,
    retryAfter: '42',
    calls: 1,
  },
  {
    name: '429 Retry-After: 300 (the upper bound)',
    behaviour: 'status:429',
    headers: { 'retry-after': '300' },
    status: 503,
    retryAfter: '300',
    calls: 1,
  },
  {
    name: '429 Retry-After: an HTTP date 2 minutes ahead',
    behaviour: 'status:429',
    headers: () => ({ 'retry-after': new Date(Date.now() + 120_000).toUTCString() }),
    status: 503,
    retryAfter: /^(1[01]\d|120)$/,
    calls: 1,
  },
  {
    name: '429 Retry-After: 100000 (absurd → 5)',
    behaviour: 'status:429',
    headers: { 'retry-after': '100000' },
    status: 503,
    retryAfter: '5',
    calls: 1,
  },
  { name: '401: the gateway credentials are rejected', behaviour: 'status:401', status: 502, calls: 1 },
  { name: '403: the gateway is not allowed to introspect', behaviour: 'status:403', status: 502, calls: 1 },
  { name: 'an HTML page', behaviour: 'html', status: 502, calls: 1 },
  { name: 'a body that is neither a JWT nor JSON', behaviour: 'garbage', status: 502, calls: 1 },
  { name: 'malformed JSON', behaviour: 'bad-json', status: 502, calls: 1 },
  { name: 'a 200 JSON without active', behaviour: 'no-active', status: 502, calls: 1 },
  {
    name: `a ${HUGE_BODY_BYTES / 1024 / 1024} MiB body (the read is capped)`,
    behaviour: 'huge',
    status: 502,
    calls: 1,
    // The gateway stopped reading: the stub (writing with backpressure) could not send it all.
    check: () => expect(stub.hugeBytesWritten).toBeLessThan(HUGE_BODY_BYTES / 4),
  },
  ...(['status:301', 'status:302', 'status:307'] as const).map(
    (behaviour): Row => ({
      name: `a redirect (${behaviour.slice(7)}), not followed`,
      behaviour,
      status: 502,
      calls: 1,
      check: () => expect(redirectTarget.requests).toHaveLength(0),
    }),
  ),
  { name: 'no answer within timeoutMs', behaviour: 'hang', status: 503, retryAfter: '5', calls: 1 },
  { name: 'a connection reset once (retried)', behaviour: 'reset-once', status: 200, calls: 2 },
  { name: 'a connection reset twice', behaviour: 'reset', status: 503, retryAfter: '5', calls: 2 },
];

describe.each([
  ['accept-jwt', () => gwJwt],
  ['mint', () => gwMint],
] as const)('mode %s: the token service answers badly or not at all', (_mode, gw) => {
  it.each(rows)('$name → $status', async (row) => {
    const g = gw();
    const t = activeToken();
    const calls = stub.calls;
    stub.behaviour = row.behaviour;
    stub.responseHeaders = (typeof row.headers === 'function' ? row.headers() : row.headers) ?? {};
    const r = await call(t, g);
    stub.behaviour = 'ok';
    stub.responseHeaders = {};
    if (row.status === 200) {
      expect(r.res.status).toBe(200);
      expect(forwarded(r.id)).toBe(true);
      expect((await accessLine(g, r.id))['reason']).toBe('allowed');
    } else {
      await expectFailure(g, r, row.status, row.retryAfter);
    }
    expect(stub.calls - calls).toBe(row.calls);
    row.check?.();
    if (row.calls === 2) {
      // The retry was logged, without the token.
      const retry = g
        .logs()
        .find((l) => l['requestId'] === r.id && String(l['msg']).includes('retrying the introspection once'));
      expect(retry).toBeDefined();
      expect(JSON.stringify(retry)).not.toContain(t);
    }
    // Not a verdict on the token, and the process is fine: the same token now works.
    const again = await call(t, g);
    expect(again.res.status).toBe(200);
    expect(forwarded(again.id)).toBe(true);
  });
});

describe('the token service cannot be reached', () => {
  it.each([
    ['connection refused', () => gwRefused, /^ECONNREFUSED$/],
    ['DNS failure (.invalid)', () => gwDns, /^(ENOTFOUND|EAI_AGAIN)$/],
    ['TLS failure (untrusted self-signed certificate)', () => gwTls, /SELF_SIGNED|UNABLE_TO_VERIFY/],
  ] as const)('%s → 503 + Retry-After, and the process stays up', async (_name, gw, code) => {
    const g = gw();
    const t = activeToken();
    const connections = untrusted.connections;
    const r = await call(t, g);
    await expectFailure(g, r, 503, '5');
    if (g === gwTls) {
      // The gateway did connect, refused the certificate and sent nothing.
      expect(untrusted.connections).toBeGreaterThan(connections);
      expect(untrusted.requests).toBe(0);
    }
    // The operator's log says why (the client only gets token_service_unavailable).
    const why = (await failureLine(g, r.id))['err'] as { code?: string } | undefined;
    expect(String(why?.code)).toMatch(code);
    // Not retried (only a reset is): a second request is the same 503, and the process is alive.
    await expectFailure(g, await call(t, g), 503, '5');
    expect(g.logs().some((l) => String(l['msg']).includes('retrying the introspection once'))).toBe(false);
    expect((await request(`${g.adminUrl}/livez`)).status).toBe(200);
  });
});

describe('after all of the above', () => {
  it('every gateway process is still running and no log line holds a token', async () => {
    const all = [gwJwt, gwMint, gwRefused, gwDns, gwTls];
    for (const g of all) expect((await request(`${g.adminUrl}/livez`)).status).toBe(200);
    expect(usedTokens.length).toBeGreaterThan(rows.length * 2);
    for (const g of all) {
      const out = g.output();
      for (const t of usedTokens) expect(out).not.toContain(t);
    }
  });
});
